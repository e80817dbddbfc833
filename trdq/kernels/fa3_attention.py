"""Self-attention through FlashAttention-3 on Hopper: bf16, or e4m3 (FP8) with smoothing.

Why: attention is ~40% of a PixArt-1024 step on an H100 and cuDNN's bf16 kernel already
runs it near the bf16 tensor-core rate, so only 8-bit tensor-core attention moves it.
FA3's FP8 forward (the ``fa3-fwd`` wheel: sm_90a kernels for head dims 64/96/128/192/256,
torch stable ABI) is the warp-specialized kernel this project cannot write in Triton 3.6.

Layout: every function here takes and returns ``[B, S, H, D]`` (batch, tokens, heads,
head dim), the layout diffusers' projections produce before their transpose for SDPA.

FP8 quantization (``quantize_attention_inputs``; all scales float32, ``x ~= x8 * scale``):
- K is smoothed first: its mean over tokens (per batch, head and channel) is subtracted.
  That adds the same ``q . mean`` to every logit of a query row, which softmax ignores,
  so it is exact, and it removes the shared offset that would otherwise eat e4m3's range.
- V is smoothed the same way and its mean added back to the output: each output row is a
  convex combination of V's rows (the probabilities sum to 1), so ``P (V - m) + m = P V``.
- Q, K and V are zero-padded from D to a multiple of 16 (FA3's FP8 alignment; 72 -> 80).
  Zero columns change neither Q K^T nor the first D output columns; the softmax scale
  stays ``D ** -0.5`` of the real head dim.
- one e4m3 scale per (batch, head) and tensor: the ``q/k/v_descale`` FA3 takes.
- P (the softmax numerator) is cast to e4m3 inside FA3, after a shift of 2^8 so that
  small probabilities stay normal numbers (FA3's ``Max_offset`` for FP8); the row sums
  use the unquantized P.

``fp8_attention_reference`` is the pure-torch oracle of exactly that quantization; the
FA3 kernels are tested against it on a GPU, and it against exact attention on the CPU.
Importing this module never needs the wheel or a GPU.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "E4M3_MAX",
    "FP8_HEAD_DIM_MULTIPLE",
    "FP8_OPERANDS",
    "AttentionInputStats",
    "attention_input_stats",
    "e4m3_codes",
    "fa3_attention",
    "fa3_fp8_attention",
    "fa3_fp8_attention_on_codes",
    "fa3_status",
    "fp8_attention_on_codes_reference",
    "fp8_attention_reference",
    "load_fa3",
    "quantize_attention_inputs",
    "sdpa_attention",
    "set_triton_cast",
    "stacked_scales_and_means",
]

E4M3_MAX = 448.0
FP8_HEAD_DIM_MULTIPLE = 16
#: FA3 multiplies the FP8 softmax numerator by 2^P_SHIFT_LOG2 before the e4m3 cast
P_SHIFT_LOG2 = 8.0
_FA3_MODULE = "fa3_fwd_interface"


@functools.cache
def _fa3_importable() -> bool:
    return importlib.util.find_spec(_FA3_MODULE) is not None


_fa3_loaded = False


def load_fa3() -> None:
    """Import the wheel's interface, which registers ``torch.ops.fa3_fwd`` (its forward is
    a custom op with a fake implementation, so compiled graphs hold it as one node)."""
    global _fa3_loaded
    if not _fa3_loaded:
        importlib.import_module(_FA3_MODULE)
        _fa3_loaded = True


def fa3_status(device: torch.device | str) -> tuple[bool, str]:
    """Whether the FA3 kernels run on ``device`` (loading them if so), and if not, what
    is missing."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False, f"FA3 attention needs a CUDA device (this one is {device})"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) != (9, 0):
        return False, f"FA3 attention needs a Hopper GPU (sm_90); this one is sm_{major}{minor}"
    if not _fa3_importable():
        return False, "FA3 attention needs the fa3-fwd package (pip install 'trdq-server[fa3]')"
    load_fa3()
    return True, "ok"


def _fa3_forward():
    """FA3's forward op; a plain global check, so ``torch.compile`` traces straight to it."""
    if not _fa3_loaded:
        load_fa3()
    return torch.ops.fa3_fwd._flash_attn_forward


# ---- shared by the kernel path and the oracle ---------------------------------------------
def _pad_head_dim(x: torch.Tensor, multiple: int) -> torch.Tensor:
    pad = (-x.shape[-1]) % multiple
    return F.pad(x, (0, pad)) if pad else x


def e4m3_codes(x: torch.Tensor, scale: torch.Tensor, mean: torch.Tensor | None = None,
               out_dtype: torch.dtype = torch.float8_e4m3fn) -> torch.Tensor:
    """Codes of ``(x - mean) / scale`` clamped to e4m3's range, D padded with zeros
    (``x [B, S, H, D]``, ``scale [B, H]``, ``mean`` broadcasting to x; ``out_dtype``
    float32: the values before the cast, for tests)."""
    centred = x.float() if mean is None else x.float() - mean
    scaled = (centred / scale[:, None, :, None]).clamp(-E4M3_MAX, E4M3_MAX)
    return _pad_head_dim(scaled, FP8_HEAD_DIM_MULTIPLE).to(out_dtype)


def _to_e4m3(x: torch.Tensor, amax: torch.Tensor,
             mean: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 codes of ``x - mean`` ([B, S, H, D], D padded) and its scales [B, H]."""
    scale = amax.clamp_min(1e-12) / E4M3_MAX
    return e4m3_codes(x, scale, mean), scale


def _token_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x``'s mean over tokens [B, 1, H, D] and the absmax of ``x - mean`` per (batch,
    head) [B, H], from reductions over the token axis only (the three fuse into one read).

    Per channel, ``max_s |x_s - m| = max(max_s x_s - m, m - min_s x_s)``, and float
    rounding is monotonic, so this equals the absmax of the centred tensor exactly without
    materialising it or reducing over tokens and channels at once.
    """
    xf = x.float()
    mean = xf.mean(dim=1, keepdim=True)
    lo, hi = xf.amin(dim=1, keepdim=True), xf.amax(dim=1, keepdim=True)
    amax = torch.maximum(hi - mean, mean - lo).amax(dim=-1)[:, 0]
    return mean, amax


class AttentionInputStats(NamedTuple):
    """What the e4m3 quantization of Q, K and V needs: the absmaxes per (batch, head)
    ``[B, H]`` of Q, of K - k_mean and of V - v_mean, and the means ``[B, 1, H, D]``
    subtracted from K and V (float32). ``attention_input_stats`` takes them from the
    inputs themselves; static ones (``trdq.nn.static_attention``: calibrated per timestep
    group) may be any means, since subtracting a constant from K or V is exact, and any
    absmaxes, values beyond them being clamped to e4m3's range."""

    q_amax: torch.Tensor
    k_amax: torch.Tensor
    v_amax: torch.Tensor
    k_mean: torch.Tensor
    v_mean: torch.Tensor


def attention_input_stats(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> AttentionInputStats:
    """The inputs' own statistics (dynamic quantization): one read of each input, every
    reduction over the token axis (``_token_stats``), which ``torch.compile`` fuses per
    tensor."""
    k_mean, k_amax = _token_stats(k)
    v_mean, v_amax = _token_stats(v)
    q_amax = q.float().abs().amax(dim=1).amax(dim=-1)
    return AttentionInputStats(q_amax, k_amax, v_amax, k_mean, v_mean)


#: fixed statistics' casts through ``trdq.kernels.triton_attention_quant`` (one launch for
#: Q, K and V) instead of the torch ops Inductor fuses into three kernels; off until the
#: kernel is timed on a GPU (bench row suffix ``+tritoncast``)
_triton_cast = False


def set_triton_cast(enabled: bool) -> None:
    """Cast fixed-statistics Q/K/V with the one-launch Triton kernel on CUDA (or not)."""
    global _triton_cast
    _triton_cast = enabled


def quantize_attention_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, stats: AttentionInputStats | None = None
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...], torch.Tensor]:
    """e4m3 ``(q8, k8, v8)``, their ``(q_scale, k_scale, v_scale)`` [B, H] and V's mean
    [B, 1, H, D] (to add back to the output); K and V smoothed, D padded (module doc).
    ``stats``: fixed statistics to quantize with (default: the inputs' own)."""
    if stats is not None and _triton_cast and q.is_cuda:
        return _quantize_in_one_launch(q, k, v, stats)
    if stats is None:
        stats = attention_input_stats(q, k, v)
    q8, q_scale = _to_e4m3(q, stats.q_amax)
    k8, k_scale = _to_e4m3(k, stats.k_amax, stats.k_mean)
    v8, v_scale = _to_e4m3(v, stats.v_amax, stats.v_mean)
    return (q8, k8, v8), (q_scale, k_scale, v_scale), stats.v_mean


def _quantize_in_one_launch(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, stats: AttentionInputStats
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...], torch.Tensor]:
    """``quantize_attention_inputs`` with fixed statistics, the casts as one Triton launch
    (``trdq.kernels.triton_attention_quant``; the same codes as ``_to_e4m3``)."""
    from trdq.kernels.triton_attention_quant import attention_inputs_e4m3

    scales, means = stacked_scales_and_means(stats)
    codes = attention_inputs_e4m3(q, k, v, scales, means)
    return (codes[0], codes[1], codes[2]), (scales[0], scales[1], scales[2]), stats.v_mean


def stacked_scales_and_means(stats: AttentionInputStats) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed statistics as the one-launch casts take them: e4m3 scales ``[3, B, H]`` of Q,
    K, V and the means subtracted ``[3, B, H, D]`` (Q's zero)."""
    scales = torch.stack([stats.q_amax, stats.k_amax, stats.v_amax]).clamp_min(1e-12) / E4M3_MAX
    k_mean = stats.k_mean[:, 0]
    return scales, torch.stack([torch.zeros_like(k_mean), k_mean, stats.v_mean[:, 0]])


# ---- the kernels ------------------------------------------------------------------------------
def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """PyTorch's SDPA (cuDNN / flash on a GPU) in the [B, S, H, D] layout: the baseline."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def fa3_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """FA3 in bf16 (head dims up to 256, multiples of 8; 72 runs the 96-wide kernel)."""
    out = _fa3_forward()(q, k, v, softmax_scale=q.shape[-1] ** -0.5)[0]
    return out


def fa3_fp8_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, stats: AttentionInputStats | None = None
) -> torch.Tensor:
    """FA3's e4m3 kernel on smoothed, padded, per-head-scaled inputs; bf16 [B, S, H, D] out.
    ``stats``: fixed statistics to quantize with (default: the inputs' own).

    The quantization is torch ops: under ``torch.compile`` (the served blocks) Inductor
    fuses the means, the absmax reductions, the casts and the padding into a few kernels,
    and the slice and mean-add after the call into one.
    """
    codes, scales, v_mean = quantize_attention_inputs(q, k, v, stats)
    return fa3_fp8_attention_on_codes(codes, scales, v_mean, q.shape[-1], q.dtype)


def fa3_fp8_attention_on_codes(
    codes: Sequence[torch.Tensor], scales: Sequence[torch.Tensor], v_mean: torch.Tensor,
    head_dim: int, dtype: torch.dtype,
) -> torch.Tensor:
    """FA3's e4m3 kernel on operands already quantized: ``codes`` Q, K, V ``[B, S, H, Dp]``
    (each, or stacked ``[3, ...]``), ``scales`` their ``[B, H]``, ``v_mean [B, 1, H, D]``
    added back; ``[B, S, H, head_dim]`` in ``dtype``. For producers that write the codes
    themselves (``trdq.kernels.triton_rope_quant``)."""
    out = _fa3_forward()(
        codes[0], codes[1], codes[2], q_descale=scales[0], k_descale=scales[1],
        v_descale=scales[2], softmax_scale=head_dim**-0.5,
    )[0]
    return (out[..., :head_dim].float() + v_mean).to(dtype)


def fp8_attention_on_codes_reference(
    codes: Sequence[torch.Tensor], scales: Sequence[torch.Tensor], v_mean: torch.Tensor,
    head_dim: int, dtype: torch.dtype,
) -> torch.Tensor:
    """The oracle of ``fa3_fp8_attention_on_codes`` in float32 (P rounded to e4m3 as FA3
    does, the whole score matrix at once)."""
    qf, kf, vf = (_dequant_codes(codes[t], scales[t]) for t in range(3))
    return (_attend_reference(qf, kf, vf, head_dim, round_p=True)[..., :head_dim]
            + v_mean).to(dtype)


def _dequant_codes(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """e4m3 codes ``[B, S, H, D]`` times their ``[B, H]`` scales, as ``[B, H, S, D]`` float32."""
    return (codes.float() * scale[:, None, :, None]).transpose(1, 2)


def _attend_reference(qf, kf, vf, head_dim: int, round_p: bool) -> torch.Tensor:
    """Softmax attention of float32 ``[B, H, S, D]`` operands as FA3's e4m3 kernel computes
    it (numerator shifted by ``P_SHIFT_LOG2`` and, with ``round_p``, rounded to e4m3);
    ``[B, S, H, D]`` out."""
    logits = qf @ kf.transpose(-1, -2) * (head_dim**-0.5)
    shifted = (logits - logits.amax(dim=-1, keepdim=True)) * (1 / math.log(2)) + P_SHIFT_LOG2
    numer = torch.exp2(shifted)
    row_sum = numer.sum(dim=-1, keepdim=True)
    if round_p:
        numer = numer.to(torch.float8_e4m3fn).float()
    return (numer @ vf / row_sum).transpose(1, 2)


#: the operands FA3 rounds to e4m3: Q and K (together: the logits), V, and P
FP8_OPERANDS = ("qk", "v", "p")


def fp8_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, operands: tuple[str, ...] = FP8_OPERANDS,
    stats: AttentionInputStats | None = None,
) -> torch.Tensor:
    """The oracle of ``fa3_fp8_attention`` in float32 (the whole score matrix at once).

    ``operands`` leaves the ones not named in float32 (smoothing and padding stay): the
    error budget of each rounding on its own (``trdq.kernels.microbench --error-budget``).
    ``stats``: fixed statistics to quantize with (default: the inputs' own).
    """
    head_dim = q.shape[-1]
    if stats is None:
        stats = attention_input_stats(q, k, v)
    (q8, k8, v8), (qs, ks, vs), v_mean = quantize_attention_inputs(q, k, v, stats)

    def smoothed(x, mean=None):  # the same inputs, not rounded
        x = x.float() if mean is None else x.float() - mean
        return _pad_head_dim(x, FP8_HEAD_DIM_MULTIPLE).transpose(1, 2)

    if "qk" in operands:
        qf, kf = _dequant_codes(q8, qs), _dequant_codes(k8, ks)
    else:
        qf, kf = smoothed(q), smoothed(k, stats.k_mean)
    vf = _dequant_codes(v8, vs) if "v" in operands else smoothed(v, v_mean)
    out = _attend_reference(qf, kf, vf, head_dim, round_p="p" in operands)[..., :head_dim]
    return (out + v_mean).to(q.dtype)
