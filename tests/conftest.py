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

# Without a GPU, Triton kernels run in Triton's numpy interpreter (when triton is
# installed): tests/kernels/test_triton_interpreter.py checks their arithmetic on CPU.
# It must be set before triton or any trdq kernel module is imported (both read it).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import diffusers
import transformers

diffusers.utils.logging.disable_progress_bar()
transformers.utils.logging.disable_progress_bar()
