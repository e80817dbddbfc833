"""The math of the fused activation path, and the device functions its two Triton kernels
share (the in-register Walsh-Hadamard transform, int8 rounding).

Fused activation path: bf16 ``[M, K]`` -> (- row mean) -> (/ smooth) -> block Hadamard
-> e4m3 or int8.

A Triton kernel reads the activations, divides by the SmoothQuant vector, applies the
block-diagonal normalized Hadamard rotation (a fast Walsh-Hadamard transform inside each
block of ``HB`` channels, in registers), scales every row and writes the low-bit values
plus the per-row scales. No rotation matmul, no intermediate tensor in memory. Two
kernels share that math (``trdq.kernels.triton_rotate_quant`` picks one per call):
- the single-pass kernel (``_rotate_quant_rows_kernel`` in ``triton_rotate_quant_rows``,
  dynamic scales): whole rows held in registers, x read once;
- the tiled kernel (``_rotate_quant_kernel`` in ``triton_rotate_quant_tiled``: static
  scales, the tensor-core rotation, wider rows): loops over ``HB``-wide column tiles,
  re-reading them (mostly from cache) for the mean and the absmax in dynamic mode.

Notation: M rows (tokens x batch), K channels, HB the Hadamard block (power of two that
divides K, at most 128; 1152 = 9 x 128).

Scale convention (shared with ``trdq.kernels.base``): ``x_rot ~= q * scale[:, None]``.
- static mode: ``scale`` is given per row (timestep group, CFG half) and returned as is;
- dynamic mode: ``scale = max(absmax(x_rot row) * clip_ratio[row] / qmax, 1e-8)`` with
  ``qmax = 448`` for e4m3 and ``127`` for int8 (``clip_ratio`` one value or one per row).
Values beyond ``qmax`` saturate (e4m3fn has no infinity; an unclamped cast gives NaN).
int8 rounding is round-half-to-even, as ``torch.round``.

Centring (``center_out`` given, dynamic mode only): each row's mean over K is subtracted
before smoothing and rotation and written to ``center_out`` (float32 ``[M]``); the GEMM
adds ``mean x weight_sum`` back (see ``trdq.nn.quant_linear``). The tiled kernel takes
one more read of the row tile (from L2) for the mean instead of three elementwise passes
outside; the single-pass kernel sums the rows it holds.

CFG-delta (``delta_half`` > 0, dynamic mode only): the rows are [uncond; cond] halves of
``delta_half`` rows each, and every cond row ``r`` is replaced by ``x[r] - x[r - delta_half]``
(in float32) before anything else, as ``serve_linear``'s cfg_delta does outside. The tiled
kernel subtracts at each load of x (one more read of the paired uncond tile, usually from
L2); the single-pass kernel holds each pair in one program. Either way no elementwise pass
writes and re-reads all of ``[M, K]``. ``interleave_pairs`` (single-pass only) writes the
pairs as adjacent rows for the GEMM's paired epilogue (``trdq.kernels.triton_w4a8``).

``rotate_quant_reference`` (``trdq.kernels.rotate_quant_reference``) is the pure-torch
oracle of the same math; both kernels are tested against it. Importing this module never
needs Triton: ``TRITON_AVAILABLE`` says whether the kernels can be launched.
"""

from __future__ import annotations

import importlib.util

__all__ = ["TRITON_AVAILABLE"]

TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None


if TRITON_AVAILABLE:
    import triton
    import triton.language as tl

    @triton.jit
    def round_half_even_int8(v):
        """Round half to even (as torch.round) and narrow to int8: adding 1.5 * 2^23 leaves
        no fraction bits in fp32, so the add itself rounds; exact for |v| < 2^22. The
        caller keeps v within the int8 range."""
        return ((v + 12582912.0) - 12582912.0).to(tl.int8)

    @triton.jit
    def _butterfly(x, BLOCK_M: tl.constexpr, HB: tl.constexpr, H: tl.constexpr):
        """One stage at stride H: element k = j*2H + i pairs with k + H, (a, b) -> (a+b, a-b).

        View [BLOCK_M, HB/2H, 2, H], move the pair axis last, split, butterfly, join back.
        """
        y = tl.reshape(x, (BLOCK_M, HB // (2 * H), 2, H))
        y = tl.permute(y, (0, 1, 3, 2))
        a, b = tl.split(y)
        y = tl.join(a + b, a - b)
        y = tl.permute(y, (0, 1, 3, 2))
        return tl.reshape(y, (BLOCK_M, HB))

    @triton.jit
    def _fwht(x, BLOCK_M: tl.constexpr, HB: tl.constexpr):
        """In-register unnormalized Walsh-Hadamard transform along axis 1 of [BLOCK_M, HB]
        (HB a power of two, 2..128), stages unrolled at compile time; natural (Sylvester)
        order."""
        if HB >= 2:
            x = _butterfly(x, BLOCK_M, HB, 1)
        if HB >= 4:
            x = _butterfly(x, BLOCK_M, HB, 2)
        if HB >= 8:
            x = _butterfly(x, BLOCK_M, HB, 4)
        if HB >= 16:
            x = _butterfly(x, BLOCK_M, HB, 8)
        if HB >= 32:
            x = _butterfly(x, BLOCK_M, HB, 16)
        if HB >= 64:
            x = _butterfly(x, BLOCK_M, HB, 32)
        if HB >= 128:
            x = _butterfly(x, BLOCK_M, HB, 64)
        return x
