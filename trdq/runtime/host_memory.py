"""Host memory: keep freed blocks for the next tensor instead of returning them to the OS.

Why: glibc's malloc serves every request above its mmap threshold (adjusted at run time,
at most 32 MB on 64-bit) with a fresh ``mmap`` and unmaps it on ``free``. A DiT's
activations on the CPU are tens of MB each (the zoo video model: 65536 rows x 256 fp32 =
64 MB), so every op paid a page fault per 4 KB of its output, at every call. Raising the
thresholds keeps those blocks in the heap for reuse, what PyTorch's CUDA caching allocator
does on the GPU and what jemalloc/tcmalloc (the usual CPU-serving advice) do by design,
without a preloaded library. In one ``trdq bench`` run (CPU AMD EPYC, AVX-512 VNNI, 2
threads; docs/BENCHMARKS.md, ``tiny-shapes-t2v``, rows against their ``+sysmalloc``
twins) the zoo video model's pipeline at batch 4 ran 1.52x faster in fp32, 1.88x in W4A8
and 3.0x in W8A8.

Threads: glibc gives other threads their own arenas, built of 64 MB heaps that fall back
to ``mmap`` for larger blocks, so one arena (``M_ARENA_MAX``) is asked too; the server
runs a generation on a worker thread. The cost: the process's resident memory stays at
its peak (it is not returned between requests), which a server holding its models does
anyway.

``TRDQ_HOST_MALLOC``: ``reuse`` (default) sets the thresholds at start-up; ``system``
leaves glibc's defaults. Entry points call ``configure_host_malloc`` before any thread or
model exists (the server, its worker processes, the ``trdq`` command); a library user who
wants it calls it too. Not glibc (musl, macOS): nothing is changed.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os

__all__ = ["HOST_MALLOC_MODES", "configure_host_malloc", "set_system_thresholds"]

log = logging.getLogger(__name__)

HOST_MALLOC_MODES = ("reuse", "system")

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
#: blocks up to this size come from the heap (above it, a rare giant block is still mapped)
MMAP_THRESHOLD_BYTES = 1 << 30
#: free memory at the heap's top is given back to the OS only above this
TRIM_THRESHOLD_BYTES = (1 << 31) - 1
#: glibc's initial thresholds (its mmap threshold then grows with freed blocks, up to 32 MB)
SYSTEM_THRESHOLD_BYTES = 128 * 1024

#: whether this process's glibc runs with ``reuse``'s thresholds
_reusing = False


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The process's own C library when it is glibc (its symbols through the program's
    handle: no library search, which would start subprocesses at every start-up)."""
    libc = ctypes.CDLL(None)
    # gnu_get_libc_version exists only in glibc
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


def configure_host_malloc(mode: str | None = None) -> bool:
    """Apply ``mode`` (default: ``TRDQ_HOST_MALLOC``, else ``reuse``); True when glibc's
    thresholds were raised by this call or an earlier one."""
    global _reusing
    mode = (mode or os.environ.get("TRDQ_HOST_MALLOC") or "reuse").strip().lower()
    if mode not in HOST_MALLOC_MODES:
        raise ValueError(f"TRDQ_HOST_MALLOC must be one of {HOST_MALLOC_MODES}, got {mode!r}")
    if mode == "system" or _reusing:
        return _reusing
    libc = _glibc()
    if libc is None:
        log.debug("host malloc: not glibc, left as it is")
        return False
    ok = all(
        libc.mallopt(param, value) == 1
        for param, value in ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
                             (_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
                             (_M_ARENA_MAX, 1))
    )
    if not ok:
        log.warning("host malloc: glibc refused a threshold; freed blocks may be unmapped")
        return False
    _reusing = True
    return True


def set_system_thresholds(system: bool) -> bool:
    """For ``trdq bench``'s ``+sysmalloc`` rows: glibc's initial thresholds (True) or
    ``reuse``'s again (False), in a process where ``configure_host_malloc`` applied
    ``reuse``; the arena count stays one. False where there is nothing to switch."""
    libc = _glibc()
    if libc is None or not _reusing:
        return False
    mmap_bytes = SYSTEM_THRESHOLD_BYTES if system else MMAP_THRESHOLD_BYTES
    trim_bytes = SYSTEM_THRESHOLD_BYTES if system else TRIM_THRESHOLD_BYTES
    return (libc.mallopt(_M_MMAP_THRESHOLD, mmap_bytes) == 1
            and libc.mallopt(_M_TRIM_THRESHOLD, trim_bytes) == 1)
