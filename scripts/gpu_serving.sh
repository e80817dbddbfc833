#!/usr/bin/env bash
# On a GPU machine (the device tool): the CUDA tests, then the multi-GPU load figures.
# Wheels missing there (diffusers, fastapi, ...) are expected in .whl/ (see docs/DEPLOY.md).
# Results land in $OUT (logs, JSON, the updated docs/RELIABILITY.md).
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/trdq-out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpus.txt"
python3 -m pytest -q -p no:cacheprovider -m gpu tests/kernels tests/serving/test_devices.py \
  -o addopts="" 2>&1 | tee "$OUT/gpu_tests.log" | tail -5
python3 -m trdq.cli loadsuite devices --devices "${DEVICES:-cuda:0,cuda:1}" --steps 20 \
  --requests 12 --rounds 2 --env TRDQ_QUANT=w8a8 --log "$OUT/servers.log" \
  --json "$OUT/devices.json" --out-md docs/RELIABILITY.md 2>&1 | tail -20
cp docs/RELIABILITY.md "$OUT/RELIABILITY.md"
