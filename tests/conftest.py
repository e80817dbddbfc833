"""Shared test set-up: quiet third-party progress bars, few CPU threads."""

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
