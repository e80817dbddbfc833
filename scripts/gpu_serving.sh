#!/usr/bin/env bash
# On a GPU machine (the device tool): the multi-GPU serving test, then the GPU load figures
# (one worker per GPU against one GPU; batching on one GPU), written by `trdq loadsuite` into
# docs/RELIABILITY.md. Wheels missing there (diffusers, fastapi, ...) are expected under .whl/.
# CUDA_GRAPHS=0 measures without graph replay (default: the server's own default, auto).
# WORKER_MODE=thread measures the devices suite with worker threads (default: one worker
# process per GPU, TRDQ_WORKER_MODE=process, for both the 1-GPU and the 2-GPU server).
# Results land in $OUT (logs, JSON, the updated docs/RELIABILITY.md).
set -u
# shellcheck source=scripts/device_env.sh
. "$(dirname "$0")/device_env.sh"
python3 -m pytest -q -p no:cacheprovider -m gpu ${GPU_TESTS:-tests/serving/test_devices.py tests/serving/test_workers.py} \
  -o addopts="" 2>&1 | tee "$OUT/gpu_tests.log" | tail -3
suite() {
  python3 -m trdq.cli loadsuite "$@" --env TRDQ_QUANT=w8a8 \
    --env "TRDQ_CUDA_GRAPHS=${CUDA_GRAPHS:-auto}" --log "$OUT/servers.log" \
    --out-md docs/RELIABILITY.md 2>&1 | grep -v "^{" | tail -4
  cp docs/RELIABILITY.md "$OUT/RELIABILITY.md"
}
DEVICES=${DEVICES:-cuda:0,cuda:1}
MODE=${WORKER_MODE:-process}
suite devices --devices "$DEVICES" --worker-mode "$MODE" --steps 20 --requests 12 --width 1024 --height 1024
suite devices --devices "$DEVICES" --worker-mode "$MODE" --steps 20 --requests 12
suite batching --steps 20 --requests 12 --rounds 3
