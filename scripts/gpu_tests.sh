#!/usr/bin/env bash
# On a GPU machine (the device tool): every `pytest -m gpu` test of the library's folders,
# in SHARDS concurrent pytest processes on the one GPU (its 200-odd kernel tests spend most
# of their time compiling and autotuning on the host, which one process does serially).
# Each shard stops at TESTS_TIMEOUT seconds; logs and a summary land in $OUT. The server's
# GPU tests (tests/server, tests/serving) join when fastapi imports there: carry its stack
# (SERVER=1 scripts/device_wheels.sh). The two real-size family tests (FLUX, Wan) take
# ~6 minutes each; SKIP (a grep -E pattern of test ids) leaves tests out, e.g. for a
# call of their own.
set -u
# shellcheck source=scripts/device_env.sh
. "$(dirname "$0")/device_env.sh"
SHARDS=${SHARDS:-4}
FOLDERS="tests/kernels tests/quant tests/integrations tests/runtime tests/calibration tests/nn"
if python3 -c "import server.app, httpx" 2> "$OUT/server_import.txt"; then
  FOLDERS="$FOLDERS tests/server tests/serving"
else
  echo "server tests left out: $(tail -n 1 "$OUT/server_import.txt")"
fi
FOLDERS=${GPU_TESTS:-$FOLDERS}
# shellcheck disable=SC2086  # one argument per folder
python3 -m pytest -q -p no:cacheprovider -m gpu -o addopts="" --co $FOLDERS 2>/dev/null \
  | grep "::" | grep -Ev "${SKIP:-^$}" > "$OUT/gpu_test_ids.txt"
echo "$(wc -l < "$OUT/gpu_test_ids.txt") GPU tests in $SHARDS shards"
for shard in $(seq 0 $((SHARDS - 1))); do
  awk -v n="$SHARDS" -v s="$shard" 'NR % n == s' "$OUT/gpu_test_ids.txt" > "$OUT/shard$shard.txt"
  # shellcheck disable=SC2046  # one argument per test id
  timeout "${TESTS_TIMEOUT:-500}" python3 -m pytest -q -p no:cacheprovider -m gpu -o addopts="" \
    -rfs $(cat "$OUT/shard$shard.txt") > "$OUT/gpu_tests_shard$shard.log" 2>&1 &
done
wait
tail -n 3 "$OUT"/gpu_tests_shard*.log
