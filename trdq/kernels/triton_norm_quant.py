"""The residual add, LayerNorm and adaLN modulate before a linear, and that linear's e4m3
activation quantizer, in one pass: ``add_norm_modulate_quant``.

Why: in a PixArt/Latte block (diffusers' ``BasicTransformerBlock``, ``ada_norm_single``)
the feed-forward's input is ``LayerNorm(h + b) * (1 + scale) + shift`` with ``h + b`` the
new residual stream. torch.compile fuses this, and ``fp8-norot``'s quantizer after it, into
one Inductor kernel, but a looped Welford reduction that reads each row twice and is
bound by its arithmetic, not by memory: at Latte's shape (32768 x 1152, H100) 198.7 us,
against 155.2 us for the same kernel writing bf16 and 98.7 us for this one, which holds
each whole row in registers (read once; mean and variance from the registers) and
writes the residual (bf16) and the codes (e4m3) (``scripts/fused_quant_probe.py``,
``docs/bench/fused-quant-probe-h100.json``).

The arithmetic, in float32 (``add_norm_modulate_quant_reference`` is its oracle):

    h = x + gate * branch            (gate 1 when None; h rounded to x's dtype: it is the
                                      residual stream, kept in bf16 as the block keeps it)
    y = (h - mean(h)) / sqrt(var(h) + eps) * (1 + scale[b]) + shift[b]
    q = e4m3(clamp(y * inverse_row_scale, -448, 448))

``b`` is the row's batch element (``row // tokens``): the modulation is per sample.
``inverse_row_scale [M]`` is the reciprocal of the consuming layer's static scales,
computed once outside the kernel (a gathered, divided scale per element cost the
Inductor kernel ~10%; the probe's ``pre_rows``). Importing this module never needs
Triton: ``TRITON_AVAILABLE`` says whether the kernel can be launched.
"""

from __future__ import annotations

import torch

from trdq.kernels.launch import TRITON_LAUNCH_LOCK, next_pow2
from trdq.kernels.oplib import define_op
from trdq.kernels.triton_rotate_quant import E4M3_MAX, TRITON_AVAILABLE

__all__ = [
    "add_norm_modulate_quant",
    "add_norm_modulate_quant_reference",
    "add_norm_modulate_quant_triton",
]


def _check(x, branch, gate, shift, scale, inverse_row_scale) -> tuple[int, int, int]:
    """(batch, tokens, dim) of ``x [B, T, D]``, after checking every shape against it."""
    if x.dim() != 3:
        raise ValueError(f"x must be [batch, tokens, dim], got {tuple(x.shape)}")
    batch, tokens, dim = x.shape
    if branch is not None and branch.shape != x.shape:
        raise ValueError(f"branch {tuple(branch.shape)} does not match x {tuple(x.shape)}")
    for name, mod in (("gate", gate), ("shift", shift), ("scale", scale)):
        if mod is not None and mod.numel() != batch * dim:
            raise ValueError(f"{name} must hold one [dim] vector per sample, got {tuple(mod.shape)}")
    if gate is not None and branch is None:
        raise ValueError("a gate needs a branch to scale")
    if inverse_row_scale.numel() != batch * tokens:
        raise ValueError(
            f"inverse_row_scale must hold one value per row ({batch * tokens}), "
            f"got {inverse_row_scale.numel()}"
        )
    return batch, tokens, dim


def add_norm_modulate_quant_reference(
    x: torch.Tensor,
    branch: torch.Tensor | None,
    gate: torch.Tensor | None,
    shift: torch.Tensor,
    scale: torch.Tensor,
    inverse_row_scale: torch.Tensor,
    eps: float,
    out_dtype: torch.dtype = torch.float8_e4m3fn,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-torch oracle: ``(residual [B, T, D] in x's dtype, codes [B*T, D])``; the codes
    are e4m3, or the clamped values before that cast in ``out_dtype`` (float32) for tests."""
    batch, tokens, dim = _check(x, branch, gate, shift, scale, inverse_row_scale)
    h = x
    if branch is not None:
        g = 1.0 if gate is None else gate.float().reshape(batch, 1, dim)
        h = (x.float() + g * branch.float()).to(x.dtype)
    hf = h.float()
    mean = hf.mean(dim=-1, keepdim=True)
    centred = hf - mean
    rstd = torch.rsqrt(centred.pow(2).mean(dim=-1, keepdim=True) + eps)
    y = centred * rstd * (1.0 + scale.float().reshape(batch, 1, dim)) + shift.float().reshape(
        batch, 1, dim
    )
    v = y.reshape(batch * tokens, dim) * inverse_row_scale.float().reshape(-1, 1)
    q = torch.clamp(v, -E4M3_MAX, E4M3_MAX).to(out_dtype)
    return (h if branch is not None else _no_residual(x)), q


def _no_residual(x: torch.Tensor) -> torch.Tensor:
    """What the op returns for the residual when there is no branch: the residual is x
    itself, which an operator may not return (its outputs must be new tensors)."""
    return x.new_empty(0)


if TRITON_AVAILABLE:
    import triton
    import triton.language as tl

    @triton.jit
    def _add_norm_modulate_quant_kernel(
        x_ptr, branch_ptr, gate_ptr, shift_ptr, scale_ptr, inverse_ptr, residual_ptr, q_ptr,
        tokens, dim, eps, gate_stride, shift_stride, scale_stride,
        BLOCK: tl.constexpr, HAS_BRANCH: tl.constexpr, HAS_GATE: tl.constexpr,
        E4M3: tl.constexpr,
    ):
        """One program per row: the whole row in registers, read once. The modulation
        vectors are read at their samples' strides (chunks of one adaLN output)."""
        row = tl.program_id(0)
        sample = row // tokens
        cols = tl.arange(0, BLOCK)
        mask = cols < dim
        offs = row.to(tl.int64) * dim + cols
        h = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_BRANCH:
            b = tl.load(branch_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            if HAS_GATE:
                gate = tl.load(gate_ptr + sample * gate_stride + cols, mask=mask, other=0.0)
                b = b * gate.to(tl.float32)
            h_stored = (h + b).to(residual_ptr.dtype.element_ty)
            tl.store(residual_ptr + offs, h_stored, mask=mask)
            h = h_stored.to(tl.float32)  # normalize the residual as stored, as the block does
        mean = tl.sum(h, axis=0) / dim
        centred = tl.where(mask, h - mean, 0.0)
        rstd = tl.rsqrt(tl.sum(centred * centred, axis=0) / dim + eps)
        mod_scale = tl.load(scale_ptr + sample * scale_stride + cols, mask=mask,
                            other=0.0).to(tl.float32)
        mod_shift = tl.load(shift_ptr + sample * shift_stride + cols, mask=mask,
                            other=0.0).to(tl.float32)
        y = centred * rstd * (1.0 + mod_scale) + mod_shift
        v = y * tl.load(inverse_ptr + row)
        v = tl.minimum(tl.maximum(v, -E4M3), E4M3)
        tl.store(q_ptr + offs, v.to(q_ptr.dtype.element_ty), mask=mask)


def add_norm_modulate_quant_triton(
    x: torch.Tensor,
    branch: torch.Tensor | None,
    gate: torch.Tensor | None,
    shift: torch.Tensor,
    scale: torch.Tensor,
    inverse_row_scale: torch.Tensor,
    eps: float,
    out_dtype: torch.dtype = torch.float8_e4m3fn,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton kernel (a CUDA device, or the interpreter); ``out_dtype`` float32 lets
    the interpreter tests compare values without Triton's float8 rounding there."""
    batch, tokens, dim = _check(x, branch, gate, shift, scale, inverse_row_scale)
    x = x.contiguous()
    rows = batch * tokens
    residual = torch.empty_like(x) if branch is not None else _no_residual(x)
    q = torch.empty(rows, dim, device=x.device, dtype=out_dtype)
    dummy = x  # an unread pointer where an optional input is absent
    gate_rows, gate_stride = (dummy, 0) if gate is None else _per_sample(gate, batch, dim)
    shift_rows, shift_stride = _per_sample(shift, batch, dim)
    scale_rows, scale_stride = _per_sample(scale, batch, dim)
    with TRITON_LAUNCH_LOCK:
        _add_norm_modulate_quant_kernel[(rows,)](
            x,
            dummy if branch is None else branch.contiguous(),
            gate_rows,
            shift_rows,
            scale_rows,
            inverse_row_scale.float().contiguous(),
            residual if branch is not None else dummy,
            q,
            tokens,
            dim,
            eps,
            gate_stride,
            shift_stride,
            scale_stride,
            BLOCK=next_pow2(dim),
            HAS_BRANCH=branch is not None,
            HAS_GATE=gate is not None,
            E4M3=E4M3_MAX,
            num_warps=4 if dim <= 2048 else 8,
        )
    return residual, q


def _per_sample(vector: torch.Tensor, batch: int, dim: int) -> tuple[torch.Tensor, int]:
    """A modulation vector per sample as ``[batch, dim]`` with contiguous channels, and its
    sample stride. The blocks pass chunks of one adaLN output (``[B, 1, D]`` views at a
    stride of ``6 D``): read in place, where copying each made a launch of its own (five a
    PixArt block: likely most of the 114 small copy kernels of an H100 step's graph)."""
    rows = vector.reshape(batch, dim)  # a view where the chunk's layout allows it
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    return rows, rows.stride(0)


def _add_norm_modulate_quant(
    x: torch.Tensor,
    branch: torch.Tensor | None,
    gate: torch.Tensor | None,
    shift: torch.Tensor,
    scale: torch.Tensor,
    inverse_row_scale: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(residual [B, T, D], codes [B*T, D] e4m3)`` of ``x + gate * branch`` normalized,
    modulated and quantized (the module docstring): the Triton kernel on CUDA, the
    reference elsewhere. Without ``branch`` the residual is ``x`` itself and the returned
    one is empty (nothing is written)."""
    if x.is_cuda and TRITON_AVAILABLE:
        return add_norm_modulate_quant_triton(x, branch, gate, shift, scale, inverse_row_scale, eps)
    return add_norm_modulate_quant_reference(x, branch, gate, shift, scale, inverse_row_scale, eps)


def _add_norm_modulate_quant_fake(x, branch, gate, shift, scale, inverse_row_scale, eps):
    rows = x.shape[0] * x.shape[1]
    residual = x.new_empty(x.shape) if branch is not None else _no_residual(x)
    return residual, x.new_empty((rows, x.shape[2]), dtype=torch.float8_e4m3fn)


#: ``torch.ops.trdq.add_norm_modulate_quant``: ``_add_norm_modulate_quant`` as one opaque
#: operator to torch.compile
add_norm_modulate_quant = define_op(
    "trdq::add_norm_modulate_quant", _add_norm_modulate_quant, _add_norm_modulate_quant_fake
)
