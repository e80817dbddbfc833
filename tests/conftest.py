"""Shared test set-up: quiet third-party progress bars, few CPU threads.

Layout: tests/<name>/ holds the tests of trdq/<name>/, server/ or deploy/; tests/README.md
says which folder each one covers (tests/quant: trdq's top-level modules; tests/server and
tests/serving: the server in process / over time and in real processes). Markers: slow
(``make test-slow``), gpu, integration.
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

# As the server and `trdq` do at start-up (after TRITON_INTERPRET: this imports trdq):
# freed activations kept for reuse (trdq/runtime/host_memory.py; TRDQ_HOST_MALLOC=system
# in the environment opts out).
from trdq.runtime.host_memory import configure_host_malloc

configure_host_malloc()

import diffusers
import transformers

diffusers.utils.logging.disable_progress_bar()
transformers.utils.logging.disable_progress_bar()
