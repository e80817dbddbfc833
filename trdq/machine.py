"""What machine a measurement ran on, as the reports (bench, eval, loadsuite) name it."""

from __future__ import annotations

import platform
from pathlib import Path

__all__ = ["INT8_DOT_ISAS", "cpu_has_native_bf16", "cpu_isa", "cpu_model", "cpuinfo_field"]

#: what ``cpu_isa`` reports for CPUs with int8 dot-product instructions
INT8_DOT_ISAS = ("AMX", "AVX-512 VNNI")


def cpuinfo_field(name: str) -> str | None:
    """The first ``name : value`` of /proc/cpuinfo (Linux), else None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (/proc/cpuinfo), else the platform's."""
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_isa() -> str:
    """The widest matrix instructions PyTorch uses on this CPU: "AMX", "AVX-512 VNNI",
    else its vector capability ("AVX2", "AVX512", ...). CPUs sold under one model name
    (e.g. "AMD EPYC") differ here, and int8 GEMM speed depends on it (see
    trdq/kernels/cpu_int8.py), so every CPU measurement names it."""
    import torch

    cpu = getattr(torch, "cpu", None)
    if getattr(cpu, "_is_amx_tile_supported", lambda: False)():
        return "AMX"
    if getattr(cpu, "_is_vnni_supported", lambda: False)():
        return "AVX-512 VNNI"
    return torch.backends.cpu.get_cpu_capability()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX); elsewhere PyTorch
    emulates bf16 GEMMs, several times slower than fp32."""
    import torch

    cpu = getattr(torch, "cpu", None)
    return any(
        getattr(cpu, check, lambda: False)()
        for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    )
