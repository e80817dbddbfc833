"""diffusers specifics: the denoiser, which linears to quantize, and the call plumbing.

- ``find_denoiser``: DiT pipelines keep the denoiser in ``pipe.transformer``.
- ``select_layers``: every ``nn.Linear`` of the denoiser except full-precision name
  patterns (embedders, adaLN projection; the config's plus the family's,
  ``trdq.integrations.families``) and shapes the kernels cannot take; skipped layers
  come back with a reason.
- ``wrap_pipeline_call``: CFG detection. diffusers DiT pipelines of a ``cfg_batched``
  family (PixArt, Latte, SD3) duplicate the batch as [uncond, cond] exactly when
  ``guidance_scale > 1``; we read that argument from each pipeline call (Flux and Wan
  never announce a CFG batch: see ``families``). It also gives the hook the family's
  timestep scale (Flux passes t / 1000). Special methods are looked up on the type, so the instance gets a
  per-instance subclass (same class name) whose ``__call__`` announces the call to the
  attached hooks and then runs the original ``__call__`` untouched.
- ``fuse_gelu_into_linears``: a feed-forward's GELU (tanh) moves into the quantized
  ``proj`` before it, so a backend can apply it in its GEMM epilogue.
- ``CfgSplitForward``: the released code's CFG split (faithful preset): one denoiser call
  per half.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
from typing import Any

import torch
from torch import nn

from trdq.config import QuantConfig
from trdq.integrations.families import family_of_denoiser, family_of_pipeline
from trdq.rotation import hadamard_block_size
from trdq.timestep import QuantContext, TimestepHook

logger = logging.getLogger(__name__)

__all__ = [
    "PATTERN_SKIP_REASON",
    "CfgSplitForward",
    "architecture_of",
    "find_denoiser",
    "fuse_gelu_into_linears",
    "fuse_qkv_projections",
    "rotation_block_for",
    "select_layers",
    "set_submodule",
    "wrap_pipeline_call",
]

#: start of the skip reason of a layer kept out by ``fp_layer_patterns``
PATTERN_SKIP_REASON = "full precision by pattern"

#: smallest Hadamard block worth using (a 2x2 block barely spreads an outlier)
MIN_ROTATION_BLOCK = 8


def find_denoiser(pipe: Any) -> nn.Module:
    for attr in ("transformer", "unet"):
        module = getattr(pipe, attr, None)
        if isinstance(module, nn.Module):
            return module
    if isinstance(pipe, nn.Module):
        return pipe
    raise TypeError(f"{type(pipe).__name__} has no transformer/unet denoiser to quantize")


def architecture_of(denoiser: nn.Module) -> str:
    name = type(denoiser).__name__.lower()
    for arch in ("pixart", "latte", "sana", "cogvideo", "wan", "dit"):
        if arch in name:
            return arch
    return "generic"


def rotation_block_for(in_features: int, config: QuantConfig) -> int | None:
    """Hadamard block for a width, or None when rotation is off or would be trivial."""
    if config.rotation == "none":
        return None
    block = hadamard_block_size(in_features, config.rotation_block_size)
    return block if block >= MIN_ROTATION_BLOCK else None


def select_layers(
    denoiser: nn.Module, config: QuantConfig
) -> tuple[dict[str, nn.Linear], dict[str, str]]:
    """(layers to quantize by name, skipped layer name -> reason)."""
    family = family_of_denoiser(denoiser)
    patterns = [re.compile(p) for p in (*config.fp_layer_patterns, *family.fp_layer_patterns)]
    untouched = [(re.compile(p), reason) for p, reason in family.full_precision]
    targets: dict[str, nn.Linear] = {}
    skipped: dict[str, str] = {}
    for name, module in denoiser.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        hit = next((p.pattern for p in patterns if p.search(name)), None)
        keep = next((reason for p, reason in untouched if p.search(name)), None)
        if keep is not None:
            skipped[name] = keep
        elif hit is not None:
            skipped[name] = f"{PATTERN_SKIP_REASON} {hit!r}"
        elif module.in_features < config.min_in_features:
            skipped[name] = f"in_features {module.in_features} < {config.min_in_features}"
        elif config.weight_bits == 4 and module.in_features % 2:
            skipped[name] = "odd in_features cannot be packed two 4-bit values per byte"
        else:
            targets[name] = module
    return targets, skipped


def set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _identity(hidden_states: torch.Tensor) -> torch.Tensor:
    return hidden_states


def fuse_gelu_into_linears(denoiser: nn.Module, linear_type: type[nn.Module]) -> list[str]:
    """Move each diffusers ``GELU(approximate="tanh")``'s activation into its ``proj``
    when that is a ``linear_type`` (``QuantLinear``): the layer's ``output_activation``
    becomes ``"gelu_tanh"`` and the module's ``gelu`` the identity, so the module still
    computes ``gelu(proj(x))`` while a backend with a GEMM epilogue writes the activated
    output once. Module names and state dicts are unchanged. Returns the GELU modules'
    names."""
    from diffusers.models.activations import GELU

    fused = []
    for name, module in denoiser.named_modules():
        if (isinstance(module, GELU) and module.approximate == "tanh"
                and isinstance(module.proj, linear_type)):
            # torch types Module.__setattr__'s value as Tensor | Module; any value is stored
            module.proj.output_activation = "gelu_tanh"  # type: ignore[assignment]
            module.gelu = _identity  # instance attribute: GELU.forward calls self.gelu
            fused.append(name)
    return fused


def wrap_pipeline_call(pipe: Any, hook: TimestepHook) -> None:
    """Make ``pipe(...)`` announce each call (and its CFG state) to ``hook``, and set the
    hook's timestep scale for the pipeline's family."""
    hook.timestep_multiplier = family_of_denoiser(find_denoiser(pipe)).timestep_multiplier
    hooks: list[TimestepHook] = pipe.__dict__.setdefault("_trdq_hooks", [])
    hooks.append(hook)
    cls = type(pipe)
    if getattr(cls, "_trdq_call_wrapped", False):
        return
    original_call = cls.__call__
    signature = inspect.signature(original_call)
    param = signature.parameters.get("guidance_scale")
    default_guidance = param.default if param is not None else None
    cfg_batched = family_of_pipeline(pipe).cfg_batched

    @functools.wraps(original_call)  # keeps the original signature for introspection
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        guidance = kwargs.get("guidance_scale", default_guidance)
        if "guidance_scale" not in kwargs and param is not None:
            bound = signature.bind_partial(self, *args, **kwargs)
            guidance = bound.arguments.get("guidance_scale", default_guidance)
        cfg = cfg_batched and guidance is not None and float(guidance) > 1.0
        active = list(self.__dict__.get("_trdq_hooks", []))
        for h in active:
            h.begin_call(cfg_active=cfg, scheduler=getattr(self, "scheduler", None))
        try:
            return original_call(self, *args, **kwargs)
        finally:
            for h in active:
                h.end_call()

    wrapped = type(cls.__name__, (cls,), {
        "__call__": __call__,
        "_trdq_call_wrapped": True,
        "__module__": cls.__module__,
        "__doc__": cls.__doc__,
    })
    pipe.__class__ = wrapped


def unwrap_pipeline_call(pipe: Any, hook: TimestepHook) -> None:
    hooks = pipe.__dict__.get("_trdq_hooks", [])
    if hook in hooks:
        hooks.remove(hook)


class CfgSplitForward:
    """Replace ``denoiser.forward`` so a CFG batch runs as two calls (uncond, then cond).

    Every tensor argument whose first dimension equals the batch is split; the timestep
    hook has already set the group for the outer call. ``context.branch`` tells layers
    which half runs.
    """

    def __init__(self, denoiser: nn.Module, context: QuantContext) -> None:
        self.denoiser = denoiser
        self.context = context
        self.original = denoiser.forward
        self.signature = inspect.signature(self.original)
        denoiser.forward = self  # instance attribute shadows the bound method

    def remove(self) -> None:
        if self.denoiser.__dict__.get("forward") is self:
            del self.denoiser.__dict__["forward"]

    @staticmethod
    def _half(value: Any, batch: int, index: int) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
            h = batch // 2
            return value[:h] if index == 0 else value[h:]
        if isinstance(value, dict):
            return {k: CfgSplitForward._half(v, batch, index) for k, v in value.items()}
        return value

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        bound = self.signature.bind(*args, **kwargs)
        hidden = bound.arguments.get("hidden_states")
        if not self.context.cfg_active or not isinstance(hidden, torch.Tensor):
            return self.original(*args, **kwargs)
        batch = hidden.shape[0]
        outputs = []
        try:
            for index, branch in ((0, "uncond"), (1, "cond")):
                self.context.branch = branch
                call_args = {k: self._half(v, batch, index) for k, v in bound.arguments.items()}
                outputs.append(self.original(**call_args))
        finally:
            self.context.branch = "both"
        first, second = outputs
        if hasattr(first, "sample"):
            first.sample = torch.cat((first.sample, second.sample))
            return first
        return (torch.cat((first[0], second[0])),) + tuple(first[1:])


def _fuse_plain_attention_modules(transformer: nn.Module) -> int:
    """What PixArt's ``fuse_qkv_projections`` does, for a denoiser without the method whose
    attention modules all run diffusers' plain SDPA processor (Latte): each module's
    projections fused and ``FusedAttnProcessor2_0`` set. Returns the modules fused (0, and
    nothing changed, when any module has another processor)."""
    from diffusers.models.attention_processor import (
        Attention,
        AttnProcessor2_0,
        FusedAttnProcessor2_0,
    )

    modules = [m for m in transformer.modules() if isinstance(m, Attention)]
    if not modules or any(type(m.processor) is not AttnProcessor2_0 for m in modules):
        return 0
    for module in modules:
        module.fuse_projections(fuse=True)
        module.set_processor(FusedAttnProcessor2_0())
    return len(modules)


def fuse_qkv_projections(transformer: nn.Module) -> int:
    """diffusers' fused projections (one ``to_qkv`` GEMM for self-attention, one ``to_kv``
    for cross-attention, FLUX's ``to_added_qkv`` for the text stream), with the unfused
    copies dropped so weight bytes stay honest and calibration sees no idle layers.
    One activation read and quantization, and one larger GEMM, instead of three. Exact
    (the weights are concatenated), but it renames layers, so a calibration of the unfused
    model does not apply (its fingerprint differs). Returns the attention modules fused
    (0 for a denoiser diffusers cannot fuse). Latte has no model-level method; its modules
    are fused one by one (``_fuse_plain_attention_modules``). Used by the server
    (``TRDQ_FUSE_QKV``) and by every ``trdq bench`` row."""
    from diffusers.models.attention import AttentionModuleMixin
    from diffusers.models.attention_processor import Attention

    fuse = getattr(transformer, "fuse_qkv_projections", None)
    if fuse is not None:
        fuse()
    elif not _fuse_plain_attention_modules(transformer):
        return 0
    count = 0
    for module in transformer.modules():
        if not isinstance(module, (Attention, AttentionModuleMixin)):
            continue
        if not getattr(module, "fused_projections", False):
            continue
        names = ["to_k", "to_v"] if getattr(module, "is_cross_attention", False) else ["to_q", "to_k", "to_v"]
        if getattr(module, "to_added_qkv", None) is not None:
            names += ["add_q_proj", "add_k_proj", "add_v_proj"]
        for name in names:
            setattr(module, name, None)
        count += 1
    # torch types Module.__setattr__'s value as Tensor | Module; None is stored as given
    transformer.original_attn_processors = None  # type: ignore[assignment]
    return count
