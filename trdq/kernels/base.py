"""The contract every kernel backend implements.

Notation (as in nunchaku's kernel wrappers): M rows of activations (tokens x batch,
flattened with the batch dimension outermost), K input channels, N output channels.

Conventions every backend follows (see trdq/rotation.py and trdq/primitives.py):

- Weights reach ``pack`` already smoothed, rotated and quantized: ``qweight`` is
  ``[N, K]`` int8 holding symmetric integers in ``[-(2^(b-1)-1), 2^(b-1)-1]`` (for the
  fp8 preset it is ``torch.float8_e4m3fn``) and ``weight_scale`` is ``[N]`` float32, so
  ``W_rot ~= qweight * weight_scale[:, None]``.
- Rotation is block-diagonal normalized Hadamard on the K axis, block size
  ``act.rotation_block`` (a power of two dividing K). It is symmetric and orthogonal,
  so ``x W^T = (x R)(W R)^T``; the weight side is folded offline, the activation side
  is applied online by the backend.
- Smoothing: ``x / act.smooth_divisor`` (per K channel) before rotation; the weights
  were multiplied by the same vector offline.
- Activation quantization is symmetric: static mode uses ``act.row_scale`` ([M], one
  scale per row, already chosen per timestep group and per CFG half); dynamic mode uses
  ``absmax(row) * act.clip_ratio / qmax`` per row (per token).
- Centring (dynamic mode, ``act.weight_sum`` set): only on backends with
  ``fuses_centering``; they subtract each row's mean before smoothing and add
  ``mean x act.weight_sum`` to the output. Elsewhere ``serve_linear`` does it around the call.
- CFG-delta (dynamic mode, ``act.cfg_delta_half`` > 0): only on backends with
  ``fuses_cfg_delta``; they quantize each row ``r >= cfg_delta_half`` as
  ``x[r] - x[r - cfg_delta_half]`` before anything else (centring included) and return
  those rows as ``W d + b``, or, with ``restores_cfg_delta``, as served, ``y_u + W d``.
  Elsewhere ``serve_linear`` subtracts before the call and adds the uncond output back after.

``KernelBackend.linear`` does: smooth -> rotate -> quantize -> low-bit GEMM -> rescale
(+ bias), and returns ``[M, N]`` in the dtype of ``x``; it receives only what the backend
declares it fuses. ``serve_linear(backend, ...)`` is the whole layer: it takes an
``ActQuant`` with everything the layer asks for (centring, CFG-delta, an output
activation) and does around ``backend.linear`` what that backend does not fuse.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pragma: no cover - typing only
    from trdq.config import QuantConfig

__all__ = [
    "OUTPUT_ACTIVATIONS",
    "ActQuant",
    "BackendUnavailableError",
    "KernelBackend",
    "apply_output_activation",
    "check_output_activation",
    "restore_cfg_delta",
    "serve_linear",
]


#: activations a layer may apply to its served output ("" = none): a backend lists those
#: it applies in its GEMM epilogue (``fused_activations``). GELU (tanh) is the
#: feed-forward activation of PixArt and Latte; fused, the [M, 4K] bf16 output is written
#: once instead of written, read by Inductor's GELU kernel and written again.
OUTPUT_ACTIVATIONS = ("", "gelu_tanh")


def check_output_activation(name: str) -> None:
    if name not in OUTPUT_ACTIVATIONS:
        raise ValueError(f"epilogue activation must be one of {OUTPUT_ACTIVATIONS}, got {name!r}")


def apply_output_activation(out: torch.Tensor, name: str) -> torch.Tensor:
    """``name`` applied to a served output: what a GEMM epilogue computes, done in torch
    (the oracle, the ops' reference paths, serve_linear around a backend that cannot)."""
    check_output_activation(name)
    return torch.nn.functional.gelu(out, approximate="tanh") if name == "gelu_tanh" else out


def restore_cfg_delta(
    out: torch.Tensor, half: int, bias: torch.Tensor | None
) -> torch.Tensor:
    """CFG-delta outputs ``[y_u; W d + b]`` -> the served ``[y_u; y_u + W d]``. Out of
    place on purpose: Inductor fuses it into the epilogue before it, where an in-place
    slice addition is a separate, much slower pass (docs/journal/kernels-2026-11.md)."""
    y_d = out[half:] - bias.to(out.dtype) if bias is not None else out[half:]
    return torch.cat((out[:half], out[:half] + y_d))


class BackendUnavailableError(RuntimeError):
    """A named backend cannot run here; the message says what is missing."""


@dataclass(frozen=True)
class ActQuant:
    """How one call quantizes its activations.

    Built by QuantLinear for every forward from the current timestep group and CFG
    layout. Tensors here are small (``[K]`` or ``[M]``) and live on x's device.
    """

    bits: int = 8
    #: block size of the block-diagonal Hadamard on K, or None for no rotation
    rotation_block: int | None = None
    #: per-input-channel divisor ``[K]`` (SmoothQuant), or None
    smooth_divisor: torch.Tensor | None = None
    #: static mode: one scale per row ``[M]`` (float32); None means dynamic per-token
    row_scale: torch.Tensor | None = None
    #: dynamic mode: fraction of the per-token absmax mapped to qmax; one value, or one
    #: per row ``[M]`` (each CFG half its own, in one launch, read on the device)
    clip_ratio: float | torch.Tensor = 1.0
    #: e4m3 activations (fp8 preset) instead of symmetric integers
    fp8: bool = False
    #: centring fused into the kernels: ``[N]`` row sums of the effective weight (the
    #: backend centres each activation row and adds ``row mean x weight_sum``), or None
    weight_sum: torch.Tensor | None = None
    #: CFG-delta fused into the kernels: the rows are [uncond; cond] halves of this many
    #: rows, and the backend quantizes each cond row as its difference from the paired
    #: uncond row (saves a pass over [M, K]); 0 = off
    cfg_delta_half: int = 0

    @property
    def static(self) -> bool:
        return self.row_scale is not None

    def op_kwargs(self, x: torch.Tensor) -> dict:
        """This quantization as the keywords every kernel op takes for ``[M, K]`` rows ``x``
        (``trdq.kernels.ops``, ``cpu_int8``, ``cpu_native``): ``rotation_block`` (0 = none),
        ``smooth``, ``row_scale``, ``clip_ratio`` (float32 ``[M]``), ``weight_sum``,
        ``delta_half``. The activation format (``bits`` or ``fp8``) and the epilogue's
        ``activation`` are the backend's to add: each op names its format its own way."""
        return {
            "rotation_block": self.rotation_block or 0,
            "smooth": self.smooth_divisor,
            "row_scale": self.row_scale,
            "clip_ratio": self.row_clip(x.shape[0], x.device),
            "weight_sum": self.weight_sum,
            "delta_half": self.cfg_delta_half,
        }

    def row_clip(self, rows: int, device: torch.device) -> torch.Tensor:
        """The clip ratio as a float32 ``[M]`` tensor (what the kernels' ops take)."""
        clip = self.clip_ratio
        if isinstance(clip, torch.Tensor):
            return clip.to(device, torch.float32).reshape(-1).expand(rows).contiguous()
        return torch.full((rows,), float(clip), device=device, dtype=torch.float32)


class KernelBackend(abc.ABC):
    """A quantized-linear implementation registered under ``name``.

    Subclasses set ``name``; ``device_types`` and ``priority`` drive ``backend="auto"``
    (highest priority among the available backends that support the config wins).
    """

    name: str = ""
    #: device types ("cpu", "cuda") this backend can run on
    device_types: tuple[str, ...] = ()
    #: auto-selection priority; the reference backend is 0 (last resort)
    priority: int = 0
    #: whether ``linear`` takes ``act.weight_sum`` (centring inside the kernels)
    fuses_centering: bool = False
    #: whether ``linear`` takes ``act.cfg_delta_half`` (the CFG-delta subtraction inside
    #: the kernels)
    fuses_cfg_delta: bool = False
    #: with ``fuses_cfg_delta``: whether ``linear`` also adds the uncond output back (returns
    #: the served cond rows ``y_u + W d`` rather than ``W d + b``)
    restores_cfg_delta: bool = False
    #: output activations ``linear`` applies in its epilogue when given
    #: ``activation=<name>`` (the served output, after any CFG restore); ``serve_linear``
    #: applies the others itself
    fused_activations: tuple[str, ...] = ()
    #: whether ``linear`` takes ``low_rank=(down [R, K], up [N, R])`` and adds the low-rank
    #: error branch ``(x down^T) up^T`` to the served output before any activation
    #: (trdq/low_rank.py); ``serve_linear`` adds it itself otherwise
    fuses_low_rank: bool = False

    @abc.abstractmethod
    def is_available(self, device: torch.device | str) -> tuple[bool, str]:
        """Whether this backend runs on ``device``; the reason says what is missing."""

    def supports(self, config: QuantConfig) -> tuple[bool, str]:
        """Whether this backend implements ``config`` (bits, formats, modes)."""
        return True, ""

    @abc.abstractmethod
    def pack(
        self, qweight: torch.Tensor, weight_scale: torch.Tensor, bits: int
    ) -> dict[str, torch.Tensor]:
        """Turn quantized weights into backend storage; the values become buffers."""

    @abc.abstractmethod
    def unpack(self, packed: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Inverse of ``pack``: ``(qweight [N, K] int8 or e4m3, weight_scale [N] fp32)``."""

    @abc.abstractmethod
    def linear(
        self,
        x: torch.Tensor,
        packed: dict[str, torch.Tensor],
        act: ActQuant,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        """``[M, K]`` activations -> ``[M, N]`` outputs in x's dtype. ``act`` carries centring
        and CFG-delta only where this backend declares them fused; backends listing
        ``fused_activations`` also take ``activation=<name>``, those with
        ``fuses_low_rank`` ``low_rank=(down, up)``. Layers call
        ``serve_linear``, which does the rest around this call."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r}>"


def serve_linear(
    backend: KernelBackend,
    x: torch.Tensor,
    packed: dict[str, torch.Tensor],
    act: ActQuant,
    bias: torch.Tensor | None,
    activation: str = "",
    low_rank: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The whole quantized linear on ``backend``: ``[M, K]`` -> the served ``[M, N]``.

    ``act`` carries everything the layer asks for; what ``backend`` fuses
    (``fuses_centering``, ``fuses_cfg_delta``, ``restores_cfg_delta``,
    ``fused_activations``) reaches its ``linear``, the rest is done here around the call:

    - CFG-delta: the cond rows become ``x_c - x_u`` before the call and the uncond output is
      added back after (``restore_cfg_delta``). The kernels difference the rows before
      centring them, so the subtraction is fused only where no centring is left to do here.
    - centring: the row mean is subtracted before the call and ``mean x weight_sum`` added
      after.
    - ``low_rank`` (``(down [R, K], up [N, R])``, the error branch of trdq/low_rank.py):
      ``(x down^T) up^T`` added to the served output, in the backend's epilogue when it
      fuses it and its output is the served one, else here (in place, in x's dtype).
    - ``activation``: in the backend's epilogue when it fuses it and its output is the
      served one (no centring, restore or branch follows), else applied here last.

    The backend's capabilities are read only when ``act`` needs them.
    """
    weight_sum, half = act.weight_sum, act.cfg_delta_half
    if weight_sum is None and not half:
        epilogue = _epilogue(backend, activation, low_rank, served=True)
        out = backend.linear(x, packed, act, bias, **epilogue)
        return _finish(out, x, activation, low_rank, epilogue)
    served_x = x
    fuse_sum = weight_sum is not None and backend.fuses_centering
    fuse_delta = bool(half) and backend.fuses_cfg_delta and (weight_sum is None or fuse_sum)
    if half and not fuse_delta:  # [uncond; cond - uncond]: one GEMM serves both halves
        x = torch.cat((x[:half], x[half:] - x[:half]))
    center = None
    if weight_sum is not None and not fuse_sum:
        center = x.mean(dim=-1, keepdim=True)
        x = x - center
    if center is not None or (half and not fuse_delta):
        act = ActQuant(
            bits=act.bits, rotation_block=act.rotation_block,
            smooth_divisor=act.smooth_divisor, row_scale=act.row_scale,
            clip_ratio=act.clip_ratio, fp8=act.fp8,
            weight_sum=weight_sum if fuse_sum else None,
            cfg_delta_half=half if fuse_delta else 0,
        )
    restore_here = bool(half) and not (fuse_delta and backend.restores_cfg_delta)
    epilogue = _epilogue(backend, activation, low_rank,
                         served=center is None and not restore_here)
    out = backend.linear(x, packed, act, bias, **epilogue)
    if center is not None and weight_sum is not None:  # center is set only with weight_sum
        out = out + center.to(out.dtype) * weight_sum.to(out.dtype)
    if restore_here:
        out = restore_cfg_delta(out, half, bias)
    return _finish(out, served_x, activation, low_rank, epilogue)


def _epilogue(backend: KernelBackend, activation: str,
              low_rank: tuple[torch.Tensor, torch.Tensor] | None, served: bool) -> dict:
    """``linear``'s extra keywords, where what it returns is the served output: the
    low-rank branch, when the backend adds it, and the output activation, when the backend
    applies it and no branch is left to add after it."""
    if not served:
        return {}
    extra: dict = {}
    if low_rank is not None:
        if not backend.fuses_low_rank:
            return extra  # added by _finish, so the activation waits for it there
        extra["low_rank"] = low_rank
    if activation and activation in backend.fused_activations:
        extra["activation"] = activation
    return extra


def _finish(out: torch.Tensor, x: torch.Tensor, activation: str,
            low_rank: tuple[torch.Tensor, torch.Tensor] | None, epilogue: dict) -> torch.Tensor:
    """What the backend's epilogue left of the served output: the branch, the activation."""
    if low_rank is not None and "low_rank" not in epilogue:
        down, up = low_rank
        # in place, one pass over the output: a new [M, N] result is a fresh allocation
        # (at the zoo video model's 65536 x 256 on the CPU, AMD EPYC, glibc defaults:
        # 22.6 ms against 2.9 in place; trdq/runtime/host_memory.py)
        out = out.addmm_(x @ down.to(x.dtype).t(), up.to(x.dtype).t())
    return out if "activation" in epilogue else apply_output_activation(out, activation)
