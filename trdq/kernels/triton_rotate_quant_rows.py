"""The single-pass rotate-quant kernel (dynamic scales, the butterfly rotation): each
program holds whole rows in registers as two power-of-two tiles (1152 = 1024 + 128), so x
is read once and nothing is re-read for the mean or the absmax; a CFG pair is quantized in
one program, optionally written as adjacent rows for the paired GEMM epilogue.

The math, notation and scale convention: ``trdq.kernels.triton_rotate_quant_math``. The
launch (``_launch_rows_kernel``, the split of K into the two tiles) and the choice of
kernel: ``trdq.kernels.triton_rotate_quant``. Importing this module never needs Triton.
"""

from __future__ import annotations

from trdq.kernels.launch import autotune_gpu_time
from trdq.kernels.triton_rotate_quant_math import TRITON_AVAILABLE

if TRITON_AVAILABLE:
    import triton
    import triton.language as tl

    from trdq.kernels.triton_rotate_quant_math import _fwht, round_half_even_int8

    @triton.jit
    def _centre_smooth_rotate(
        x,
        mean,
        cmask,
        inv_smooth,
        inv_sqrt_hb,
        BLOCK_M: tl.constexpr,
        HB: tl.constexpr,
        KT: tl.constexpr,
        HAS_SMOOTH: tl.constexpr,
        ROTATE: tl.constexpr,
        CENTER: tl.constexpr,
        PADDED: tl.constexpr,
    ):
        """One ``[BLOCK_M, KT]`` register tile of whole rows: subtract the row mean, divide
        by the smoothing vector (multiply by ``inv_smooth``, its reciprocal), rotate every
        HB-wide block. With PADDED, columns >= K stay zero."""
        if CENTER:
            x = x - mean[:, None]
            if PADDED:
                x = tl.where(cmask[None, :], x, 0.0)
        if HAS_SMOOTH:
            x = x * inv_smooth[None, :]
        if ROTATE:
            # every HB-wide block of every row is one row of the transform
            x = tl.reshape(x, (BLOCK_M * (KT // HB), HB))
            x = _fwht(x, BLOCK_M * (KT // HB), HB)
            x = tl.reshape(x, (BLOCK_M, KT)) * inv_sqrt_hb
        return x

    @triton.jit
    def _store_codes(
        x, inv_scale, rows, rmask, cols, cmask, q_ptr, stride_qm, qmax, OUT_INT8: tl.constexpr
    ):
        v = tl.minimum(tl.maximum(x * inv_scale[:, None], -qmax), qmax)
        if OUT_INT8:
            out = round_half_even_int8(v)
        else:
            out = v.to(tl.float8e4nv)
        mask = rmask[:, None] & cmask[None, :]
        tl.store(q_ptr + rows[:, None] * stride_qm + cols[None, :], out, mask=mask)

    @triton.jit
    def _quantize_whole_rows(
        xa,
        xb,
        rows,
        out_rows,
        rmask,
        K,
        inv_smooth_a,
        inv_smooth_b,
        clip_ptr,
        q_ptr,
        scale_out_ptr,
        center_out_ptr,
        stride_qm,
        qmax,
        inv_sqrt_hb,
        eps,
        BLOCK_M: tl.constexpr,
        HB: tl.constexpr,
        KA: tl.constexpr,
        KB: tl.constexpr,
        HAS_SMOOTH: tl.constexpr,
        ROTATE: tl.constexpr,
        OUT_INT8: tl.constexpr,
        CENTER: tl.constexpr,
        PADDED: tl.constexpr,
    ):
        """Quantize rows held in registers as two tiles: ``xa`` the first KA columns (the
        largest power of two of whole blocks within K) and, when KB > 0, ``xb`` the rest
        padded to KB columns (a power of two; those >= K are zero). 1152 = 1024 + 128 and
        4608 = 4096 + 512 need no padding, where one tile would hold 2048 and 8192.
        ``rows`` index x and the clip ratios, ``out_rows`` the codes, scales and means.
        ``inv_smooth_a`` / ``_b``: the smoothing vector's reciprocals for the two tiles.
        Reciprocals once per column and program (and once per row for the scale) instead
        of two divisions per value, which run on the special-function units at a fraction
        of the FP32 rate (docs/bench/quantizer-reciprocal-gemm-tma-h100.json)."""
        cols_a = tl.arange(0, KA)
        cmask_a = cols_a < K
        mean = tl.zeros((BLOCK_M,), dtype=tl.float32)
        if CENTER:
            total = tl.sum(xa, axis=1)
            if KB > 0:
                total += tl.sum(xb, axis=1)
            mean = total / K
            tl.store(center_out_ptr + out_rows, mean, mask=rmask)
        xa = _centre_smooth_rotate(
            xa, mean, cmask_a, inv_smooth_a, inv_sqrt_hb,
            BLOCK_M, HB, KA, HAS_SMOOTH, ROTATE, CENTER, PADDED,
        )
        amax = tl.max(tl.abs(xa), axis=1)
        if KB > 0:
            cols_b = KA + tl.arange(0, KB)
            cmask_b = cols_b < K
            xb = _centre_smooth_rotate(
                xb, mean, cmask_b, inv_smooth_b, inv_sqrt_hb,
                BLOCK_M, HB, KB, HAS_SMOOTH, ROTATE, CENTER, PADDED,
            )
            amax = tl.maximum(amax, tl.max(tl.abs(xb), axis=1))
        clip = tl.load(clip_ptr + rows, mask=rmask, other=1.0)
        scale = tl.maximum(amax * clip / qmax, eps)
        tl.store(scale_out_ptr + out_rows, scale, mask=rmask)
        inv_scale = 1.0 / scale
        _store_codes(
            xa, inv_scale, out_rows, rmask, cols_a, cmask_a, q_ptr, stride_qm, qmax, OUT_INT8
        )
        if KB > 0:
            _store_codes(
                xb, inv_scale, out_rows, rmask, cols_b, cmask_b, q_ptr, stride_qm, qmax,
                OUT_INT8,
            )

    @triton.jit
    def _smooth_reciprocals(smooth_ptr, K, KA: tl.constexpr, KB: tl.constexpr):
        """``1 / smooth`` as the two column tiles of ``_quantize_whole_rows`` (padding
        columns 1)."""
        cols_a = tl.arange(0, KA)
        inv_a = 1.0 / tl.load(smooth_ptr + cols_a, mask=cols_a < K, other=1.0)
        inv_b = inv_a
        if KB > 0:
            cols_b = KA + tl.arange(0, KB)
            inv_b = 1.0 / tl.load(smooth_ptr + cols_b, mask=cols_b < K, other=1.0)
        return inv_a, inv_b

    @triton.jit
    def _load_rows(x_ptr, rows, rmask, K, stride_xm, KA: tl.constexpr, KB: tl.constexpr):
        """Rows as the two float32 register tiles of ``_quantize_whole_rows`` (``xb`` is
        ``xa`` again when KB = 0, unused)."""
        cols_a = tl.arange(0, KA)
        mask_a = rmask[:, None] & (cols_a < K)[None, :]
        xa = tl.load(x_ptr + rows[:, None] * stride_xm + cols_a[None, :], mask=mask_a, other=0.0)
        xa = xa.to(tl.float32)
        xb = xa
        if KB > 0:
            cols_b = KA + tl.arange(0, KB)
            mask_b = rmask[:, None] & (cols_b < K)[None, :]
            xb = tl.load(
                x_ptr + rows[:, None] * stride_xm + cols_b[None, :], mask=mask_b, other=0.0
            ).to(tl.float32)
        return xa, xb

    @triton.jit
    def _rotate_quant_rows_kernel(
        x_ptr,
        smooth_ptr,
        clip_ptr,
        q_ptr,
        scale_out_ptr,
        center_out_ptr,
        R,
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
        KA: tl.constexpr,
        KB: tl.constexpr,
        HAS_SMOOTH: tl.constexpr,
        ROTATE: tl.constexpr,
        OUT_INT8: tl.constexpr,
        CENTER: tl.constexpr,
        DELTA: tl.constexpr,
        INTERLEAVE: tl.constexpr,
        PADDED: tl.constexpr,
        TILES: tl.constexpr,
    ):
        """Single-pass dynamic mode: each program holds whole rows in registers, so x is
        read once and nothing is re-read for the mean or the absmax (PADDED: the tiles hold
        columns beyond K, KA + KB > K). With DELTA a program
        takes ``BLOCK_M`` uncond rows (R = delta_half) and their cond partners: each uncond
        tile is loaded once for both. INTERLEAVE (with DELTA) writes uncond row r and its
        cond difference as output rows 2r and 2r + 1, the order the paired GEMM reads.
        A program quantizes TILES consecutive tiles of ``BLOCK_M`` rows, so the smoothing
        vector's reciprocals (K loads and divisions) are made once per TILES tiles."""
        pid = tl.program_id(0)
        inv_sa, inv_sb = 1.0, 1.0
        if HAS_SMOOTH:
            inv_sa, inv_sb = _smooth_reciprocals(smooth_ptr, K, KA, KB)
        for t in tl.range(0, TILES):
            rows = (pid * TILES + t) * BLOCK_M + tl.arange(0, BLOCK_M)
            rmask = rows < R
            out_u = 2 * rows if INTERLEAVE else rows
            xa, xb = _load_rows(x_ptr, rows, rmask, K, stride_xm, KA, KB)
            _quantize_whole_rows(
                xa, xb, rows, out_u, rmask, K, inv_sa, inv_sb, clip_ptr, q_ptr, scale_out_ptr,
                center_out_ptr, stride_qm, qmax, inv_sqrt_hb, eps,
                BLOCK_M, HB, KA, KB, HAS_SMOOTH, ROTATE, OUT_INT8, CENTER, PADDED,
            )
            if DELTA:
                cond = rows + delta_half
                out_c = 2 * rows + 1 if INTERLEAVE else cond
                ca, cb = _load_rows(x_ptr, cond, rmask, K, stride_xm, KA, KB)
                _quantize_whole_rows(
                    ca - xa, cb - xb, cond, out_c, rmask, K, inv_sa, inv_sb, clip_ptr, q_ptr,
                    scale_out_ptr, center_out_ptr, stride_qm, qmax, inv_sqrt_hb, eps,
                    BLOCK_M, HB, KA, KB, HAS_SMOOTH, ROTATE, OUT_INT8, CENTER, PADDED,
                )

    def _fits_in_registers(configs, named_args, **kwargs):
        """Drop the whole-row tiles that would hold more than 128 values a thread: they
        spill registers, which costs several times the kernel's time. With CFG-delta a
        program holds each uncond row beside its cond partner: twice the values."""
        kp = (kwargs["KA"] + kwargs["KB"]) * (2 if kwargs.get("DELTA") else 1)
        kept = [c for c in configs if c.kwargs["BLOCK_M"] * kp <= 128 * 32 * c.num_warps]
        return kept or configs[-1:]

    # One or two whole rows per program; the warps spread each row's KA + KB values. The
    # fastest tiles on an H100 (GPU time, docs/bench/rotate-quant-single-pass-h100.json):
    # one row per warp at K = 1152, one row per two warps at K = 4608.
    # TILES > 1: a program takes several consecutive tiles and loads the smoothing vector
    # once for all of them.
    _rotate_quant_rows_autotuned = triton.autotune(
        configs=[
            triton.Config({"BLOCK_M": bm, "TILES": tiles}, num_warps=w)
            for bm, w in ((1, 1), (1, 2), (1, 4), (2, 4), (1, 8), (2, 8), (1, 16))
            for tiles in (1, 4)
        ],
        key=["K", "M_BUCKET", "HAS_SMOOTH", "ROTATE", "OUT_INT8", "CENTER", "DELTA"],
        prune_configs_by={"early_config_prune": _fits_in_registers},
        do_bench=autotune_gpu_time,
    )(_rotate_quant_rows_kernel)
