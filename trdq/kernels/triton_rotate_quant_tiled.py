"""The tiled rotate-quant kernel: one program per ``BLOCK_M`` rows loops over ``HB``-wide
column tiles of x, re-reading them (mostly from L2) for the row mean and the absmax in
dynamic mode. It serves static scales, the tensor-core rotation (``USE_DOT``) and rows too
wide for the single-pass kernel's registers.

The math, notation and scale convention: ``trdq.kernels.triton_rotate_quant_math``. The
launch (``_launch_tiled_kernel``) and the choice of kernel: ``trdq.kernels.triton_rotate_quant``.
Importing this module never needs Triton.
"""

from __future__ import annotations

from trdq.kernels.launch import autotune_gpu_time
from trdq.kernels.triton_rotate_quant_math import TRITON_AVAILABLE

if TRITON_AVAILABLE:
    import triton
    import triton.language as tl

    from trdq.kernels.triton_rotate_quant_math import _fwht, round_half_even_int8

    @triton.jit
    def _load_x(x_ptr, rows, rmask, cols, stride_xm, delta_half, DELTA: tl.constexpr):
        """The ``[BLOCK_M, HB]`` tile of x in float32; with DELTA, rows >= delta_half are
        their difference from the paired uncond row (every load of x goes through here)."""
        x = tl.load(
            x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=rmask[:, None], other=0.0
        ).to(tl.float32)
        if DELTA:
            paired = rmask & (rows >= delta_half)
            x = x - tl.load(
                x_ptr + (rows - delta_half)[:, None] * stride_xm + cols[None, :],
                mask=paired[:, None],
                other=0.0,
            ).to(tl.float32)
        return x

    @triton.jit
    def _load_rotated(
        x_ptr,
        smooth_ptr,
        h_ptr,
        rows,
        rmask,
        k0,
        stride_xm,
        inv_sqrt_hb,
        mean,
        delta_half,
        BLOCK_M: tl.constexpr,
        HB: tl.constexpr,
        LOG_HB: tl.constexpr,
        HAS_SMOOTH: tl.constexpr,
        ROTATE: tl.constexpr,
        USE_DOT: tl.constexpr,
        CENTER: tl.constexpr,
        DELTA: tl.constexpr,
    ):
        cols = k0 + tl.arange(0, HB)
        x = _load_x(x_ptr, rows, rmask, cols, stride_xm, delta_half, DELTA)
        if CENTER:
            x = x - mean[:, None]
        if HAS_SMOOTH:
            x = x / tl.load(smooth_ptr + cols)[None, :]
        if ROTATE:
            if USE_DOT:
                # H has entries +-1 (exact in bf16); split x into bf16 hi + lo so the
                # tensor-core product keeps ~16 mantissa bits of the fp32 input.
                hb = tl.arange(0, HB)
                hmat = tl.load(h_ptr + hb[:, None] * HB + hb[None, :])
                x_hi = x.to(tl.bfloat16)
                x_lo = (x - x_hi.to(tl.float32)).to(tl.bfloat16)
                x = tl.dot(x_hi, hmat, out_dtype=tl.float32)
                x = tl.dot(x_lo, hmat, acc=x, out_dtype=tl.float32)
            else:
                x = _fwht(x, BLOCK_M, HB)
            x = x * inv_sqrt_hb
        return x

    @triton.jit
    def _rotate_quant_kernel(
        x_ptr,
        smooth_ptr,
        scale_in_ptr,
        clip_ptr,
        h_ptr,
        q_ptr,
        scale_out_ptr,
        center_out_ptr,
        M,
        K,
        M_BUCKET,
        stride_xm,
        stride_qm,
        qmax,
        inv_sqrt_hb,
        eps,
        delta_half,
        BLOCK_M: tl.constexpr,
        HB: tl.constexpr,
        LOG_HB: tl.constexpr,
        HAS_SMOOTH: tl.constexpr,
        ROTATE: tl.constexpr,
        STATIC: tl.constexpr,
        OUT_INT8: tl.constexpr,
        USE_DOT: tl.constexpr,
        CENTER: tl.constexpr,
        DELTA: tl.constexpr,
    ):
        pid = tl.program_id(0)
        rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
        rmask = rows < M
        mean = tl.zeros((BLOCK_M,), dtype=tl.float32)
        if CENTER:
            # Pass 0: the row mean of the activations (differenced first with DELTA;
            # dynamic mode only).
            for k0 in range(0, K, HB):
                cols = k0 + tl.arange(0, HB)
                x = _load_x(x_ptr, rows, rmask, cols, stride_xm, delta_half, DELTA)
                mean += tl.sum(x, axis=1)
            mean = mean / K
            tl.store(center_out_ptr + rows, mean, mask=rmask)
        if STATIC:
            scale = tl.maximum(tl.load(scale_in_ptr + rows, mask=rmask, other=1.0), eps)
        else:
            # Pass 1: per-token absmax of the rotated row. Pass 2 re-reads the same
            # BLOCK_M x K tile, which is still in L2, so DRAM sees x once.
            amax = tl.zeros((BLOCK_M,), dtype=tl.float32)
            for k0 in range(0, K, HB):
                xr = _load_rotated(
                    x_ptr,
                    smooth_ptr,
                    h_ptr,
                    rows,
                    rmask,
                    k0,
                    stride_xm,
                    inv_sqrt_hb,
                    mean,
                    delta_half,
                    BLOCK_M,
                    HB,
                    LOG_HB,
                    HAS_SMOOTH,
                    ROTATE,
                    USE_DOT,
                    CENTER,
                    DELTA,
                )
                amax = tl.maximum(amax, tl.max(tl.abs(xr), axis=1))
            # each row's own clip ratio (the CFG halves differ), read-only: the autotuner
            # re-runs the kernel on the same buffers, so it must not read what it writes
            clip = tl.load(clip_ptr + rows, mask=rmask, other=1.0)
            scale = tl.maximum(amax * clip / qmax, eps)
            tl.store(scale_out_ptr + rows, scale, mask=rmask)
        for k0 in range(0, K, HB):
            xr = _load_rotated(
                x_ptr,
                smooth_ptr,
                h_ptr,
                rows,
                rmask,
                k0,
                stride_xm,
                inv_sqrt_hb,
                mean,
                delta_half,
                BLOCK_M,
                HB,
                LOG_HB,
                HAS_SMOOTH,
                ROTATE,
                USE_DOT,
                CENTER,
                DELTA,
            )
            v = xr / scale[:, None]
            v = tl.minimum(tl.maximum(v, -qmax), qmax)
            if OUT_INT8:
                out = round_half_even_int8(v)
            else:
                out = v.to(tl.float8e4nv)
            cols = k0 + tl.arange(0, HB)
            tl.store(q_ptr + rows[:, None] * stride_qm + cols[None, :], out, mask=rmask[:, None])

    # Rows per program and warps: tuned once per (K, power-of-two bucket of M, mode) on
    # the first call. Re-running is harmless: static mode only reads its scales, dynamic
    # mode rewrites the same values. The small tiles (2-8 rows) are for the dynamic
    # passes: each re-reads its rows, which stay in cache only when a program's tile is
    # small (docs/bench/rotate-quant-tiles-h100.json).
    _rotate_quant_autotuned = triton.autotune(
        configs=[
            triton.Config({"BLOCK_M": bm}, num_warps=w)
            for bm, w in ((2, 1), (4, 2), (8, 2), (8, 4), (16, 4), (32, 4), (32, 8), (64, 8))
        ],
        key=[
            "K", "M_BUCKET", "STATIC", "HAS_SMOOTH", "ROTATE", "OUT_INT8", "USE_DOT", "CENTER",
            "DELTA",
        ],
        do_bench=autotune_gpu_time,
    )(_rotate_quant_kernel)
