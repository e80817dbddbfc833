# Sourced by the scripts run on the GPU machine (the device tool): unbuffered Python, $OUT,
# and the packages missing there, carried under .whl/: wheels (diffusers, fastapi, ...)
# installed into /tmp/site, and .tar.xz archives of unpacked wheels (fa3-fwd travels so:
# 10 MB instead of its 27 MB wheel) extracted there. scripts/device_wheels.sh fetches them.
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/trdq-out}
mkdir -p "$OUT"
wheels=$(find .whl -type f -name '*.whl' 2>/dev/null)
if [ -n "$wheels" ]; then
  # shellcheck disable=SC2086  # one argument per wheel
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site $wheels || exit 1
fi
for tarball in .whl/*.tar.xz; do
  [ -f "$tarball" ] && { mkdir -p /tmp/site; tar xJf "$tarball" -C /tmp/site || exit 1; }
done
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpus.txt"
