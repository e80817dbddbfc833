"""Kernel backends behind one dispatch point (see registry.py for how one is picked)."""

from trdq.kernels.base import ActQuant, BackendUnavailableError, KernelBackend
from trdq.kernels.registry import get_backend, list_backends, register, select_backend

__all__ = [
    "ActQuant",
    "BackendUnavailableError",
    "KernelBackend",
    "get_backend",
    "list_backends",
    "register",
    "select_backend",
]
