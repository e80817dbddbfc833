"""``torch.compile`` of the denoiser (and the image VAE's decoder) in place: the server's
TRDQ_COMPILE and the ``+compile`` rows of ``trdq bench``.

Regional compilation (diffusers' ``compile_repeated_blocks``, the PyTorch regional
compilation recipe): each repeated transformer block is compiled on its own, so one
compile serves every block of a class and the timestep hook stays outside the graphs.
The blocks are found by structure, not by attribute name, because the families name
their lists differently (PixArt/SD3 ``transformer_blocks``, Latte also
``temporal_transformer_blocks``, FLUX also ``single_transformer_blocks``, Wan ``blocks``);
a denoiser with no repeated block is an error rather than a silently eager "compiled" run.
"""

from __future__ import annotations

import torch

__all__ = [
    "compile_denoiser",
    "compile_text_encoders",
    "compile_vae_decoder",
    "repeated_blocks",
    "uncompile_text_encoders",
    "uncompile_vae_decoder",
]

#: the pipeline attributes that hold text encoders (T5, CLIP, UMT5)
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")

#: VAE classes whose decoder compiles as one static graph: 2-D convolutions, no frame loop.
#: The video VAEs (Wan's causal 3-D VAE decodes frame by frame through a feature cache)
#: would graph-break or recompile per chunk, so they stay eager.
COMPILABLE_VAES = ("AutoencoderKL",)


def _raise_recompile_limits() -> None:
    # one compiled block per timestep group (QuantLinear reads the current group)
    for key in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, key):
            setattr(torch._dynamo.config, key, 64)
    if hasattr(torch._dynamo.config, "accumulated_recompile_limit"):
        torch._dynamo.config.accumulated_recompile_limit = 4096


def repeated_blocks(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    """The denoiser's repeated blocks, in model order: every entry of a ``ModuleList``
    child of the transformer, and every module whose class the model lists in diffusers'
    ``_repeated_blocks``."""
    named = set(getattr(transformer, "_repeated_blocks", None) or ())
    found: dict[int, torch.nn.Module] = {}
    for child in transformer.children():
        if isinstance(child, torch.nn.ModuleList):
            for block in child:
                found.setdefault(id(block), block)
    if named:
        for module in transformer.modules():
            if type(module).__name__ in named:
                found.setdefault(id(module), module)
    return list(found.values())


def compile_denoiser(transformer: torch.nn.Module, mode: str) -> int:
    """In-place torch.compile (default mode; max-autotune is never used in timed runs).

    ``mode`` is ``"regional"`` (each repeated block) or ``"full"`` (the whole module).
    Returns the number of modules compiled; raises ``ValueError`` when a regional compile
    finds no repeated block or the mode is unknown.
    """
    _raise_recompile_limits()
    if mode == "full":
        transformer.compile()
        return 1
    if mode != "regional":
        raise ValueError(f"unknown compile mode {mode!r}: regional or full")
    blocks = repeated_blocks(transformer)
    if not blocks:
        raise ValueError(
            f"{type(transformer).__name__} has no repeated blocks (no ModuleList child and no "
            "_repeated_blocks): compile it whole (--compile full)")
    for block in blocks:
        block.compile()
    return len(blocks)


def compile_vae_decoder(vae: torch.nn.Module) -> bool:
    """Channels-last weights and an in-place ``torch.compile`` of ``vae.decoder``.

    Why: eager, the SD VAE's 1024x1024 decode ran NCHW convolutions with GroupNorm and
    SiLU as separate passes, 91.2 ms beside a 638.9 ms compiled PixArt-1024 denoising loop;
    channels-last (cuDNN's native layout) and compiled (each norm fused with its
    activation) it took 39.0 ms (H100, one observed call each; the two changes were not
    measured apart; docs/bench/pixart-alpha-1024-fp8norot-h100.json). Returns whether it
    compiled (False for the VAE classes not in ``COMPILABLE_VAES``, left as they were).
    """
    if type(vae).__name__ not in COMPILABLE_VAES:
        return False
    _raise_recompile_limits()
    # Module.to takes memory_format (documented), torch's overloads leave it out
    vae.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    vae.get_submodule("decoder").compile()
    return True


def _uncompile(module: torch.nn.Module) -> None:
    """Undo ``module.compile()``: ``nn.Module.compile`` keeps the compiled callable in
    ``_compiled_call_impl``, and ``None`` there is the module's uncompiled state."""
    module._compiled_call_impl = None


def uncompile_vae_decoder(vae: torch.nn.Module) -> None:
    """Undo ``compile_vae_decoder`` (the bench's next row starts from the eager VAE)."""
    _uncompile(vae.get_submodule("decoder"))
    vae.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]


def _text_encoder_layers(pipe) -> list[torch.nn.Module]:
    """The layers of every ``ModuleList`` in the pipeline's text encoders whose entries
    share one class (T5's ``encoder.block``, CLIP's ``text_model.encoder.layers``)."""
    layers: list[torch.nn.Module] = []
    for attr in TEXT_ENCODERS:
        encoder = getattr(pipe, attr, None)
        if encoder is None:
            continue
        for module in encoder.modules():
            same_class = len({type(entry) for entry in module.children()}) == 1
            if isinstance(module, torch.nn.ModuleList) and len(module) > 1 and same_class:
                layers.extend(module)
    return layers


def compile_text_encoders(pipe) -> int:
    """In-place ``torch.compile`` of each text-encoder layer (regional, as the denoiser).

    Why: at batch 1 an eager T5-XXL encode is bound by the host launching its small
    kernels (PixArt-1024 on an H100: 58.6 ms for two 120-token prompts whose arithmetic
    takes a few ms; docs/journal/2026-12-07-fp8-norot-families.md). Measured alone
    (``trdq bench --profile``, H100): 19-30 ms eager against 8 ms of GPU kernels, 14-15 ms
    compiled (docs/BENCHMARKS.md, 2026-12-07 14:17). The prompts are padded to a fixed
    length, so the compiled layers see one shape per batch size. Layers already compiled
    (a text encoder shared by several served variants) are left as they are. Returns the
    number of layers compiled.
    """
    _raise_recompile_limits()
    layers = [layer for layer in _text_encoder_layers(pipe) if layer._compiled_call_impl is None]
    for layer in layers:
        layer.compile()
    return len(layers)


def uncompile_text_encoders(pipe) -> None:
    """Undo ``compile_text_encoders``."""
    for layer in _text_encoder_layers(pipe):
        _uncompile(layer)
