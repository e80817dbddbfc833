#!/usr/bin/env bash
# On this (CPU) machine: fetch into .whl/ the wheels the GPU machine (the device tool:
# Python 3.12, torch, triton, transformers; no diffusers, no server stack) lacks, for
# scripts/device_env.sh to install there. fa3-fwd travels unpacked as fa3.tar.xz (10 MB
# instead of its 27 MB wheel). SERVER=1 adds the server's stack (fastapi, uvicorn, ...)
# for its GPU tests (tests/server, tests/serving) and `trdq loadsuite`.
# .whl/ is git-ignored (.git/info/exclude) and carried with the run: carry: [".whl"]. A run
# carries at most 64 MiB with the tracked tree (~39 MiB): the server stack (~3.5 MB) fits,
# imageio-ffmpeg's 68 MB wheel does not (the GPU tests encode no video).
set -eu
cd "$(dirname "$0")/.."
mkdir -p .whl
get() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux_2_24_x86_64 -d .whl "$@"
}
get diffusers==0.42.1 torchao==0.17.0
if [ ! -f .whl/fa3.tar.xz ]; then
  get fa3-fwd==0.0.3
  rm -rf .whl/fa3 && mkdir .whl/fa3
  (cd .whl/fa3 && python3 -m zipfile -e ../fa3_fwd-*.whl .)
  tar cJf .whl/fa3.tar.xz -C .whl/fa3 . && rm -rf .whl/fa3 .whl/fa3_fwd-*.whl
fi
if [ "${SERVER:-0}" = 1 ]; then
  get fastapi starlette uvicorn pydantic pydantic-core pydantic-settings python-dotenv \
    annotated-types annotated-doc typing-inspection opentelemetry-api click \
    prometheus-client httpx httpcore h11 anyio sniffio imageio
fi
du -sh .whl
