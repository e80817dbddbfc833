# syntax=docker/dockerfile:1
#
# trdq-server image: CPU by default, CUDA with a build argument.
#
#   docker build -t trdq-server:cpu .
#   docker build -t trdq-server:cuda --build-arg TORCH_FLAVOR=cu128 .
#
# TORCH_FLAVOR picks the PyTorch wheel index (cpu, cu126, cu128, ...). CUDA wheels bring
# their own CUDA runtime, so the same slim Python base serves both; the host needs only the
# NVIDIA driver and the container toolkit (`docker run --gpus all`, or the compose "gpu"
# profile). The embedded zoo pipelines ship inside the package; the calibration cache lives
# on a volume at /var/cache/trdq so that replicas and restarts start warm.

ARG PYTHON_VERSION=3.11

# ---------------------------------------------------------------------------- build stage
FROM python:${PYTHON_VERSION}-slim-bookworm AS builder

ARG TORCH_VERSION=2.13.0
ARG TORCH_FLAVOR=cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv
# Torch first, in its own layer (most of the image, changes least), from the index of the
# chosen flavour: a looser resolve would pull a CUDA build into the CPU image (several GB).
# hadolint ignore=DL3059
RUN pip install "torch==${TORCH_VERSION}" --index-url "https://download.pytorch.org/whl/${TORCH_FLAVOR}"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY trdq ./trdq
COPY server ./server
RUN pip install . \
    && python -c "import server, trdq; from trdq.zoo.registry import ZOO_DIR; assert any(ZOO_DIR.iterdir()), 'zoo models missing'"

# -------------------------------------------------------------------------- runtime stage
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime

ARG TORCH_FLAVOR=cpu
# Triton (CUDA builds) compiles small launcher stubs at run time and needs a C compiler.
# hadolint ignore=DL3008
RUN if [ "${TORCH_FLAVOR}" != "cpu" ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends gcc libc6-dev \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && groupadd --system --gid 10001 trdq \
    && useradd --system --uid 10001 --gid trdq --home-dir /home/trdq --create-home --shell /usr/sbin/nologin trdq \
    && mkdir -p /var/cache/trdq \
    && chown trdq:trdq /var/cache/trdq

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TRDQ_HOST=0.0.0.0 \
    TRDQ_PORT=8000 \
    TRDQ_CACHE_DIR=/var/cache/trdq \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

USER 10001:10001
WORKDIR /home/trdq
VOLUME ["/var/cache/trdq"]
EXPOSE 8000

# Liveness only (/healthz). The first start on an empty cache volume calibrates before it
# serves, so failures in the first 10 minutes do not count.
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('TRDQ_PORT', '8000'), timeout=4)"]

ENTRYPOINT ["trdq"]
CMD ["serve"]
