"""The W4A8 / W8A8 Triton GEMM on the GPU, and the module its callers import:
``w4a8_matmul_triton`` checks its arguments, builds TMA descriptors where they apply (the
``gemm_tma`` switch, ``TRDQ_GEMM_TMA``) and launches the kernel, autotuned over the tiles
listed here.

The kernel, its math, notation and the tile-split nibble layout:
``trdq.kernels.triton_w4a8_kernel``. The pure-torch oracle ``w4a8_matmul_reference`` and
the packing (``PACK_TILE``, ``pack_int4_tiled``, ``unpack_int4_tiled``) live in
``trdq.kernels.w4a8_reference`` and are re-exported here. Importing this module never needs
Triton: ``TRITON_AVAILABLE`` says whether the kernel can be launched.
"""

from __future__ import annotations

import functools
import os

import torch

from trdq.kernels import switches
from trdq.kernels.base import check_output_activation
from trdq.kernels.launch import autotune_gpu_time, launch_triton, launches_recorded, next_pow2
from trdq.kernels.triton_w4a8_kernel import TRITON_AVAILABLE
from trdq.kernels.w4a8_reference import (
    PACK_TILE,
    _check_paired,
    _check_rank1,
    pack_int4_tiled,
    unpack_int4_tiled,
    w4a8_matmul_reference,
)

__all__ = [
    "PACK_TILE",
    "TRITON_AVAILABLE",
    "pack_int4_tiled",
    "unpack_int4_tiled",
    "w4a8_matmul_reference",
    "w4a8_matmul_triton",
]

if TRITON_AVAILABLE:
    import triton
    from triton.tools.tensor_descriptor import TensorDescriptor

    from trdq.kernels.triton_w4a8_kernel import _lowbit_gemm_kernel

    def _set_tma_boxes(nargs):
        """Autotune pre-hook: the TMA descriptors' box is the tile of the config that runs."""
        if nargs["TMA"]:
            nargs["a_desc"].block_shape = [nargs["BM"], nargs["BK"]]
            nargs["b_desc"].block_shape = [nargs["BN"], nargs["BK"]]

    # The first two were the fastest of 15 tiles at every PixArt-1024 CFG shape on an H100
    # (GPU time, served epilogue; docs/bench/lowbit-gemm-tiles-h100.json), ahead of the best
    # of the earlier list and of cuBLAS bf16.
    _CONFIGS = [
        triton.Config({"BM": bm, "BN": bn, "BK": bk}, num_warps=w, num_stages=st,
                      pre_hook=_set_tma_boxes)
        for bm, bn, bk, w, st in (
            (128, 128, 128, 4, 3), (128, 128, 64, 4, 4), (128, 128, 128, 8, 3),
            (128, 256, 128, 8, 3), (128, 64, 128, 4, 4), (64, 128, 128, 4, 4),
            (64, 64, 128, 4, 4),
        )
    ]

    def _packed_needs_full_tiles(configs, named_args, **kwargs):
        """Packed int4 weights come in PACK_TILE-wide k tiles (the nibble layout)."""
        if not kwargs["PACKED"]:
            return configs
        return [c for c in configs if c.kwargs["BK"] == PACK_TILE]

    _lowbit_gemm_autotuned = triton.autotune(
        configs=_CONFIGS,
        key=["M_BUCKET", "N", "K", "PACKED", "A_FP8", "TMA"],
        prune_configs_by={"early_config_prune": _packed_needs_full_tiles},
        do_bench=autotune_gpu_time,
    )(_lowbit_gemm_kernel)


#: Whether Triton runs kernels in its CPU interpreter (CI's machines). Read once, at
#: import, as Triton's ``jit`` decorator reads it (read per call, it cost host time at
#: every launch).
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"


def w4a8_matmul_triton(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    b: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.bfloat16,
    config: dict | None = None,
    center: torch.Tensor | None = None,
    weight_sum: torch.Tensor | None = None,
    paired: bool = False,
    activation: str = "",
    tma: bool | None = None,
) -> torch.Tensor:
    """A ``[M, K]`` int8/e4m3, B ``[N, K/2]`` uint8 (packed) or ``[N, K]`` int8 -> ``[M, N]``.

    ``paired``: the CFG-delta halves restored in the epilogue, as the oracle's ``paired``
    (a tile's rows hold whole pairs: every tile height is even). ``activation``: as the
    oracle's, applied in the epilogue. ``tma``: load the tiles of unpacked weights through
    TMA descriptors (None: as ``TRDQ_GEMM_TMA`` says, see ``_tma_applies``)."""
    if not TRITON_AVAILABLE:
        raise RuntimeError("triton is not installed; use w4a8_matmul_reference")
    _check_rank1(center, weight_sum)
    check_output_activation(activation)
    m, k = a.shape
    if paired:
        _check_paired(m)
    packed = b.dtype == torch.uint8
    n = b.shape[0]
    if (b.shape[1] * 2 if packed else b.shape[1]) != k:
        raise ValueError(f"K mismatch: A {tuple(a.shape)}, B {tuple(b.shape)}")
    if k % PACK_TILE:
        raise ValueError(f"K={k} must be a multiple of {PACK_TILE} for the W4A8 kernel")
    if packed and config is not None and config.get("BK", PACK_TILE) != PACK_TILE:
        raise ValueError(f"packed weights need BK={PACK_TILE} (the layout's tile)")
    if a.dtype not in (torch.int8, torch.float8_e4m3fn):
        raise TypeError(f"A must be int8 or float8_e4m3fn, got {a.dtype}")
    a = a.contiguous()
    b = b.contiguous()
    c = torch.empty((m, n), device=a.device, dtype=out_dtype)
    m_bucket = next_pow2(m)
    if tma is None:
        tma = _tma_applies(a, b)
    if tma and packed:
        raise ValueError("TMA loads are for unpacked (int8) weights")
    # the boxes are set per tile: by the autotuner's pre-hook, or below for an explicit one
    a_desc = TensorDescriptor.from_tensor(a, [16, 16]) if tma else a
    b_desc = TensorDescriptor.from_tensor(b, [16, 16]) if tma else b

    def grid(meta):
        return (triton.cdiv(m, meta["BM"]) * triton.cdiv(n, meta["BN"]),)

    tile = None
    if config is not None:  # explicit tile (tests, interpreter, microbenchmarks)
        tile = dict(config)
        _set_tma_boxes({"TMA": tma, "a_desc": a_desc, "b_desc": b_desc, **tile})
    args = (
        a,
        b,
        a_desc,
        b_desc,
        a_scale.float().contiguous(),
        w_scale.float().contiguous(),
        bias if bias is not None else w_scale,
        center.float().contiguous() if center is not None else w_scale,
        weight_sum.float().contiguous() if weight_sum is not None else w_scale,
        c,
        m,
        n,
        k,
        m_bucket,
        a.stride(0),
        b.stride(0),
        c.stride(0),
    )
    constexprs = {
        "HAS_BIAS": bias is not None,
        "HAS_CENTER": center is not None,
        "PACKED": packed,
        "A_FP8": a.dtype == torch.float8_e4m3fn,
        "PAIRED": paired,
        "GELU_TANH": activation == "gelu_tanh",
        "HW_TANH": not INTERPRETING,
        "TMA": tma,
    }
    launch_triton(_lowbit_gemm_autotuned, grid, args, constexprs, tile)
    return c


#: The ``gemm_tma`` kernel switch (``TRDQ_GEMM_TMA``): when the W8A8 GEMM loads its tiles
#: through TMA descriptors. ``graphs`` (default): only for launches recorded into a CUDA
#: graph (``kernels.launch.recording_launches``), where the descriptors' host cost (built and
#: encoded at every launch) is paid once; ``1``: always; ``0``: never (per-thread loads, as
#: packed weights). A module global, set by ``_apply_switches``: read at every launch.
TMA_MODE = "graphs"


def _apply_switches(kernel_switches: switches.KernelSwitches) -> None:
    global TMA_MODE
    TMA_MODE = kernel_switches.gemm_tma


switches.on_change(_apply_switches)


def _tma_applies(a: torch.Tensor, b: torch.Tensor) -> bool:
    """TMA by default for the W8A8 GEMM (int8 activations, unpacked weights: the one
    measured and tested with it on a GPU) on a Hopper-or-newer GPU, 16-byte aligned bases
    (the rows are K bytes, and K is a multiple of 128), in launches recorded into a CUDA
    graph. Without graphs the step is bound by the host, and TMA's per-launch descriptors
    made it slower (with graphs TMA saves GPU time, docs/KERNELS.md)."""
    return (
        _tma_wanted()
        and a.dtype == torch.int8
        and b.dtype != torch.uint8
        and a.is_cuda
        and not INTERPRETING
        and _has_tma(a.device)
        and a.data_ptr() % 16 == 0
        and b.data_ptr() % 16 == 0
    )


def _tma_wanted() -> bool:
    """The ``gemm_tma`` switch's answer for this launch, before the operands' own conditions."""
    return TMA_MODE == "1" or (TMA_MODE == "graphs" and launches_recorded())


@functools.cache
def _has_tma(device: torch.device) -> bool:
    """Hopper or newer (asked once per device: this runs at every GEMM launch)."""
    return torch.cuda.get_device_capability(device) >= (9, 0)
