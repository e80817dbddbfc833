"""Triton GEMM for packed 4-bit weights x 8-bit activations (W4A8), unpacked in registers.

Notation: A ``[M, K]`` activations (int8 or e4m3, one scale per row), B ``[N, K/2]`` uint8
two's-complement nibbles with one scale per output channel ``[N]``.

Kernel layout ("tile-split", ``pack_int4_tiled``): within every 128 consecutive k, byte j
holds k = j in its low nibble and k = j + 64 in its high nibble. The GEMM then needs no
interleave: the low nibbles multiply A's first 64 columns of the tile and the high nibbles
the next 64, as two tensor-core dots. (The library's canonical layout,
``primitives.pack_int4``, pairs even/odd k; interleaving that in registers made the GEMM
much slower than FP8. The backend converts at pack time; ``unpack`` returns the canonical
integers.)

``out[m, n] = (sum_k A[m, k] * B[n, k]) * a_scale[m] * w_scale[n] + bias[n]
(+ center[m] * weight_sum[n])``

The optional rank-1 term restores what centring removed from the activations (each row's
mean, ``triton_rotate_quant``'s ``center_out``) in the fp32 epilogue, at no extra pass.

The nibbles are sign-extended with two shifts and interleaved back to ``[BN, BK]`` in
registers; the tile then goes to the tensor cores as int8 (A int8: exact int32
accumulation, the same integers as the reference backend) or as e4m3 (A e4m3: every
4-bit integer is exact in e4m3, fp32 accumulation). HBM traffic for the weights is
K/2 bytes per output channel, a quarter of bf16.

The same kernel also takes unpacked int8 weights (``B [N, K]`` int8, ``PACKED=False``),
which gives an exact W8A8 int8 GEMM on tensor cores for comparison with ``_int_mm``. On
Hopper, with int8 activations, its tiles are loaded through TMA descriptors when the
launches are recorded into a CUDA graph (``tma``, the ``gemm_tma`` switch, ``TRDQ_GEMM_TMA``): less GPU time, more
host time per launch; packed weights keep per-thread loads.

The launch (argument checks, the autotuned tiles, the TMA switch): ``trdq.kernels.triton_w4a8``.
The pure-torch oracle ``w4a8_matmul_reference`` and the packing into the tile-split layout:
``trdq.kernels.w4a8_reference``. Importing this module never needs Triton.
"""

from __future__ import annotations

import importlib.util

__all__ = ["TRITON_AVAILABLE"]

TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None

if TRITON_AVAILABLE:
    import triton
    import triton.language as tl

    @triton.jit
    def _gelu_tanh(x, HW_TANH: tl.constexpr):
        """GELU, tanh approximation (``F.gelu(approximate="tanh")``), in fp32.

        ``HW_TANH``: the GPU's ``tanh.approx.f32`` (one special-function instruction,
        relative error ~2^-11, below bf16's 2^-8). Written instead as 1 - 2 / (exp(2u) + 1)
        the epilogue cost the GEMM more than the separate GELU pass it replaces. The exp
        form stays for Triton's CPU interpreter, which runs no inline PTX; u is clamped to
        +-10 there (tanh is +-1 to fp32 precision) so exp never overflows."""
        u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        if HW_TANH:
            t = tl.inline_asm_elementwise(
                "tanh.approx.f32 $0, $1;", "=f,f", [u], dtype=tl.float32, is_pure=True, pack=1
            )
        else:
            u = tl.minimum(tl.maximum(u, -10.0), 10.0)
            t = 1.0 - 2.0 / (tl.exp(2.0 * u) + 1.0)
        return 0.5 * x * (1.0 + t)

    @triton.jit
    def _lowbit_gemm_kernel(
        a_ptr,
        b_ptr,
        a_desc,
        b_desc,
        a_scale_ptr,
        w_scale_ptr,
        bias_ptr,
        center_ptr,
        weight_sum_ptr,
        c_ptr,
        M,
        N,
        K,
        M_BUCKET,
        stride_am,
        stride_bn,
        stride_cm,
        HAS_BIAS: tl.constexpr,
        HAS_CENTER: tl.constexpr,
        PACKED: tl.constexpr,
        A_FP8: tl.constexpr,
        PAIRED: tl.constexpr,
        GELU_TANH: tl.constexpr,
        HW_TANH: tl.constexpr,
        TMA: tl.constexpr,
        BM: tl.constexpr,
        BN: tl.constexpr,
        BK: tl.constexpr,
    ):
        """TMA (unpacked weights, Hopper): A and B tiles come through the tensor-memory
        accelerator (``a_desc`` / ``b_desc``, boxes BM x BK and BN x BK, edges zero-filled)
        instead of per-thread loads, which frees the registers the paired epilogue spills
        otherwise, a measurable gain at PixArt's shapes
        (docs/bench/quantizer-reciprocal-gemm-tma-h100.json)."""
        pid = tl.program_id(0)
        num_pid_m = tl.cdiv(M, BM)
        num_pid_n = tl.cdiv(N, BN)
        # grouped ordering: neighbouring programs share B tiles in L2
        GROUP_M: tl.constexpr = 8
        group = pid // (GROUP_M * num_pid_n)
        first_m = group * GROUP_M
        size_m = tl.minimum(num_pid_m - first_m, GROUP_M)
        pid_m = first_m + (pid % size_m)
        pid_n = (pid % (GROUP_M * num_pid_n)) // size_m

        rm = pid_m * BM + tl.arange(0, BM)
        rn = pid_n * BN + tl.arange(0, BN)
        mmask = rm < M
        nmask = rn < N
        rk = tl.arange(0, BK)
        rk2 = tl.arange(0, BK // 2)
        if A_FP8:
            acc = tl.zeros((BM, BN), dtype=tl.float32)
        else:
            acc = tl.zeros((BM, BN), dtype=tl.int32)
        # rows past M load row M-1 (fp8 has no literal-0 "other") and are never stored
        a_rows = a_ptr + tl.minimum(rm, M - 1)[:, None] * stride_am
        for k0 in range(0, K, BK):
            if PACKED:
                # tile-split nibbles: low = k0 + [0, BK/2), high = k0 + BK/2 + [0, BK/2)
                p = tl.load(
                    b_ptr + rn[:, None] * stride_bn + (k0 // 2 + rk2)[None, :],
                    mask=nmask[:, None],
                    other=0,
                )
                p8 = p.to(tl.int8, bitcast=True)
                w_lo = (p8 << 4) >> 4  # arithmetic shifts sign-extend the nibbles
                w_hi = p8 >> 4
                a_lo = tl.load(a_rows + (k0 + rk2)[None, :])
                a_hi = tl.load(a_rows + (k0 + BK // 2 + rk2)[None, :])
                if A_FP8:
                    w_lo = w_lo.to(tl.float32).to(tl.float8e4nv)
                    w_hi = w_hi.to(tl.float32).to(tl.float8e4nv)
                    acc = tl.dot(a_lo, tl.trans(w_lo), acc=acc, out_dtype=tl.float32)
                    acc = tl.dot(a_hi, tl.trans(w_hi), acc=acc, out_dtype=tl.float32)
                else:
                    acc = tl.dot(a_lo, tl.trans(w_lo), acc=acc, out_dtype=tl.int32)
                    acc = tl.dot(a_hi, tl.trans(w_hi), acc=acc, out_dtype=tl.int32)
            else:
                if TMA:
                    a = a_desc.load([pid_m * BM, k0])
                    w = b_desc.load([pid_n * BN, k0])
                else:
                    a = tl.load(a_rows + (k0 + rk)[None, :])
                    w = tl.load(
                        b_ptr + rn[:, None] * stride_bn + (k0 + rk)[None, :],
                        mask=nmask[:, None],
                        other=0,
                    )
                if A_FP8:
                    w = w.to(tl.float32).to(tl.float8e4nv)
                    acc = tl.dot(a, tl.trans(w), acc=acc, out_dtype=tl.float32)
                else:
                    acc = tl.dot(a, tl.trans(w), acc=acc, out_dtype=tl.int32)
        sa = tl.load(a_scale_ptr + rm, mask=mmask, other=0.0)
        sw = tl.load(w_scale_ptr + rn, mask=nmask, other=0.0)
        out = acc.to(tl.float32) * sa[:, None] * sw[None, :]
        if HAS_CENTER:
            mean = tl.load(center_ptr + rm, mask=mmask, other=0.0)
            wsum = tl.load(weight_sum_ptr + rn, mask=nmask, other=0.0).to(tl.float32)
            out += mean[:, None] * wsum[None, :]
        if PAIRED:
            # rows (2i, 2i + 1) of the tile are uncond row p = pid_m * BM/2 + i and its
            # cond difference: store y_u at p and y_u + W d at M/2 + p (the bias once)
            u, d = tl.split(tl.permute(tl.reshape(out, (BM // 2, 2, BN)), (0, 2, 1)))
            if HAS_BIAS:
                u += tl.load(bias_ptr + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
            c = u + d
            if GELU_TANH:
                u = _gelu_tanh(u, HW_TANH)
                c = _gelu_tanh(c, HW_TANH)
            pair = pid_m * (BM // 2) + tl.arange(0, BM // 2)
            pmask = (pair < M // 2)[:, None] & nmask[None, :]
            tl.store(c_ptr + pair[:, None] * stride_cm + rn[None, :],
                     u.to(c_ptr.dtype.element_ty), mask=pmask)
            tl.store(c_ptr + (M // 2 + pair)[:, None] * stride_cm + rn[None, :],
                     c.to(c_ptr.dtype.element_ty), mask=pmask)
        else:
            if HAS_BIAS:
                out += tl.load(bias_ptr + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
            if GELU_TANH:
                out = _gelu_tanh(out, HW_TANH)
            tl.store(
                c_ptr + rm[:, None] * stride_cm + rn[None, :],
                out.to(c_ptr.dtype.element_ty),
                mask=mmask[:, None] & nmask[None, :],
            )
