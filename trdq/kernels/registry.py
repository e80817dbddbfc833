"""The one place that picks a kernel backend.

The reference backend (the oracle, usable everywhere) is registered here, at import.
Every other backend registers itself with ``register(backend)`` at import time of its
module. Those modules are imported lazily and only where they can matter:
``trdq.kernels.cpu_int8`` for CPU devices and every ``trdq.kernels.cuda_*`` module for
CUDA devices, so a CPU machine never imports Triton. A module that exists but fails to import raises: a broken
backend must not be hidden behind a silent fallback.

``select_backend("auto", device, config)`` returns the highest-priority backend that is
available on the device and supports the config, and logs the choice once per call;
asking for a named backend that cannot run raises ``BackendUnavailableError`` naming
what is missing.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from typing import TYPE_CHECKING

import torch

from trdq.kernels.base import BackendUnavailableError, KernelBackend
from trdq.kernels.reference import ReferenceBackend

if TYPE_CHECKING:  # pragma: no cover
    from trdq.config import QuantConfig

logger = logging.getLogger(__name__)

__all__ = ["get_backend", "list_backends", "load_backends_for", "register", "select_backend"]

_BACKENDS: dict[str, KernelBackend] = {ReferenceBackend.name: ReferenceBackend()}
_LOADED_DEVICE_TYPES: set[str] = set()


def register(backend: KernelBackend, *, replace: bool = False) -> KernelBackend:
    """Add ``backend`` under ``backend.name``; re-registering needs ``replace=True``."""
    if not backend.name:
        raise ValueError(f"backend {backend!r} has no name")
    existing = _BACKENDS.get(backend.name)
    if existing is not None and not replace and type(existing) is not type(backend):
        raise ValueError(f"a different backend is already registered as {backend.name!r}")
    _BACKENDS[backend.name] = backend
    return backend


def _kernel_modules_for(device_type: str) -> list[str]:
    """Names of the backend modules worth importing for ``device_type``."""
    import trdq.kernels as pkg

    prefixes = {"cpu": ("cpu_",), "cuda": ("cuda_",)}.get(device_type, ())
    names = [m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name.startswith(prefixes)]
    return [f"trdq.kernels.{name}" for name in sorted(names)]


def load_backends_for(device: torch.device | str) -> None:
    """Import the backend modules relevant for ``device`` (once per device type)."""
    device_type = torch.device(device).type
    if device_type in _LOADED_DEVICE_TYPES:
        return
    for module in _kernel_modules_for(device_type):
        importlib.import_module(module)  # errors propagate on purpose
    _LOADED_DEVICE_TYPES.add(device_type)


def get_backend(name: str) -> KernelBackend:
    """The registered backend ``name`` (importing the usual modules first)."""
    if name not in _BACKENDS:
        # Every backend module imports on any machine (GPU ones report themselves
        # unavailable), so a named GPU backend on a CPU host gets its real reason.
        load_backends_for("cpu")
        load_backends_for("cuda")
    try:
        return _BACKENDS[name]
    except KeyError:
        raise BackendUnavailableError(
            f"unknown kernel backend {name!r}; registered: {sorted(_BACKENDS)}"
        ) from None


def list_backends() -> list[str]:
    return sorted(_BACKENDS)


def select_backend(
    name: str, device: torch.device | str, config: QuantConfig | None = None
) -> KernelBackend:
    """Pick the backend for ``device`` and ``config``: ``"auto"`` or an explicit name."""
    device = torch.device(device)
    load_backends_for(device)
    if name != "auto":
        backend = get_backend(name)
        ok, reason = backend.is_available(device)
        if not ok:
            raise BackendUnavailableError(
                f"kernel backend {name!r} is unavailable on {device}: {reason}"
            )
        if config is not None:
            ok, reason = backend.supports(config)
            if not ok:
                raise BackendUnavailableError(
                    f"kernel backend {name!r} does not support config "
                    f"{getattr(config, 'name', '?')!r}: {reason}"
                )
        logger.info("kernel backend %s selected explicitly for %s", backend.name, device)
        return backend

    candidates = sorted(_BACKENDS.values(), key=lambda b: -b.priority)
    rejected: list[str] = []
    for backend in candidates:
        if backend.device_types and device.type not in backend.device_types:
            continue
        ok, reason = backend.is_available(device)
        if ok and config is not None:
            ok, reason = backend.supports(config)
        if ok:
            logger.info(
                "kernel backend auto-selected: %s for %s (config %s; passed over: %s)",
                backend.name,
                device,
                getattr(config, "name", None),
                "; ".join(rejected) or "none",
            )
            return backend
        rejected.append(f"{backend.name}: {reason}")
    raise BackendUnavailableError(f"no kernel backend can run here: {'; '.join(rejected)}")
