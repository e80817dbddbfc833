"""CPU INT8 backend: int8 activations x int8 weights through oneDNN's int8 kernels.

On AMX CPUs, 8-bit weights run oneDNN's int8 linear on a copy prepacked once in its
blocked layout (``int8_gemm``, ``ONEDNN_PREPACK``; the ``cpu_prepack`` switch,
``TRDQ_CPU_PREPACK=0``, turns it off); other widths, and every width on AVX-512 VNNI CPUs
without AMX, ``torch._int_mm``, which reorders the plain weight on every call. Both give the exact
int32 product for any M (no M > 16 restriction on CPU, unlike CUDA), so no padding is needed.

Only CPUs with those instructions get oneDNN's kernels: elsewhere ``torch._int_mm`` is a
plain loop, more than an order of magnitude slower than an fp32 GEMM of the same product.
On such CPUs (``FAST_INT_MM`` False) the integer product is computed as an fp32 GEMM of
the same integers, exact while partial sums stay below 2^24 (K <= 1040 at full scale;
beyond, within fp32 rounding) and as fast as fp32: the weights stay int8 in memory.
oneDNN's AVX2 int8 linear is faster than fp32 there but saturates its u8 x s8 int16 pair
sums: with 8-bit activations (shifted to u8 in [1, 255]) it is exact only for weights
within +-63, so an exact 8-bit product would take two of them per GEMM, which gives back
most of the gain, for a second packed weight copy: not done. 7-bit activations
(``w8a7``) are exact with any int8 weight: shifted by 64 to u8 in [1, 127], two products
sum to at most 2 x 127 x 128 < 2^15 (``U8_GEMM``). The ``cpu_int_mm`` switch
(``TRDQ_CPU_INT_MM=1`` / ``0``, ``trdq.kernels.switches``) forces either path.

4-bit weights stay packed two per byte in memory and are unpacked to int8 per call
(the GEMM itself is int8 x int8). Every integer width of ``trdq.config.INT_BITS`` is held
in int8, so the 6- and 4-bit activations of the quality ablation's lower-width presets run
through the same exact GEMM (no faster). FP8 configs are not supported here.

The activation path (CFG-delta, centring, smoothing, block Hadamard, per-token scale,
rounding) and the epilogue (``acc * act_scale[m] * weight_scale[n] + bias + mean[m] *
weight_sum[n]``) run in C when ``cpu_native`` could build its kernels (``native_int8_linear``):
one pass over x per row while it sits in L1, the GEMM, one pass over the output; compiled
models call it as one custom op with a fake implementation. That is what the profile
of the compiled step asked for: written as torch ops, even fused by Inductor, those passes
cost more than the int8 GEMM itself (docs/KERNELS.md).

Without a C compiler the same arithmetic runs as torch ops (``int8_linear_math``, also the
oracle the C path is tested against): in eager mode as one custom op
(``trdq::cpu_int8_linear``), under ``torch.compile`` as plain ATen ops that Inductor fuses
(rotating with ``hadamard_transform_factored``, two small Hadamard factors, in place of the
dense block GEMM).
"""

from __future__ import annotations

import functools
import logging
import weakref

import torch

from trdq import primitives as P
from trdq.config import INT_BITS
from trdq.kernels import cpu_native, switches
from trdq.kernels.base import (
    ActQuant,
    KernelBackend,
    apply_output_activation,
    restore_cfg_delta,
)
from trdq.kernels.oplib import define_op, linear_fake
from trdq.kernels.registry import register
from trdq.machine import INT8_DOT_ISAS, cpu_isa
from trdq.rotation import hadamard_transform, hadamard_transform_factored

__all__ = [
    "FAST_INT_MM", "ONEDNN_PREPACK", "U8_GEMM", "CpuInt8Backend", "gemm_path", "int8_gemm",
    "int8_linear_math", "int8_matmul", "native_int8_linear",
]

log = logging.getLogger(__name__)


def _fast_int_mm(forced: bool | None) -> bool:
    """Whether ``torch._int_mm`` runs oneDNN's int8 kernel on this CPU (see above), unless
    the ``cpu_int_mm`` switch forces an answer."""
    if forced is not None:
        return forced
    return cpu_isa() in INT8_DOT_ISAS


#: torch._int_mm is fast here (int8 dot-product instructions); else an fp32 GEMM of the
#: integers. Set from the kernel switches (``_apply_switches``, below), as are the next two.
FAST_INT_MM = False


@functools.cache
def _warn_no_fast_int_mm() -> None:
    log.warning("cpu_int8: this CPU has no int8 dot-product instructions (AVX-512 VNNI or "
                "AMX); 8-bit activations run as fp32 GEMMs of the same integers (fp32 speed, "
                "int8 weight memory)%s", "; the w8a7 preset (7-bit activations) runs oneDNN's "
                "int8 kernel exactly here, about 2x faster" if U8_GEMM else "")


#: the integer widths this backend serves, for messages ("4, 6, 7 or 8")
_WIDTHS = ", ".join(map(str, INT_BITS[:-1])) + f" or {INT_BITS[-1]}"


def int8_matmul(xq: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Exact ``xq [M, K] int8 @ weight [N, K] int8 ^T`` as float32 ``[M, N]``."""
    if FAST_INT_MM:
        return torch._int_mm(xq, weight.t()).to(torch.float32)
    return xq.to(torch.float32) @ weight.to(torch.float32).t()


def int8_linear_math(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    rotation_block: int,
    smooth: torch.Tensor | None = None,
    row_scale: torch.Tensor | None = None,
    clip_ratio: torch.Tensor,
    bits: int = 8,
    weight_sum: torch.Tensor | None = None,
    delta_half: int = 0,
    activation: str = "",
    low_rank_down: torch.Tensor | None = None,
    low_rank_up: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[M, K]`` x (``[N, K]`` int8 or ``[N, K/2]`` packed uint8) -> ``[M, N]`` x.dtype.

    The keywords are those of ``trdq::lowbit_linear`` (``trdq.kernels.ops``), with
    ``bits`` for the integer width. ``rotation_block`` <= 0 means no rotation; ``row_scale`` None means dynamic per-token;
    ``weight_sum`` set: centre the rows and add ``mean x weight_sum`` back; ``delta_half``
    > 0: quantize rows ``r >= delta_half`` as ``x[r] - x[r - delta_half]`` (CFG-delta) and
    return them as served, ``y_u + W d``; ``low_rank_down [R, K]`` / ``low_rank_up [N, R]``:
    the low-rank error branch ``(x down^T) up^T`` added to the served output in float32
    (trdq/low_rank.py); ``activation``: applied to the served output last.
    """
    xf = x.float()
    if delta_half:
        xf = torch.cat((xf[:delta_half], xf[delta_half:] - xf[:delta_half]))
    mean = None
    if weight_sum is not None:
        mean = xf.mean(dim=-1, keepdim=True)
        xf = xf - mean
    if smooth is not None:
        xf = xf / smooth
    if rotation_block > 0:
        # compiled: the factored form fuses into two cheap loops; eager: one BLAS GEMM
        rotate = hadamard_transform_factored if torch.compiler.is_compiling() else hadamard_transform
        xf = rotate(xf, rotation_block)
    if row_scale is None:
        a_scale = P.dynamic_row_scale(xf, bits, clip_ratio)
    else:
        a_scale = row_scale.float().clamp_min(P.MIN_SCALE)
    xq = P.quantize_symmetric(xf, a_scale[:, None], bits)
    w = P.unpack_int4(weight) if weight.dtype == torch.uint8 else weight
    out = int8_matmul(xq, w).mul_(a_scale[:, None]).mul_(weight_scale[None, :])
    if bias is not None:
        out.add_(bias.float())
    if mean is not None and weight_sum is not None:  # mean is set exactly when weight_sum is
        out.add_(mean * weight_sum.float()[None, :])
    if delta_half:  # the served cond rows: y_u + W d (restores_cfg_delta)
        out = restore_cfg_delta(out, delta_half, bias)
    if low_rank_down is not None and low_rank_up is not None:
        out = out.addmm_(x.float() @ low_rank_down.float().t(), low_rank_up.float().t())
    return apply_output_activation(out, activation).to(x.dtype)


def _positional(fn):
    """``fn`` (``int8_linear_math``'s signature) with every argument positional: the kernel
    of an operator, whose schema takes them in that order. Callers still pass keywords
    (``_keyword``); the dispatcher would parse them on every call, several microseconds."""

    def kernel(
        x: torch.Tensor,
        weight: torch.Tensor,
        weight_scale: torch.Tensor,
        bias: torch.Tensor | None,
        rotation_block: int,
        smooth: torch.Tensor | None,
        row_scale: torch.Tensor | None,
        clip_ratio: torch.Tensor,
        bits: int,
        weight_sum: torch.Tensor | None,
        delta_half: int,
        activation: str,
        low_rank_down: torch.Tensor | None,
        low_rank_up: torch.Tensor | None,
    ) -> torch.Tensor:
        return fn(x, weight, weight_scale, bias, rotation_block=rotation_block, smooth=smooth,
                  row_scale=row_scale, clip_ratio=clip_ratio, bits=bits, weight_sum=weight_sum,
                  delta_half=delta_half, activation=activation, low_rank_down=low_rank_down,
                  low_rank_up=low_rank_up)

    return kernel


def _keyword(op):
    """The operator ``op`` (made from ``_positional``) called as ``int8_linear_math`` is."""

    def call(x, weight, weight_scale, bias, *, rotation_block, smooth=None, row_scale=None,
             clip_ratio, bits=8, weight_sum=None, delta_half=0, activation="",
             low_rank_down=None, low_rank_up=None):
        return op(x, weight, weight_scale, bias, rotation_block, smooth, row_scale, clip_ratio,
                  bits, weight_sum, delta_half, activation, low_rank_down, low_rank_up)

    return call


#: The eager entry point: ``int8_linear_math`` as one dispatcher call.
cpu_int8_linear = _keyword(
    define_op("trdq::cpu_int8_linear", _positional(int8_linear_math), linear_fake)
)


def _onednn_linear_ops() -> bool:
    """Whether oneDNN's int8 linear ops exist in this torch build."""
    onednn = getattr(torch.ops, "onednn", None)
    return hasattr(onednn, "qlinear_prepack") and hasattr(onednn, "qlinear_pointwise")


#: 8-bit weights run oneDNN's prepacked int8 linear (AMX CPUs; ``cpu_prepack`` off: not).
#: Only AMX: with signed int8 activations, oneDNN on an AVX-512 VNNI CPU without AMX falls
#: back to a reference kernel (VNNI multiplies u8 x s8 only), orders of magnitude slower
#: than ``torch._int_mm``
ONEDNN_PREPACK = False
#: On CPUs without VNNI/AMX, 8-bit weights times activations of at most 7 bits run oneDNN's
#: u8 int8 linear (exact there, and faster than the fp32 GEMM of the integers);
#: ``cpu_prepack`` off: not
U8_GEMM = False


def _apply_switches(kernel_switches: switches.KernelSwitches) -> None:
    """Recompute the three GEMM choices above from the kernel switches."""
    global FAST_INT_MM, ONEDNN_PREPACK, U8_GEMM
    FAST_INT_MM = _fast_int_mm(kernel_switches.cpu_int_mm)
    onednn_allowed = kernel_switches.cpu_prepack and _onednn_linear_ops()
    ONEDNN_PREPACK = FAST_INT_MM and onednn_allowed and cpu_isa() == "AMX"
    U8_GEMM = not FAST_INT_MM and onednn_allowed


switches.on_change(_apply_switches)  # now, and whenever the server (or a test) configures them
#: the shift that makes 7-bit activations ([-63, 63]) unsigned ([1, 127]); oneDNN takes it
#: as the activations' zero point
U8_SHIFT = 64

#: (weight's data_ptr, version, shape) -> (oneDNN's blocked copy of it, ones, zeros)
_PREPACKED: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _version(t: torch.Tensor) -> int:
    """The tensor's in-place write counter; -1 for inference tensors, which keep none."""
    try:
        return t._version
    except RuntimeError:  # made under torch.inference_mode (e.g. a cache loaded there)
        return -1


def _prepacked(weight: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """oneDNN's blocked layout of an int8 ``[N, K]`` weight, made on first use and kept
    until the weight is freed (or, written in place, has a new version)."""
    key = (weight.data_ptr(), _version(weight), tuple(weight.shape))
    hit = _PREPACKED.get(key)
    if hit is None:
        n, k = weight.shape
        hit = (torch.ops.onednn.qlinear_prepack(weight, [rows, k]),
               torch.ones(n), torch.zeros(n, dtype=torch.int64))
        _PREPACKED[key] = hit
        weakref.finalize(weight, _PREPACKED.pop, key, None)
    return hit


def int8_gemm(q: torch.Tensor, weight: torch.Tensor, act_bits: int = 8) -> torch.Tensor:
    """``q [M, K] int8 @ weight [N, K] int8 ^T``, exact, as int32 or float32 ``[M, N]``;
    ``q`` holds ``act_bits``-bit integers.

    On AMX CPUs, 8-bit weights (``ONEDNN_PREPACK``) go through oneDNN's int8 linear
    on a copy of the weight prepacked once in its blocked layout: ``torch._int_mm`` takes
    the plain ``[K, N]`` matrix and reorders it on every call, a cost the prepacked copy
    pays once (docs/KERNELS.md). The copy costs one more byte per weight.
    Its float32 output (scales of 1, no zero points) is the int32 sum, rounded to float32
    only beyond 2^24. Elsewhere (``U8_GEMM``), activations of at most 7 bits go through the
    same op as unsigned bytes ``q + 64`` with zero point 64, which AVX2 multiplies without
    saturating. 4-bit weights are unpacked per call and use ``torch._int_mm``.
    """
    if weight.dtype == torch.uint8:
        weight = cpu_native.unpack_int4(weight) if cpu_native.available() else P.unpack_int4(weight)
    elif ONEDNN_PREPACK:
        return _onednn_linear(q, weight, 0)
    elif U8_GEMM and act_bits <= 7:
        # [-63, 63] -> [1, 127]: still fits int8, so the bytes are reinterpreted as they are
        return _onednn_linear(q.add(U8_SHIFT).view(torch.uint8), weight, U8_SHIFT)
    # the int32 accumulators go straight to the epilogue (int8_matmul would convert them)
    return torch._int_mm(q, weight.t()) if FAST_INT_MM else int8_matmul(q, weight)


def _onednn_linear(q: torch.Tensor, weight: torch.Tensor, zero_point: int) -> torch.Tensor:
    """oneDNN's int8 linear on the prepacked ``weight``: scales of 1 and the activations'
    ``zero_point``, so its float32 output is the exact integer product."""
    packed, ones, zeros = _prepacked(weight, q.shape[0])
    return torch.ops.onednn.qlinear_pointwise(
        q, 1.0, zero_point, packed, ones, zeros, None, 1.0, 0, torch.float32, "none", [], "")


def gemm_path() -> str:
    """How ``cpu_int8`` multiplies 8-bit weights on this CPU, for reports."""
    if ONEDNN_PREPACK:
        return "oneDNN int8 linear on prepacked weights"
    if FAST_INT_MM:
        return "torch._int_mm"
    u8 = ("; with activations of <= 7 bits (w8a7) oneDNN's u8 int8 linear on prepacked "
          "weights" if U8_GEMM else "")
    return f"fp32 GEMM of the integers (no VNNI/AMX){u8}"


def native_int8_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    rotation_block: int,
    smooth: torch.Tensor | None = None,
    row_scale: torch.Tensor | None = None,
    clip_ratio: torch.Tensor,
    bits: int = 8,
    weight_sum: torch.Tensor | None = None,
    delta_half: int = 0,
    activation: str = "",
    low_rank_down: torch.Tensor | None = None,
    low_rank_up: torch.Tensor | None = None,
) -> torch.Tensor:
    """``int8_linear_math`` through the C kernels: one pass over x (every step before the
    GEMM), the int8 GEMM, one pass over the output (rescale, bias, centring, the uncond
    rows added back to the cond rows under CFG-delta, the low-rank branch's rank-R sum on
    ``x down^T``, and the output activation).
    Compiled graphs call it as one op (``trdq::cpu_int8_native_linear``), not three: each
    dispatcher round trip is a fixed host cost, a sizeable share of a linear this small;
    eager code calls it directly."""
    q, a_scale, mean = cpu_native.rotate_quant(
        x, rotation_block=rotation_block, smooth=smooth, row_scale=row_scale,
        clip_ratio=clip_ratio, bits=bits, center=weight_sum is not None, delta_half=delta_half,
    )
    branch_x = branch_up_t = None
    if low_rank_down is not None and low_rank_up is not None:
        branch_x = x.float() @ low_rank_down.float().t()
        branch_up_t = low_rank_up.float().t().contiguous()
    return cpu_native.int8_epilogue(int8_gemm(q, weight, bits), a_scale, weight_scale, bias,
                                    mean, weight_sum, x.dtype, delta_half, activation,
                                    branch_x, branch_up_t)


#: ``native_int8_linear`` as one op: what a compiled model calls (eager calls the function).
cpu_int8_native_linear = _keyword(
    define_op("trdq::cpu_int8_native_linear", _positional(native_int8_linear), linear_fake)
)


class CpuInt8Backend(KernelBackend):
    name = "cpu_int8"
    device_types = ("cpu",)
    priority = 10
    # all three in the C passes when they are built, else in int8_linear_math's torch ops
    fuses_centering = True
    fuses_cfg_delta = True
    restores_cfg_delta = True
    # in the C epilogue (one pass over the output fewer); in torch on the fallback paths
    fused_activations = ("gelu_tanh",)
    # the low-rank error branch's sum in the C epilogue; in int8_linear_math's torch ops
    fuses_low_rank = True

    def is_available(self, device: torch.device | str) -> tuple[bool, str]:
        if torch.device(device).type != "cpu":
            return False, f"cpu_int8 runs on CPU only, not {device}"
        if not hasattr(torch, "_int_mm"):
            return False, f"torch {torch.__version__} has no torch._int_mm"
        if not FAST_INT_MM:
            _warn_no_fast_int_mm()
        return True, ""

    def supports(self, config) -> tuple[bool, str]:
        if getattr(config, "fp8", False):
            return False, "fp8 (e4m3) configs need cuda_fp8 or reference"
        if config.act_bits not in INT_BITS:
            return False, f"activations must have {_WIDTHS} bits, got {config.act_bits}"
        if config.weight_bits not in INT_BITS:
            return False, f"weights must have {_WIDTHS} bits, got {config.weight_bits}"
        if config.rotation == "duquant":
            return False, "duquant rotation (faithful preset) runs on reference only"
        return True, ""

    def pack(
        self, qweight: torch.Tensor, weight_scale: torch.Tensor, bits: int
    ) -> dict[str, torch.Tensor]:
        if qweight.dtype != torch.int8:
            raise TypeError(f"cpu_int8 packs int8 weights, got {qweight.dtype}")
        weight = P.pack_int4(qweight) if bits == 4 else qweight.contiguous()
        return {"weight": weight, "weight_scale": weight_scale.float().contiguous()}

    def unpack(self, packed: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        weight = packed["weight"]
        if weight.dtype == torch.uint8:
            weight = P.unpack_int4(weight)
        return weight, packed["weight_scale"]

    def linear(
        self,
        x: torch.Tensor,
        packed: dict[str, torch.Tensor],
        act: ActQuant,
        bias: torch.Tensor | None,
        activation: str = "",
        low_rank: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if act.bits not in INT_BITS or act.fp8:
            raise ValueError(f"cpu_int8 quantizes activations to {_WIDTHS} integer bits, "
                             f"not {'e4m3' if act.fp8 else act.bits}")
        # the C kernels when built (compiled: behind their op, opaque to dynamo; eager: called
        # directly, sparing every linear the op's dispatch); else, compiled: plain ops
        # that Inductor can fuse, eager: one custom-op call
        compiling = torch.compiler.is_compiling()
        if x.dtype in (torch.float32, torch.bfloat16) and cpu_native.available():
            fn = cpu_int8_native_linear if compiling else native_int8_linear
        elif compiling:
            fn = int8_linear_math
        else:
            fn = cpu_int8_linear
        down, up = low_rank if low_rank is not None else (None, None)
        return fn(x, packed["weight"], packed["weight_scale"], bias, **act.op_kwargs(x),
                  bits=act.bits, activation=activation, low_rank_down=down, low_rank_up=up)


register(CpuInt8Backend())
