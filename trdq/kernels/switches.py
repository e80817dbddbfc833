"""Kernel switches: process-wide choices between kernels that compute the same result
(they change how fast, not what). This is the one place the library reads them from the
environment, as defaults:

============================  ==========================  ===========================================
field                         environment (default)       what it picks
============================  ==========================  ===========================================
``cpu_native``                ``TRDQ_CPU_NATIVE`` (1)     ``cpu_int8``'s C activation pass
                                                          (``cpu_native``, built with gcc on first use)
                                                          against its torch ops
``cpu_int_mm``                ``TRDQ_CPU_INT_MM`` (auto)  ``cpu_int8``'s GEMM: ``torch._int_mm`` (True)
                                                          or an fp32 GEMM of the integers (False);
                                                          None: ``_int_mm`` only on CPUs with AVX-512
                                                          VNNI or AMX
``cpu_prepack``               ``TRDQ_CPU_PREPACK`` (1)    oneDNN's int8 linear on a prepacked weight
                                                          copy (VNNI/AMX CPUs; elsewhere its u8
                                                          kernel for ``w8a7``)
``gemm_tma``                  ``TRDQ_GEMM_TMA`` (graphs)  when ``cuda_w4a8``'s W8A8 GEMM loads tiles
                                                          through TMA descriptors: ``graphs`` (only
                                                          in launches recorded into CUDA graphs),
                                                          ``1`` always, ``0`` never
``native_cache_dir``          ``TRDQ_NATIVE_CACHE``,      where the C pass is built
                              else ``$TRDQ_CACHE_DIR/
                              native``, else
                              ``~/.cache/trdq/native``
============================  ==========================  ===========================================

A process runs on the environment's values (``trdq bench``, scripts, the tests) unless it
calls ``configure``: the server does, once at start-up, with its validated settings
(server/settings.py, which read the same variables), before it builds a model. The kernel
modules subscribe with ``on_change`` and recompute their module-level choices when a value
changes. Models built or compiled before a change may keep the path they were built with
(prepacked weights, traced graphs): configure first.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "GEMM_TMA_MODES", "KernelSwitches", "configure", "current", "describe", "on_change",
    "parse_flag", "using",
]

log = logging.getLogger(__name__)

GemmTma = Literal["graphs", "0", "1"]
GEMM_TMA_MODES: tuple[str, ...] = ("graphs", "0", "1")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def parse_flag(value: str | bool | None, *, allow_auto: bool = False) -> bool | None:
    """``1/true/yes/on`` -> True, ``0/false/no/off`` -> False; with ``allow_auto``, ``auto``
    or empty -> None. Raises ValueError saying what is accepted."""
    if value is None or isinstance(value, bool):
        return value
    word = value.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    if allow_auto and word in ("", "auto"):
        return None
    raise ValueError("must be " + ("auto (by CPU), " if allow_auto else "") + "1 (true) or 0 (false)")


def parse_gemm_tma(value: str) -> GemmTma:
    word = value.strip().lower() or "graphs"
    if word not in GEMM_TMA_MODES:
        raise ValueError("must be graphs, 1 or 0")
    return word  # type: ignore[return-value]


def default_native_cache_dir(environ: Mapping[str, str]) -> Path:
    if environ.get("TRDQ_NATIVE_CACHE"):
        return Path(environ["TRDQ_NATIVE_CACHE"])
    if environ.get("TRDQ_CACHE_DIR"):  # the server's (writable) cache, e.g. in containers
        return Path(environ["TRDQ_CACHE_DIR"]).expanduser() / "native"
    return Path.home() / ".cache" / "trdq" / "native"


@dataclass(frozen=True)
class KernelSwitches:
    cpu_native: bool = True
    #: None: by CPU (``torch._int_mm`` only where it runs oneDNN's int8 kernel)
    cpu_int_mm: bool | None = None
    cpu_prepack: bool = True
    gemm_tma: GemmTma = "graphs"
    native_cache_dir: Path = dataclasses.field(
        default_factory=lambda: Path.home() / ".cache" / "trdq" / "native")

    def __post_init__(self) -> None:
        if self.gemm_tma not in GEMM_TMA_MODES:
            raise ValueError(f"gemm_tma must be graphs, 1 or 0, got {self.gemm_tma!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KernelSwitches:
        """The switches the ``TRDQ_*`` variables above ask for; a bad value raises a
        ValueError naming the variable."""
        env = os.environ if environ is None else environ

        def read(name: str, parse: Callable[[str], Any], default: str) -> Any:
            try:
                return parse(env.get(name, "").strip() or default)
            except ValueError as exc:
                raise ValueError(f"{name} {exc}, got {env.get(name)!r}") from None

        return cls(
            cpu_native=read("TRDQ_CPU_NATIVE", parse_flag, "1"),
            cpu_int_mm=read("TRDQ_CPU_INT_MM", lambda v: parse_flag(v, allow_auto=True), "auto"),
            cpu_prepack=read("TRDQ_CPU_PREPACK", parse_flag, "1"),
            gemm_tma=read("TRDQ_GEMM_TMA", parse_gemm_tma, "graphs"),
            native_cache_dir=default_native_cache_dir(env),
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly (the server's ``/info``)."""
        out = dataclasses.asdict(self)
        out["native_cache_dir"] = str(self.native_cache_dir)
        return out


_current: KernelSwitches | None = None
_listeners: list[Callable[[KernelSwitches], None]] = []


def current() -> KernelSwitches:
    """The switches in force (from the environment until ``configure`` is called)."""
    global _current
    if _current is None:
        _current = KernelSwitches.from_env()
    return _current


def on_change(listener: Callable[[KernelSwitches], None]) -> None:
    """Call ``listener`` with the current switches now and after every change."""
    _listeners.append(listener)
    listener(current())


def configure(**changes: Any) -> KernelSwitches:
    """Change some switches (fields of ``KernelSwitches``) for the whole process; returns
    the previous ones. Kernel modules recompute their choices when anything changed."""
    previous = current()
    updated = dataclasses.replace(previous, **changes)
    _set(updated)
    if updated != previous:
        log.info("kernel switches: %s", updated.as_dict())
    return previous


@contextmanager
def using(**changes: Any) -> Iterator[KernelSwitches]:
    """``configure(**changes)`` for the block, then the previous switches again."""
    previous = configure(**changes)
    try:
        yield current()
    finally:
        _set(previous)


def _set(switches: KernelSwitches) -> None:
    global _current
    changed = switches != current()
    _current = switches
    if changed:
        for listener in _listeners:
            listener(switches)


def describe() -> dict[str, Any]:
    """The switches in force, JSON-friendly, with what they resolve to on this machine:
    ``cpu_int_mm`` as decided (by the CPU where not forced) and ``cpu_gemm``, how
    ``cpu_int8`` multiplies 8-bit weights."""
    from trdq.kernels import cpu_int8  # it imports this module, so not at the top

    out = current().as_dict()
    out["cpu_int_mm"] = cpu_int8.FAST_INT_MM
    out["cpu_gemm"] = cpu_int8.gemm_path()
    return out
