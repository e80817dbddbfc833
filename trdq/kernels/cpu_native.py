"""The C activation quantizer and epilogue of ``cpu_int8`` (``csrc/cpu_rotate_quant.c``).

Why C: with AMX the int8 GEMM is fast enough that the activation path written as torch
ops (delta, centring, smoothing, block Hadamard, absmax, rounding, then the int32 rescale)
cost more per linear than the GEMM itself, even after Inductor fused it (docs/KERNELS.md,
the profile of the compiled ``cpu-small`` step). The C pass does all of it per row while
the row sits in L1, and the epilogue in one pass.

Built on first use with the system C compiler (``gcc -O3 -march=native -fopenmp``, a
one-off cost) into the ``native_cache_dir`` kernel switch (``trdq.kernels.switches``:
``TRDQ_NATIVE_CACHE``, else ``$TRDQ_CACHE_DIR/native``, else ``~/.cache/trdq/native``),
keyed by the source, the compiler and the CPU's flags; loaded with ctypes (which releases
the GIL during a call).
Without a compiler, or with the ``cpu_native`` switch off (``TRDQ_CPU_NATIVE=0``),
``available()`` is False and
``cpu_int8`` keeps its torch-ops path, which is also the oracle the tests compare against.

``rotate_quant`` and ``int8_epilogue`` are plain functions; ``cpu_int8`` wraps them with
its GEMM in one op for compiled models (``trdq::cpu_int8_native_linear``). Each is also a
torch operator with a fake implementation (``cpu_rotate_quant``, ``cpu_int8_epilogue``,
``trdq.kernels.oplib.define_op``), for tests and callers that compile them on their own.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import overload

import torch

from trdq.kernels import switches
from trdq.kernels.base import check_output_activation
from trdq.kernels.oplib import define_op
from trdq.machine import cpu_model, cpuinfo_field

__all__ = [
    "available", "cpu_int8_epilogue", "cpu_rotate_quant", "int8_epilogue", "library_path",
    "rotate_quant", "set_enabled", "unpack_int4",
]

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "cpu_rotate_quant.c"
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC")


def library_path(compiler: str) -> Path:
    """Where the shared library for this source, compiler and CPU lives."""
    version = subprocess.run([compiler, "--version"], check=False, capture_output=True,
                             text=True, timeout=30).stdout
    key = hashlib.sha256(
        SOURCE.read_bytes()
        + "\0".join([compiler, version, *FLAGS, cpu_model(), cpuinfo_field("flags") or ""]).encode()
    ).hexdigest()[:16]
    return _cache_dir() / f"cpu_rotate_quant-{key}.so"


def _cache_dir() -> Path:
    return switches.current().native_cache_dir


def _build() -> ctypes.CDLL:
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not compiler:
        raise RuntimeError("no C compiler (gcc or cc) on PATH")
    lib = library_path(compiler)
    if not lib.exists():
        lib.parent.mkdir(parents=True, exist_ok=True)
        tmp = lib.with_name(f"{lib.name}.{os.getpid()}.tmp")
        done = subprocess.run([compiler, *FLAGS, "-o", str(tmp), str(SOURCE), "-lm"],
                              check=False, capture_output=True, text=True, timeout=300)
        if done.returncode:
            raise RuntimeError(f"{compiler} failed: {done.stderr.strip()[-500:]}")
        os.replace(tmp, lib)  # atomic: concurrent builders race harmlessly
        log.info("cpu_int8: built the C activation quantizer at %s", lib)
    dll = ctypes.CDLL(str(lib))
    p, i64, i32, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
    dll.trdq_rotate_quant.argtypes = [p, i32, i64, i64, i64, p, i32, p, p, f32, p, p, p, i32]
    dll.trdq_rotate_quant.restype = i32
    dll.trdq_int8_epilogue.argtypes = [p, i32, i64, i64, p, p, p, p, p, p, i32, i64, p, p, i64,
                                       i32, i32]
    dll.trdq_int8_epilogue.restype = i32
    dll.trdq_unpack_int4.argtypes = [p, p, i64, i32]
    dll.trdq_unpack_int4.restype = None
    return dll


@functools.cache
def _library() -> ctypes.CDLL | None:
    if not switches.current().cpu_native:
        return None
    try:
        return _build()
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:  # the torch path still works
        log.warning("cpu_int8: C activation quantizer unavailable (%s); using torch ops", exc)
        return None


_library_switches = (switches.current().cpu_native, switches.current().native_cache_dir)


def _apply_switches(kernel_switches: switches.KernelSwitches) -> None:
    """Look the library up again (build, load or none) when its switches changed."""
    global _library_switches
    mine = (kernel_switches.cpu_native, kernel_switches.native_cache_dir)
    if mine != _library_switches:
        _library_switches = mine
        _library.cache_clear()


switches.on_change(_apply_switches)


#: False: report the C kernels unavailable (``set_enabled``; the bench's ``+torchops`` rows)
_enabled = True


def set_enabled(flag: bool) -> None:
    """Let ``cpu_int8`` use the C kernels (True) or its torch ops (False), e.g. to time
    both paths in one process. Compiled graphs keep the path they were traced with."""
    global _enabled
    _enabled = flag


@torch.compiler.assume_constant_result  # dynamo evaluates it once instead of tracing a build
def available() -> bool:
    """Whether the C kernels are built and loaded (builds them on the first call)."""
    return _enabled and _library() is not None


def _loaded_library() -> ctypes.CDLL:
    """The C library for a kernel call (callers check ``available()`` first)."""
    lib = _library()
    if lib is None:
        raise RuntimeError("the C kernels are not available (cpu_native.available() is False)")
    return lib


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


@overload
def _f32(t: torch.Tensor) -> torch.Tensor: ...
@overload
def _f32(t: None) -> None: ...
@overload
def _f32(t: torch.Tensor | None) -> torch.Tensor | None: ...
def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
    """Float32 and contiguous, without a copy when it already is (the common case: each
    call's overhead counts on 2 cores, ~85 linears a step)."""
    if t is None or (t.dtype == torch.float32 and t.is_contiguous()):
        return t
    return t.detach().to(torch.float32).contiguous()


def rotate_quant(
    x: torch.Tensor,
    *,
    rotation_block: int,
    smooth: torch.Tensor | None = None,
    row_scale: torch.Tensor | None = None,
    clip_ratio: torch.Tensor,
    bits: int = 8,
    center: bool = False,
    delta_half: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x [M, K]`` float32/bf16 -> (``q [M, K]`` int8, ``scale [M]``, ``mean [M]``
    (zeros unless ``center``)); the steps are listed in the C source. The keywords are
    those of ``trdq.kernels.ops.rotate_quant`` (``rotation_block`` <= 0: no rotation),
    with ``bits`` for the format and ``center`` for whether to centre the rows. Also the
    op ``cpu_rotate_quant``; ``cpu_int8.native_int8_linear`` calls it directly."""
    return _rotate_quant(x, rotation_block, smooth, row_scale, clip_ratio, bits, center,
                         delta_half)


def _rotate_quant(
    x: torch.Tensor,
    rotation_block: int,
    smooth: torch.Tensor | None,
    row_scale: torch.Tensor | None,
    clip_ratio: torch.Tensor,
    bits: int,
    center: bool,
    delta_half: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``rotate_quant`` with every argument positional: the op's schema (the dispatcher
    parses keywords on every call)."""
    if x.dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"cpu_rotate_quant takes float32 or bfloat16, got {x.dtype}")
    x = x.contiguous()
    m, k = x.shape
    q = torch.empty((m, k), dtype=torch.int8)
    scale = torch.empty(m, dtype=torch.float32)
    mean = torch.empty(m, dtype=torch.float32) if center else torch.zeros(m)
    smooth, row_scale, clip = _f32(smooth), _f32(row_scale), _f32(clip_ratio)
    failed = _loaded_library().trdq_rotate_quant(
        x.data_ptr(), int(x.dtype == torch.bfloat16), m, k, delta_half, _ptr(smooth),
        max(rotation_block, 0), _ptr(row_scale), clip.data_ptr(), float(2 ** (bits - 1) - 1),
        q.data_ptr(), scale.data_ptr(), mean.data_ptr() if center else None,
        torch.get_num_threads(),
    )
    if failed:
        raise MemoryError("cpu_rotate_quant could not allocate its row buffers")
    return q, scale, mean


def int8_epilogue(
    acc: torch.Tensor,
    a_scale: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    mean: torch.Tensor | None,
    weight_sum: torch.Tensor | None,
    out_dtype: torch.dtype,
    delta_half: int = 0,
    activation: str = "",
    low_rank_x: torch.Tensor | None = None,
    low_rank_up_t: torch.Tensor | None = None,
) -> torch.Tensor:
    """``acc [M, N]`` (int32 or float32) * a_scale[m] * weight_scale[n] + bias[n]
    + mean[m] * weight_sum[n], written once in ``out_dtype`` (float32 or bfloat16).
    ``delta_half`` > 0: rows ``>= delta_half`` hold ``W d`` of CFG-delta and are written
    as served, ``y_u + W d`` (no second bias). ``low_rank_x [M, R]`` and ``low_rank_up_t
    [R, N]`` (float32): the low-rank error branch ``low_rank_x @ low_rank_up_t`` added to
    the served rows (``low_rank_x`` from the rows as served, not differenced).
    ``activation`` ("" or "gelu_tanh", as ``kernels.base.OUTPUT_ACTIVATIONS``) is applied
    to the served rows last, before the write."""
    check_output_activation(activation)
    if out_dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"cpu_int8_epilogue writes float32 or bfloat16, not {out_dtype}")
    if acc.dtype not in (torch.int32, torch.float32):
        raise TypeError(f"cpu_int8_epilogue reads int32 or float32, not {acc.dtype}")
    acc = acc.contiguous()
    m, n = acc.shape
    out = torch.empty((m, n), dtype=out_dtype)
    a_scale, weight_scale = _f32(a_scale), _f32(weight_scale)
    bias, weight_sum = _f32(bias), _f32(weight_sum)
    mean = _f32(mean) if weight_sum is not None else None
    if delta_half and 2 * delta_half != m:
        raise ValueError(f"delta_half must be half of the {m} rows, got {delta_half}")
    rank = 0
    if low_rank_x is not None:
        low_rank_x, low_rank_up_t = _f32(low_rank_x), _f32(low_rank_up_t)
        rank = low_rank_x.shape[1]
        if low_rank_x.shape[0] != m or low_rank_up_t is None or low_rank_up_t.shape != (rank, n):
            raise ValueError(f"low-rank branch: x side [{m}, R] and up side [R, {n}] expected")
    failed = _loaded_library().trdq_int8_epilogue(
        acc.data_ptr(), int(acc.dtype == torch.int32), m, n, a_scale.data_ptr(),
        weight_scale.data_ptr(), _ptr(bias), _ptr(mean), _ptr(weight_sum), out.data_ptr(),
        int(out_dtype == torch.bfloat16), delta_half, _ptr(low_rank_x), _ptr(low_rank_up_t),
        rank, int(activation == "gelu_tanh"), torch.get_num_threads(),
    )
    if failed:
        raise MemoryError("cpu_int8_epilogue could not allocate its row buffers")
    return out


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """``trdq.primitives.unpack_int4`` in C: ``[N, K/2]`` uint8 -> ``[N, K]`` int8."""
    packed = packed.contiguous()
    out = torch.empty((*packed.shape[:-1], packed.shape[-1] * 2), dtype=torch.int8)
    _loaded_library().trdq_unpack_int4(packed.data_ptr(), out.data_ptr(), packed.numel(),
                                torch.get_num_threads())
    return out


def _rotate_quant_fake(x, rotation_block, smooth, row_scale, clip_ratio, bits, center,
                       delta_half):
    m = x.shape[0]
    return (x.new_empty(x.shape, dtype=torch.int8), x.new_empty(m, dtype=torch.float32),
            x.new_empty(m, dtype=torch.float32))


def _int8_epilogue_fake(acc, a_scale, weight_scale, bias, mean, weight_sum, out_dtype,
                        delta_half=0, activation="", low_rank_x=None, low_rank_up_t=None):
    return acc.new_empty(acc.shape, dtype=out_dtype)


_cpu_rotate_quant_op = define_op("trdq::cpu_rotate_quant", _rotate_quant, _rotate_quant_fake)
cpu_int8_epilogue = define_op("trdq::cpu_int8_epilogue", int8_epilogue, _int8_epilogue_fake)


def cpu_rotate_quant(
    x: torch.Tensor,
    *,
    rotation_block: int,
    smooth: torch.Tensor | None = None,
    row_scale: torch.Tensor | None = None,
    clip_ratio: torch.Tensor,
    bits: int = 8,
    center: bool = False,
    delta_half: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``rotate_quant`` through its operator ``trdq::cpu_rotate_quant``."""
    return _cpu_rotate_quant_op(x, rotation_block, smooth, row_scale, clip_ratio, bits, center,
                                delta_half)
