"""Shared test set-up: quiet third-party progress bars, few CPU threads.

Layout, mirroring the packages: tests/<name>/ holds the tests of trdq/<name>/ (kernels, nn,
data, eval, zoo); tests/quant those of trdq's top-level modules (api, cache, config,
primitives, rotation, timestep, gptq, text_encoder, calibration) and its shared helpers;
tests/server and tests/serving the server (settings, routes / engine, batching, jobs,
faults, a live uvicorn); tests/deploy deploy/. Markers: slow (``make test-slow``), gpu,
integration.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch

# Under pytest-xdist (`make test` runs -n auto) every worker gets its share of the cores:
# torch's default, a thread per core in each worker, oversubscribes them.
_XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _XDIST_WORKERS > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _XDIST_WORKERS))

# Without a GPU, Triton kernels run in Triton's numpy interpreter (when triton is
# installed): tests/kernels/test_triton_interpreter.py checks their arithmetic on CPU.
# It must be set before triton or any trdq kernel module is imported (both read it).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import diffusers
import transformers

diffusers.utils.logging.disable_progress_bar()
transformers.utils.logging.disable_progress_bar()
