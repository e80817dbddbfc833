"""The denoiser's self-attention kernel as a choice: ``sdpa``, ``fa3`` (bf16), ``fp8`` or
``fp8-long`` (e4m3 on long sequences only).

``set_attention_backend(transformer, name)`` swaps the processor of every eligible
diffusers attention module, in one of two ways:

- ``KernelAttnProcessor`` (PixArt, Latte: diffusers' ``AttnProcessor2_0``) computes the
  projections as diffusers does and calls the chosen kernel in the ``[B, S, H, D]``
  layout (no transposes). Cross-attention and masked calls (over the short text
  sequence) go to diffusers' own processor, which the new one holds as its fallback.
- The modern families' processors (FLUX's ``FluxAttnProcessor``, Wan's
  ``WanAttnProcessor``: rotary embeddings, joint text+image attention, q/k norms) end in
  ``dispatch_attention_fn(q, k, v, ..., backend=self._attention_backend)`` on
  ``[B, S, H, D]`` tensors. Rather than copy their code, ``dispatching_processor`` runs
  diffusers' own ``__call__`` with that one name bound to ``kernel_dispatch``, and sets the
  processor's ``_attention_backend`` (the field diffusers keeps for this choice) to the
  kernel's name: self-attention calls (same token count, no mask) take the kernel, the
  rest go on to diffusers' dispatcher.

``auto`` picks by measurement (docs/KERNELS.md): see ``resolve_attention_backend``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import types
from collections.abc import Callable

import torch

from trdq.kernels import fa3_attention as fa3

logger = logging.getLogger(__name__)

__all__ = [
    "ATTENTION_BACKENDS",
    "FP8_MIN_TOKENS",
    "STATIC_FP8",
    "AttentionReport",
    "KernelAttnProcessor",
    "attend_projected",
    "dispatching_processor",
    "fp8_long_attention",
    "install_attention_kernel",
    "install_attention_kernels",
    "installed_kernel",
    "kernel_dispatch",
    "projected_attention_kernel",
    "resolve_attention_backend",
    "set_attention_backend",
    "split_attention_suffix",
]

AttentionKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

#: ``fp8-long`` runs FA3 e4m3 on self-attention over at least this many tokens and SDPA on
#: shorter sequences. The e4m3 operands cost a quantization pass linear in the tokens while
#: the kernel saves time quadratic in them: at 4096-32760 tokens (PixArt-1024, FLUX, Wan
#: 480p) FP8 attention wins, at Latte-512's 1024-token frames and 16-frame temporal
#: sequences its quantization (13.8 ms a step) outweighs the kernel's gain (3 ms; H100,
#: docs/bench/latte-512-16f-fp8norot-h100.json).
FP8_MIN_TOKENS = 2048


def fp8_long_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """FA3 e4m3 where the sequence is long enough to pay (``FP8_MIN_TOKENS``), SDPA
    (cuDNN bf16) otherwise. Shapes are static inside a compiled graph, so the branch is
    settled once per graph, not per call."""
    if q.shape[1] >= FP8_MIN_TOKENS:
        return fa3.fa3_fp8_attention(q, k, v)
    return fa3.sdpa_attention(q, k, v)


#: backend name -> kernel ([B, S, H, D] in and out); ``sdpa`` leaves diffusers' processors
ATTENTION_BACKENDS: dict[str, AttentionKernel | None] = {
    "sdpa": None,
    "fa3": fa3.fa3_attention,
    "fp8": fa3.fa3_fp8_attention,
    "fp8-long": fp8_long_attention,
}
#: suffix of a bench row or eval setting name -> the attention backend it runs
SETTING_SUFFIXES = {"+fp8attn": "fp8", "+fa3attn": "fa3", "+fp8longattn": "fp8-long",
                    "+fp8staticattn": "fp8-static"}
#: FA3 e4m3 with statistics calibrated per timestep group (``trdq.nn.static_attention``):
#: not a kernel to set but one to calibrate, so ``set_attention_backend`` refuses it
STATIC_FP8 = "fp8-static"
#: what ``auto`` picks where the FA3 kernels run (``sdpa`` elsewhere). Still ``sdpa``: of
#: issue #24's quality gate, the zoo half holds (W8A8 + FP8 attention at FP accuracy and
#: >= 40 dB to FP, H100) but the attention-output half (>= 30 dB to bf16 on random
#: PixArt/Wan inputs) does not (~25.5 dB for any all-e4m3 kernel, docs/KERNELS.md), and no
#: real large model has been measured with it. ``fp8-long`` is the opt-in fast choice.
AUTO_ON_HOPPER = "sdpa"


@dataclasses.dataclass
class AttentionReport:
    """What ``set_attention_backend`` did: the backend, and which modules it swapped."""

    backend: str
    replaced: list[str] = dataclasses.field(default_factory=list)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)


def split_attention_suffix(name: str) -> tuple[str, str | None]:
    """``"w8a8+fp8attn"`` -> ``("w8a8", "fp8")``; a name without a suffix -> ``(name, None)``."""
    for suffix, backend in SETTING_SUFFIXES.items():
        if name.endswith(suffix):
            return name.removesuffix(suffix), backend
    return name, None


def resolve_attention_backend(name: str, device: torch.device | str) -> str:
    """``name`` checked against ``device``; ``auto`` resolved. An explicit FA3 backend the
    device cannot run is an error that says what is missing."""
    if name == STATIC_FP8:
        raise ValueError(f"attention backend {STATIC_FP8!r} is calibrated, not set: "
                         "trdq.nn.static_attention.calibrate_static_attention")
    if name not in ("auto", *ATTENTION_BACKENDS):
        raise ValueError(
            f"unknown attention backend {name!r}; choose auto, {', '.join(ATTENTION_BACKENDS)}"
        )
    if name == "auto":
        if AUTO_ON_HOPPER == "sdpa":  # nothing to probe (probing loads FA3's library)
            return "sdpa"
        return AUTO_ON_HOPPER if fa3.fa3_status(device)[0] else "sdpa"
    if name != "sdpa":
        runs, why = fa3.fa3_status(device)
        if not runs:
            raise RuntimeError(f"attention backend {name!r} is not available: {why}")
    return name


class KernelAttnProcessor:
    """diffusers attention processor: self-attention through ``kernel``, the rest through
    ``fallback`` (the module's previous processor)."""

    def __init__(self, kernel: AttentionKernel, fallback, label: str):
        self.kernel, self.fallback, self.label = kernel, fallback, label

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
        *args, **kwargs,
    ):
        if encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 3:
            return self.fallback(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
            )
        if getattr(attn, "fused_projections", False) and getattr(attn, "to_qkv", None) is not None:
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query = attn.to_q(hidden_states)
            key, value = attn.to_k(hidden_states), attn.to_v(hidden_states)
        return attend_projected(attn, query, key, value, self.kernel)


def attend_projected(attn, query, key, value, kernel: AttentionKernel) -> torch.Tensor:
    """Self-attention of module ``attn`` from its projections (``[B, T, heads x head_dim]``
    each) through ``kernel``, then its output projection: what ``KernelAttnProcessor``
    runs after ``to_q``/``to_k``/``to_v``, for callers that projected themselves
    (``trdq.nn.fused_block``)."""
    batch, tokens, width = query.shape
    head_dim = width // attn.heads
    shape = (batch, tokens, attn.heads, head_dim)
    out = kernel(query.view(shape), key.view(shape), value.view(shape))
    out = out.reshape(batch, tokens, attn.heads * head_dim).to(query.dtype)
    out = attn.to_out[0](out)
    return attn.to_out[1](out)


def projected_attention_kernel(attn) -> AttentionKernel | None:
    """The kernel ``attn``'s self-attention runs through when its processor is
    ``KernelAttnProcessor`` or diffusers' plain SDPA one (and nothing else happens inside
    the module: ``_ineligible``), else None: a caller that projected q/k/v itself may then
    call ``attend_projected`` with it."""
    if _ineligible(attn) is not None:
        return None
    processor = attn.processor
    if isinstance(processor, KernelAttnProcessor):
        return processor.kernel
    if type(processor).__name__ in ("AttnProcessor2_0", "FusedAttnProcessor2_0"):
        return fa3.sdpa_attention
    return None


#: the processors whose ``__call__`` ends in diffusers' ``dispatch_attention_fn``
DISPATCHING_PROCESSORS = ("FluxAttnProcessor", "WanAttnProcessor")
#: ``_attention_backend`` value -> kernel, for the dispatching processors
_DISPATCH_KERNELS: dict[str, AttentionKernel] = {}


def kernel_dispatch(
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
    enable_gqa=False, attention_kwargs=None, *, backend=None, parallel_config=None,
):
    """``dispatch_attention_fn`` as the dispatching processors see it: a self-attention call
    whose ``backend`` names one of our kernels runs that kernel, anything else (masks,
    cross-attention over the text tokens, diffusers' own backends) goes to diffusers."""
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    kernel = _DISPATCH_KERNELS.get(backend) if isinstance(backend, str) else None
    plain = (attn_mask is None and not is_causal and dropout_p == 0.0 and scale is None
             and not attention_kwargs and parallel_config is None)
    if kernel is not None and plain and key.shape == query.shape == value.shape:
        return kernel(query, key, value).to(query.dtype)
    return dispatch_attention_fn(
        query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, attention_kwargs,
        backend=None if kernel is not None else backend, parallel_config=parallel_config,
    )


@functools.cache
def _dispatching_class(cls: type) -> type:
    """A subclass of diffusers' processor ``cls`` whose ``__call__`` is the same code with
    ``dispatch_attention_fn`` bound to ``kernel_dispatch`` (same signature, so the
    attention module's keyword filtering sees what it saw before)."""
    call = cls.__call__
    scope = {**call.__globals__, "dispatch_attention_fn": kernel_dispatch}
    rebound = types.FunctionType(call.__code__, scope, call.__name__, call.__defaults__,
                                 call.__closure__)
    rebound.__kwdefaults__ = call.__kwdefaults__
    functools.update_wrapper(rebound, call)
    return type(f"Kernel{cls.__name__}", (cls,), {"__call__": rebound})


def dispatching_processor(processor, kernel: AttentionKernel, label: str):
    """A copy of diffusers' dispatching ``processor`` that sends self-attention to
    ``kernel``; the original is kept as ``.fallback`` (what ``sdpa`` restores)."""
    key = f"trdq-{label}"
    _DISPATCH_KERNELS[key] = kernel
    original = getattr(processor, "fallback", processor)
    swapped = copy.copy(original)
    original_class: type = type(original)  # typed: mypy reads type(Any) as unhashable
    swapped.__class__ = _dispatching_class(original_class)
    swapped._attention_backend = key
    swapped.fallback = original
    return swapped


def installed_kernel(attn) -> AttentionKernel | None:
    """The kernel ``install_attention_kernels`` put behind ``attn`` (None: diffusers' own)."""
    processor = getattr(attn, "processor", None)
    if isinstance(processor, KernelAttnProcessor):
        return processor.kernel
    backend = getattr(processor, "_attention_backend", None)
    if getattr(processor, "fallback", None) is not None and isinstance(backend, str):
        return _DISPATCH_KERNELS.get(backend)
    return None


def _ineligible(attn) -> str | None:
    """Why ``attn`` keeps its processor (None: it can take a kernel)."""
    if getattr(attn, "is_cross_attention", False):
        return "cross-attention"
    processor = _base_processor_name(attn.processor)
    if processor in DISPATCHING_PROCESSORS:  # diffusers' own code around the kernel
        if getattr(attn.processor, "_attention_backend", None) not in (None, *_DISPATCH_KERNELS):
            return "a diffusers attention backend is set on it"
        return None
    if processor not in ("AttnProcessor2_0", "FusedAttnProcessor2_0"):
        return f"processor {processor}"
    for part in ("spatial_norm", "group_norm", "norm_q", "norm_k", "norm_cross"):
        if getattr(attn, part, None):
            return f"has {part}"
    if getattr(attn, "residual_connection", False) or getattr(attn, "rescale_output_factor", 1.0) != 1.0:
        return "residual connection or output rescale inside the module"
    return None


def _base_processor_name(processor) -> str:
    """The diffusers processor behind ours (``fallback``), by class name."""
    return type(getattr(processor, "fallback", processor)).__name__


def install_attention_kernel(
    transformer: torch.nn.Module, kernel: AttentionKernel, label: str
) -> AttentionReport:
    """Put ``kernel`` behind every eligible self-attention module of ``transformer``."""
    return install_attention_kernels(transformer, lambda name: kernel, label)


def install_attention_kernels(
    transformer: torch.nn.Module, kernel_for: Callable[[str], AttentionKernel], label: str
) -> AttentionReport:
    """Put ``kernel_for(module name)`` behind each eligible self-attention module of
    ``transformer``: one kernel for all (``install_attention_kernel``) or one per module
    (``trdq.nn.static_attention``: each module's calibrated statistics)."""
    from diffusers.models.attention import AttentionModuleMixin
    from diffusers.models.attention_processor import Attention

    report = AttentionReport(backend=label)
    kernels: dict[int, str] = {}  # id(kernel) -> its dispatch label
    for name, module in transformer.named_modules():
        if not isinstance(module, (Attention, AttentionModuleMixin)):
            continue
        reason = _ineligible(module)
        if reason is not None:
            report.skipped[name] = reason
            continue
        kernel = kernel_for(name)
        fallback = getattr(module.processor, "fallback", module.processor)
        if type(fallback).__name__ in DISPATCHING_PROCESSORS:
            # the dispatch table is keyed by label: a kernel of its own gets a label of its own
            key = kernels.setdefault(id(kernel), label if not kernels else f"{label}:{name}")
            module.set_processor(dispatching_processor(fallback, kernel, key))
        else:
            module.set_processor(KernelAttnProcessor(kernel, fallback, label))
        report.replaced.append(name)
    return report


def set_attention_backend(
    transformer: torch.nn.Module, name: str, device: torch.device | str | None = None
) -> AttentionReport:
    """Self-attention of ``transformer`` through backend ``name`` (``auto`` resolved on
    ``device``, by default the transformer's). ``sdpa`` restores diffusers' processors."""
    if device is None:
        device = next(transformer.parameters()).device
    backend = resolve_attention_backend(name, device)
    kernel = ATTENTION_BACKENDS[backend]
    if kernel is None:
        return _restore_sdpa(transformer)
    report = install_attention_kernel(transformer, kernel, backend)
    logger.info(
        "attention backend %s on %d modules (%d kept: %s)", backend, len(report.replaced),
        len(report.skipped), ", ".join(sorted(set(report.skipped.values()))) or "-",
    )
    return report


def _restore_sdpa(transformer: torch.nn.Module) -> AttentionReport:
    report = AttentionReport(backend="sdpa")
    for name, module in transformer.named_modules():
        processor = getattr(module, "processor", None)
        fallback = getattr(processor, "fallback", None)
        if fallback is not None:
            module.set_processor(fallback)
            report.replaced.append(name)
    return report
