"""QuantLinear: packed low-bit weights + per-timestep-group activation parameters.

Weights are smoothed (optional), rotated and quantized ONCE here, then handed to the
kernel backend's ``pack``; what it returns becomes buffers ``packed_<key>`` (so summing
parameters + buffers by dtype gives the real weight bytes). Activation parameters are
per timestep group and per CFG half: ``act_scale_by_group [G, 2]`` (static mode) and
``clip_ratio_by_group [G, 2]`` (dynamic mode); column 0 is the uncond half, column 1 the
cond half (also used when CFG is off). With CFG-wise off both columns are equal.

Every forward reads the owning model's ``QuantContext`` (group, CFG layout) and builds an
``ActQuant`` for the backend: a per-row vector [M] (static mode: scales; dynamic mode: clip
ratios) whose first half holds the uncond value and second half the cond value, so both
CFG branches run in ONE
GEMM. Rows are flattened with the batch dimension outermost, which is how diffusers DiTs
lay out [uncond x B, cond x B] batches (also after Latte's spatial/temporal reshapes).

CFG-delta activations (``cfg_delta``, dynamic mode): with classifier-free guidance the
sampler uses ``eps_u + w (eps_c - eps_u)``, so rounding errors the two halves do not share
are amplified ~sqrt((w - 1)^2 + w^2) = 5.7x (w = 4.5). The cond rows are therefore quantized as their
difference from the paired uncond row (same token, same position: the halves are laid out
alike), and the GEMM's output for them becomes ``y_u + W d``: where the halves agree (the
first block's self-attention inputs are identical) they now get identical errors, and
where they differ only the small difference is rounded. Still one GEMM for both halves;
one subtraction before it and one addition after (t2v zoo, W8A8, 16 training prompts on
the CPU: 45.8 -> 51.1 dB to FP; docs/QUALITY.md). Backends with ``fuses_cfg_delta`` (the
CUDA ones) subtract inside their rotate+quantize kernel as they load the rows (in float32),
which saves a pass over the activations; ``cpu_int8`` also adds the uncond output back
in its epilogue (``restores_cfg_delta``); for the others ``kernels.base.serve_linear`` adds
it after the backend's call.

Centered activations (``act_center``, dynamic mode): each token's mean is subtracted
before rotation and quantization and added back exactly through the weights' row sums,
``x W^T = (x - c) W^T + c * (W 1)``. A token's mean is what a Hadamard rotation gathers
into one channel per block (an outlier it creates), and what makes post-GELU inputs
one-sided; removing it gives symmetric int8/e4m3 the whole range. Backends with
``fuses_centering`` (the CUDA ones) do it inside their kernels: the rotate+quantize kernel
computes the mean, the GEMM epilogue adds it back. That is also faster under
torch.compile than leaving the three elementwise ops to Inductor (docs/KERNELS.md, "Tried
and not adopted"). Elsewhere ``serve_linear`` does one mean, one subtraction and one
outer-product add around the backend call. This layer builds the ``ActQuant`` with all of
it asked for; ``serve_linear`` decides, from what the backend declares, where each part runs.
"""

from __future__ import annotations

import torch
from torch import nn

from trdq.calibration.result import LOW_RANK_KEYS
from trdq.kernels.base import ActQuant, KernelBackend, apply_output_activation, serve_linear
from trdq.kernels.ops import scaled_mm_rowwise
from trdq.primitives import MIN_SCALE
from trdq.quant_transforms import (
    LayerQuantParams,
    centering_weight_sum,
    quantize_transformed_weight,
    transform_weight,
)
from trdq.timestep import QuantContext

__all__ = ["QuantLinear"]


class QuantLinear(nn.Module):
    """A drop-in ``nn.Linear`` replacement running on a kernel backend."""

    # buffers registered in __init__ (declared for the type checker; no class attributes)
    smooth_divisor: torch.Tensor | None
    act_scale_by_group: torch.Tensor
    clip_ratio_by_group: torch.Tensor
    weight_sum: torch.Tensor | None
    low_rank_up: torch.Tensor | None
    low_rank_down: torch.Tensor | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        backend: KernelBackend,
        packed: dict[str, torch.Tensor],
        bias: torch.Tensor | None,
        params: LayerQuantParams,
        context: QuantContext,
        weight_bits: int,
        act_bits: int = 8,
        fp8: bool = False,
        act_mode: str = "static",
        cfg_wise: bool = True,
        weight_sum: torch.Tensor | None = None,
        cfg_delta: bool = False,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.backend = backend
        self.context = context
        self.weight_bits = weight_bits
        self.act_bits = act_bits
        self.fp8 = fp8
        self.act_mode = act_mode
        self.cfg_wise = cfg_wise
        if cfg_delta and act_mode != "dynamic":
            raise ValueError("cfg_delta needs dynamic (per-token) activations")
        self.cfg_delta = cfg_delta
        self.rotation_block = params.rotation_block
        self._packed_keys = sorted(packed)
        for key in self._packed_keys:
            self.register_buffer(f"packed_{key}", packed[key])
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None
        smooth = params.smooth_divisor
        self.register_buffer("smooth_divisor", smooth.float() if smooth is not None else None)
        self.register_buffer("act_scale_by_group", params.act_scale_by_group.float().clone())
        self.register_buffer("clip_ratio_by_group", params.clip_ratio_by_group.float().clone())
        #: [N] row sums of the effective (dequantized, rotated back) weight; set = centered
        self.register_buffer("weight_sum", weight_sum)
        # the low-rank error branch (trdq/low_rank.py): [N, r] and [r, K] weights in 16
        # bits (fp16 in an fp16 model, else bf16: a correction needs no more); None = none
        branch_dtype = torch.float16 if bias is not None and bias.dtype == torch.float16 \
            else torch.bfloat16
        for key in LOW_RANK_KEYS:
            value = getattr(params, key)
            self.register_buffer(key, None if value is None else value.to(branch_dtype).contiguous())
        #: applied to the output ("" = none, "gelu_tanh"): set by ``fuse_gelu_into_linears``
        #: when this layer feeds a GELU, so a backend can apply it in its GEMM epilogue
        self.output_activation = ""

    # ---- construction --------------------------------------------------------------------
    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        params: LayerQuantParams,
        backend: KernelBackend,
        context: QuantContext,
        *,
        weight_bits: int = 8,
        act_bits: int = 8,
        fp8: bool = False,
        act_mode: str = "static",
        cfg_wise: bool = True,
        act_center: bool = False,
        cfg_delta: bool = False,
    ) -> QuantLinear:
        """Smooth, rotate and quantize ``linear``'s weight and pack it for ``backend``."""
        weight = transform_weight(linear.weight, params.smooth_divisor, params.rotation_block)
        qweight, weight_scale = quantize_transformed_weight(
            weight, weight_bits, fp8, params.weight_clip, params.weight_q
        )
        weight_sum = None
        if act_center:
            if act_mode != "dynamic":
                raise ValueError("act_center needs dynamic (per-token) activations")
            weight_sum = centering_weight_sum(qweight, weight_scale, params.smooth_divisor,
                                              params.rotation_block)
        return cls.from_quantized(
            qweight, weight_scale, linear.bias, params, backend, context,
            weight_bits=weight_bits, act_bits=act_bits, fp8=fp8, act_mode=act_mode,
            cfg_wise=cfg_wise, weight_sum=weight_sum, cfg_delta=cfg_delta,
        )

    @classmethod
    def from_quantized(
        cls,
        qweight: torch.Tensor,
        weight_scale: torch.Tensor,
        bias: torch.Tensor | None,
        params: LayerQuantParams,
        backend: KernelBackend,
        context: QuantContext,
        *,
        weight_bits: int = 8,
        act_bits: int = 8,
        fp8: bool = False,
        act_mode: str = "static",
        cfg_wise: bool = True,
        weight_sum: torch.Tensor | None = None,
        cfg_delta: bool = False,
    ) -> QuantLinear:
        """A layer from its canonical quantized weights: ``qweight [N, K]`` (int8 holding
        ``weight_bits``-bit integers, or e4m3) and ``weight_scale [N]`` fp32 of the
        smoothed, rotated weight, ``weight_sum [N]`` when activations are centred.
        ``backend.pack`` turns them into that backend's storage (its preparation step: the
        same canonical weights serve any backend). The layer lives on ``qweight``'s device;
        ``params``' weight clip and rounding are already in ``qweight``."""
        if weight_sum is not None and act_mode != "dynamic":
            raise ValueError("centred activations (weight_sum) need dynamic activations")
        device = qweight.device
        packed = backend.pack(qweight, weight_scale, weight_bits)
        smooth = params.smooth_divisor
        params = LayerQuantParams(
            rotation_block=params.rotation_block,
            smooth_divisor=None if smooth is None else smooth.to(device),
            act_scale_by_group=params.act_scale_by_group.to(device),
            clip_ratio_by_group=params.clip_ratio_by_group.to(device),
            **{key: None if getattr(params, key) is None else getattr(params, key).to(device)
               for key in LOW_RANK_KEYS},
        )
        return cls(
            qweight.shape[1],
            qweight.shape[0],
            backend=backend,
            packed={k: v.to(device) for k, v in packed.items()},
            bias=None if bias is None else bias.detach(),
            params=params,
            context=context,
            weight_bits=weight_bits,
            act_bits=act_bits,
            fp8=fp8,
            act_mode=act_mode,
            cfg_wise=cfg_wise,
            weight_sum=weight_sum,
            cfg_delta=cfg_delta,
        )

    def canonical_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(qweight [N, K], weight_scale [N])`` as ``from_quantized`` takes them (the
        backend's ``unpack``)."""
        return self.backend.unpack(self.packed)

    def quant_params(self) -> LayerQuantParams:
        """The activation parameters this layer serves with (weight clip and rounding are
        in its weights)."""
        return LayerQuantParams(
            rotation_block=self.rotation_block,
            smooth_divisor=self.smooth_divisor,
            act_scale_by_group=self.act_scale_by_group,
            clip_ratio_by_group=self.clip_ratio_by_group,
            **{key: getattr(self, key) for key in LOW_RANK_KEYS},
        )

    # ---- helpers ---------------------------------------------------------------------------
    @property
    def packed(self) -> dict[str, torch.Tensor]:
        return {key: getattr(self, f"packed_{key}") for key in self._packed_keys}

    def set_activation_params(self, act_scale_by_group: torch.Tensor, clip_ratio_by_group: torch.Tensor) -> None:
        self.act_scale_by_group.copy_(act_scale_by_group)
        self.clip_ratio_by_group.copy_(clip_ratio_by_group)

    def _act(
        self,
        row_scale: torch.Tensor | None,
        clip: float | torch.Tensor,
        weight_sum: torch.Tensor | None = None,
        cfg_delta_half: int = 0,
    ) -> ActQuant:
        return ActQuant(
            bits=self.act_bits,
            rotation_block=self.rotation_block,
            smooth_divisor=self.smooth_divisor,
            row_scale=row_scale,
            clip_ratio=clip,
            fp8=self.fp8,
            weight_sum=weight_sum,
            cfg_delta_half=cfg_delta_half,
        )

    def _per_row(self, by_group: torch.Tensor, rows: int, split: bool) -> torch.Tensor:
        """This group's (uncond, cond) pair of ``by_group [G, 2]`` as one value per row.

        With CFG the first half of the rows is uncond, the second cond; otherwise every
        row takes the cond value. The group is read on the device
        (``QuantContext.group_row``).
        """
        pair = self.context.group_row(by_group)
        return pair.repeat_interleave(rows // 2) if split else pair[1:].expand(rows)

    # ---- input quantized by its producer (trdq.nn.fused_block) -----------------------------
    def producer_row_scale(self, rows: int) -> torch.Tensor | None:
        """The e4m3 scale each of ``rows`` input rows gets here (float32 ``[M]``), for a
        producer that quantizes this layer's input itself (``forward_quantized``), or None
        where the quantization is more than that one static per-row scale: rotation,
        smoothing, centring, CFG-delta, integer codes or dynamic scales, or a backend
        other than ``cuda_fp8`` and the reference."""
        if not (self.fp8 and self.act_mode == "static" and not self.rotation_block
                and self.smooth_divisor is None and self.weight_sum is None
                and self.low_rank_up is None
                and not self.cfg_delta and self.backend.name in ("cuda_fp8", "reference")):
            return None
        split = self.context.cfg_active and self.cfg_wise and rows % 2 == 0
        return self._per_row(self.act_scale_by_group, rows, split).float().clamp_min(MIN_SCALE)

    def forward_quantized(
        self, q: torch.Tensor, row_scale: torch.Tensor, lead: tuple[int, ...], dtype: torch.dtype,
        activation: bool = True,
    ) -> torch.Tensor:
        """This layer on input its producer already quantized: ``q [M, K]`` e4m3 with
        ``row_scale [M]`` (``producer_row_scale``); ``lead`` and ``dtype`` are those the
        unquantized input would have had. The same GEMM ``forward`` runs after its own
        quantizer (``scaled_mm_rowwise``), then ``output_activation`` unless ``activation``
        is False (a consumer that applies it itself)."""
        weight, weight_scale = self.backend.unpack(self.packed)
        out = scaled_mm_rowwise(q, row_scale, weight, weight_scale, self.bias, dtype)
        if self.output_activation and activation:
            out = apply_output_activation(out, self.output_activation)
        return out.reshape(*lead, self.out_features)

    def forward(self, x: torch.Tensor, activation: bool = True) -> torch.Tensor:
        """The quantized linear on ``x``, then ``output_activation`` unless ``activation``
        is False (a consumer that applies it itself, as ``forward_quantized``)."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        m = x2.shape[0]
        split = self.context.cfg_active and self.cfg_wise and m % 2 == 0
        if self.act_mode == "static":
            act = self._act(self._per_row(self.act_scale_by_group, m, split), 1.0)
        else:
            row_clip = self._per_row(self.clip_ratio_by_group, m, split)
            delta = self.cfg_delta and self.context.cfg_active and m % 2 == 0
            act = self._act(None, row_clip, self.weight_sum, m // 2 if delta else 0)
        # centring, CFG-delta, the low-rank branch and the output activation: in the
        # backend's kernels where it fuses them, else around its call (serve_linear)
        # the branch's two weights are set together (LayerQuantParams), or both None
        low_rank = None
        if self.low_rank_up is not None and self.low_rank_down is not None:
            low_rank = (self.low_rank_down, self.low_rank_up)
        out = serve_linear(self.backend, x2, self.packed, act, self.bias,
                           self.output_activation if activation else "", low_rank)
        return out.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"w{self.weight_bits}a{self.act_bits}{'-fp8' if self.fp8 else ''}, "
            f"act={self.act_mode}{'-centered' if self.weight_sum is not None else ''}, "
            f"rot={self.rotation_block}, backend={self.backend.name}, "
            f"groups={self.act_scale_by_group.shape[0]}, cfg_wise={self.cfg_wise}"
            f"{', cfg_delta' if self.cfg_delta else ''}"
            f"{f', low_rank={self.low_rank_up.shape[1]}' if self.low_rank_up is not None else ''}"
            f"{', then ' + self.output_activation if self.output_activation else ''}"
        )
