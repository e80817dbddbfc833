"""The library surface: quantize / calibrate / save / load (the report and state types and
the step-trace helpers live in ``trdq.state``, re-exported here).

Orchestration only: layer selection lives in integrations, numerics in nn/ and kernels/,
statistics in calibration, artifacts in cache. ``quantize`` returns a ``QuantReport``
saying what was replaced, what was skipped and why, bytes before and after by dtype, the
backend, the calibration id and what the cache did (e.g. ``["hit"]`` or
``["invalid", "miss"]``). ``save`` / ``load`` write and read a quantized denoiser
(``trdq.checkpoint``: its canonical weights in the cache's artifact format).
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trdq.cache import (
    CalibrationCache,
    CalibrationCacheError,
    Fingerprint,
    calibration_set_fingerprint,
    model_fingerprint,
    read_artifact,
    write_artifact,
)
from trdq.calibration import METHOD_VERSION, CalibrationResult, calibrate_pipeline, load_prompts
from trdq.checkpoint import (
    CONTENTS_CALIBRATION,
    CONTENTS_WEIGHTS,
    layer_weight_tensors,
    read_layer_weights,
)
from trdq.config import QuantConfig
from trdq.integrations import family_of_denoiser
from trdq.integrations.diffusers import (
    PATTERN_SKIP_REASON,
    CfgSplitForward,
    find_denoiser,
    fuse_gelu_into_linears,
    select_layers,
    set_submodule,
    unwrap_pipeline_call,
    wrap_pipeline_call,
)
from trdq.kernels.base import KernelBackend
from trdq.kernels.registry import select_backend
from trdq.nn.faithful import FaithfulLinear
from trdq.nn.quant_linear import QuantLinear
from trdq.nn.weight_only import WEIGHT_ONLY_INT4_GROUP, WeightOnlyLinear
from trdq.state import (
    STATE_ATTR,
    QuantReport,
    QuantState,
    add_step_listener,
    get_state,
    step_trace,
    weight_bytes_by_dtype,
)
from trdq.timestep import GroupMap, QuantContext, TimestepHook

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CALIBRATION_PROMPTS",
    "QuantReport",
    "QuantState",
    "add_step_listener",
    "calibrate",
    "calibrate_attention",
    "get_state",
    "load",
    "quantize",
    "save",
    "step_trace",
    "weight_bytes_by_dtype",
]

ZOO_PROMPTS_DIR = Path(__file__).resolve().parent / "zoo" / "calibration"
#: Artifacts calibrated ahead for the zoo pipelines (CPU, fp32, default presets), so a
#: first start of the default server needs no calibration; copied into the cache on use.
SHIPPED_CALIBRATIONS_DIR = ZOO_PROMPTS_DIR / "artifacts"
DEFAULT_CALIBRATION_PROMPTS = [
    "a red circle in the top left corner",
    "a blue square at the bottom right",
    "a green triangle in the center on a white background",
    "a small yellow star on a black background",
    "a large purple circle moving to the left",
    "two orange squares side by side",
    "a photo of a cat sitting on a sofa",
    "a mountain landscape at sunset, highly detailed",
]


def _default_prompts(pipe: Any) -> list[str]:
    name = str(getattr(getattr(pipe, "config", None), "_name_or_path", "") or "")
    candidate = ZOO_PROMPTS_DIR / f"{Path(name).name}.txt" if name else None
    if candidate is not None and candidate.is_file():
        return load_prompts(candidate)
    return list(DEFAULT_CALIBRATION_PROMPTS)


def _resolve_config(config: QuantConfig | str) -> QuantConfig:
    return QuantConfig.preset(config) if isinstance(config, str) else config


def _pick_backend(backend: str, device: torch.device, config: QuantConfig) -> KernelBackend:
    if config.faithful:
        if backend not in ("auto", "reference"):
            raise ValueError(f"preset {config.name!r} runs on the reference backend only")
        backend = "reference"
    return select_backend(backend, device, config)


def calibrate(
    pipe: Any,
    config: QuantConfig | str,
    calibration_prompts: list[str] | str | Path | None = None,
    *,
    seed: int = 0,
    progress: bool = True,
    call_kwargs: dict[str, Any] | None = None,
) -> CalibrationResult:
    """Collect statistics and search parameters on the FP pipeline (nothing is replaced)."""
    config = _resolve_config(config)
    prompts = load_prompts(calibration_prompts, _default_prompts(pipe))
    if config.calib_num_prompts and len(prompts) > config.calib_num_prompts:
        prompts = prompts[: config.calib_num_prompts]
    return calibrate_pipeline(pipe, config, prompts, seed=seed, progress=progress,
                              call_kwargs=call_kwargs)


def _apply(pipe: Any, config: QuantConfig, calib: CalibrationResult,
           backend: KernelBackend, report: QuantReport, model_fp: str,
           weights: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] | None = None,
           ) -> QuantState:
    """Swap the selected layers for quantized ones: quantized here from the float weights
    and ``calib``, or, given ``weights`` (``trdq.load``), from those canonical weights."""
    denoiser = find_denoiser(pipe)
    targets, skipped = select_layers(denoiser, config)
    report.skipped.update(skipped)
    context = QuantContext(num_groups=config.num_groups)
    layers: dict[str, nn.Module] = {}
    for name, linear in targets.items():
        if config.faithful:
            fp = calib.faithful[name]
            new: nn.Module = FaithfulLinear(linear, fp.smooth_by_range, fp.rotations, context,
                                            config.weight_bits, config.act_bits)
        elif weights is not None:
            device = linear.weight.device
            qweight, weight_scale, weight_sum = weights[name]
            new = QuantLinear.from_quantized(
                qweight.to(device), weight_scale.to(device), linear.bias, calib.params[name],
                backend, context,
                weight_bits=config.weight_bits, act_bits=config.act_bits, fp8=config.fp8,
                act_mode=config.act_mode, cfg_wise=config.cfg_wise,
                weight_sum=None if weight_sum is None else weight_sum.to(device),
                cfg_delta=config.cfg_delta,
            )
        else:
            new = QuantLinear.from_linear(
                linear, calib.params[name], backend, context,
                weight_bits=config.weight_bits, act_bits=config.act_bits, fp8=config.fp8,
                act_mode=config.act_mode, cfg_wise=config.cfg_wise,
                act_center=config.act_center, cfg_delta=config.cfg_delta,
            )
        set_submodule(denoiser, name, new)
        layers[name] = new
    report.replaced = sorted(layers)
    fuse_gelu_into_linears(denoiser, QuantLinear)
    report.weight_only = _weight_only_conditioning(denoiser, config, report.skipped)
    hook = TimestepHook(GroupMap(tuple(config.boundaries())), context).attach(denoiser)
    wrap_pipeline_call(pipe, hook)
    split = CfgSplitForward(denoiser, context) if config.cfg_split else None
    state = QuantState(config, context, hook, backend, layers, calib, report, split, model_fp)
    setattr(denoiser, STATE_ATTR, state)
    return state


def _weight_only_conditioning(
    denoiser: nn.Module, config: QuantConfig, skipped: dict[str, str]
) -> list[str]:
    """Give the pattern-kept linears (embedders, adaLN, caption projection) weight-only
    integer weights: ``config.modulation_weight_bits`` for the family's per-block adaLN
    projections, ``config.embedder_weight_bits`` for the rest (None: full precision);
    returns their names and takes them out of ``skipped``."""
    modulation = [re.compile(p) for p in family_of_denoiser(denoiser).block_modulation_patterns]
    done = []
    for name, reason in list(skipped.items()):
        module = denoiser.get_submodule(name)
        if not reason.startswith(PATTERN_SKIP_REASON) or not isinstance(module, nn.Linear):
            continue
        per_block = any(p.search(name) for p in modulation)
        bits = config.modulation_weight_bits if per_block else config.embedder_weight_bits
        if bits is None:
            continue
        group = None if bits == 8 else WEIGHT_ONLY_INT4_GROUP
        if group is not None and module.in_features % group:
            continue
        set_submodule(denoiser, name, WeightOnlyLinear(module, bits, group).to(module.weight.device))
        del skipped[name]
        done.append(name)
    return done


def _manifest_extra(config: QuantConfig, calib: CalibrationResult, prompts: list[str],
                    seed: int, layer_names: list[str]) -> dict[str, Any]:
    return {
        "config": config.to_dict(),
        "calibration_seconds": calib.seconds,
        "num_prompts": len(prompts),
        "seed": seed,
        "layers": layer_names,
        "groups_seen": calib.groups_seen,
        "contents": CONTENTS_CALIBRATION,
    }


def _from_artifact(tensors: dict[str, torch.Tensor], layer_names: list[str],
                   config: QuantConfig, weights_saved: bool = False) -> CalibrationResult:
    """Rebuild and shape-check; raises ValueError/KeyError for a mismatched artifact.
    ``weights_saved``: the layers' weights are in it (``save``), so the calibrated weight
    clip and rounding, which made them, are not."""
    calib = CalibrationResult.from_tensors(
        tensors, layer_names, config.faithful,
        weight_clip=config.weight_clip_search and not weights_saved,
        weight_q=config.weight_rounding == "gptq" and not weights_saved,
        low_rank=config.low_rank > 0,
    )
    for name, p in calib.params.items():
        if tuple(p.act_scale_by_group.shape) != (config.num_groups, 2):
            raise ValueError(f"{name}: act scales shaped {tuple(p.act_scale_by_group.shape)}")
    return calib


def quantize(
    pipe: Any,
    config: QuantConfig | str,
    cache_dir: str | Path | None = None,
    backend: str = "auto",
    calibration_prompts: list[str] | str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
    recalibrate_on_invalid: bool = True,
    call_kwargs: dict[str, Any] | None = None,
) -> QuantReport:
    """Quantize ``pipe``'s denoiser in place (loading or building the calibration)."""
    start = time.perf_counter()
    config = _resolve_config(config)
    denoiser = find_denoiser(pipe)
    if getattr(denoiser, STATE_ATTR, None) is not None:
        raise RuntimeError("this pipeline is already quantized")
    report = QuantReport(config_name=config.name, backend=None, config=config.to_dict(),
                         bytes_before=weight_bytes_by_dtype(denoiser))
    if not config.enabled:
        report.bytes_after = dict(report.bytes_before)
        report.total_seconds = time.perf_counter() - start
        return report
    device = next(denoiser.parameters()).device
    kernel = _pick_backend(backend, device, config)
    report.backend = kernel.name
    prompts = load_prompts(calibration_prompts, _default_prompts(pipe))
    if config.calib_num_prompts and len(prompts) > config.calib_num_prompts:
        prompts = prompts[: config.calib_num_prompts]
    targets, _ = select_layers(denoiser, config)
    layer_names = sorted(targets)
    fingerprint = Fingerprint(
        model=model_fingerprint(denoiser),
        config=config.config_hash(),
        calibration=calibration_set_fingerprint(prompts, seed),
        method=METHOD_VERSION,
    )
    report.calibration_id = fingerprint.id

    def run() -> CalibrationResult:
        calib = calibrate_pipeline(pipe, config, prompts, seed=seed, progress=progress,
                                   call_kwargs=call_kwargs)
        report.calibration_seconds = calib.seconds
        return calib

    if cache_dir is None:
        calib = run()
        report.cache = ["disabled"]
    else:
        cache = CalibrationCache(cache_dir)
        with cache.lock(fingerprint):
            cache.seed_from(SHIPPED_CALIBRATIONS_DIR, fingerprint)
            loaded = cache.load(fingerprint)
            calib = None
            if loaded.status == "hit":
                try:
                    calib = _from_artifact(loaded.tensors, layer_names, config)
                    report.cache = ["hit"]
                    report.calibration_seconds = float(loaded.manifest.get("calibration_seconds", 0))
                except (KeyError, ValueError) as exc:
                    loaded.status, loaded.reason = "invalid", f"contents mismatch: {exc}"
            if calib is None:
                if loaded.status == "invalid":
                    report.cache.append("invalid")
                    report.cache_reason = loaded.reason
                    if not recalibrate_on_invalid:
                        raise CalibrationCacheError(
                            f"calibration artifact {fingerprint.id} in {cache.root} is invalid "
                            f"({loaded.reason}) and recalibration is disabled"
                        )
                report.cache.append("miss")
                calib = run()
                cache.save(fingerprint, calib.to_tensors(),
                           _manifest_extra(config, calib, prompts, seed, layer_names))
    assert calib is not None  # every branch above loads it, calibrates or raises
    _apply(pipe, config, calib, kernel, report, fingerprint.model)
    report.bytes_after = weight_bytes_by_dtype(denoiser)
    report.total_seconds = time.perf_counter() - start
    logger.info(
        "quantized %s with %s on %s: %d layers replaced, %d skipped, weights %d -> %d bytes, "
        "cache %s", type(denoiser).__name__, config.name, kernel.name, len(report.replaced),
        len(report.skipped), report.weight_bytes_before, report.weight_bytes_after, report.cache,
    )
    return report


def save(pipe: Any, directory: str | Path) -> Path:
    """Write the quantized denoiser of ``pipe`` (a pipeline or the denoiser itself) to
    ``directory``: its config, calibration and every quantized layer's canonical weights
    (``trdq.checkpoint``), in the cache's artifact format. ``load`` rebuilds it on any
    backend without calibrating."""
    state = get_state(pipe)
    if state is None:
        raise ValueError("pipeline is not quantized (call trdq.quantize first)")
    if state.padded_heads:
        raise ValueError("save the denoiser before padding its attention heads "
                         "(trdq.nn.padded_heads: a run-time layout the model's own "
                         "layers would not load)")
    config, calibrated = state.config, state.calibration
    names = sorted(state.layers)
    calib = CalibrationResult(faithful=calibrated.faithful, seconds=calibrated.seconds,
                              timesteps=calibrated.timesteps, groups_seen=calibrated.groups_seen)
    weights: dict[str, torch.Tensor] = {}
    if not config.faithful:
        for name in names:
            layer = state.layers[name]
            assert isinstance(layer, QuantLinear)  # non-faithful configs make only these
            # the activation parameters it serves with; the weight clip and rounding are
            # in its saved weights
            calib.params[name] = layer.quant_params()
            weights.update(layer_weight_tensors(name, layer, config))
    fp = Fingerprint(model=state.model_fingerprint or "(unknown)", config=config.config_hash(),
                     calibration=state.report.calibration_id or "", method=METHOD_VERSION)
    extra = _manifest_extra(config, calib, [], -1, names)
    extra["contents"] = CONTENTS_WEIGHTS if weights else CONTENTS_CALIBRATION
    extra["denoiser"] = type(find_denoiser(pipe)).__name__
    path = write_artifact(Path(directory), fp, {**calib.to_tensors(), **weights}, extra)
    logger.info("saved %d quantized layers (%s) to %s", len(names), extra["contents"], path)
    return path


def load(pipe: Any, directory: str | Path, backend: str = "auto", *,
         check_model: bool = True) -> QuantReport:
    """Quantize ``pipe`` (a pipeline or its denoiser, built from the same weights as the
    one saved) from ``directory``, written by ``save`` or by the calibration cache, with
    no calibration run: the saved canonical weights are packed for ``backend``; a
    calibration-only artifact quantizes the model's float weights with it.

    Raises ``CalibrationCacheError`` naming what is wrong for a missing, truncated or
    corrupted artifact, for one saved from a different model (its fingerprint; pass
    ``check_model=False`` to load one anyway, e.g. into the same weights in another
    dtype) and for contents that do not fit the model or the config.
    """
    start = time.perf_counter()
    loaded = read_artifact(Path(directory))
    if loaded.status != "hit":
        raise CalibrationCacheError(f"cannot load {directory}: {loaded.status} {loaded.reason}")
    manifest = loaded.manifest
    try:
        config = QuantConfig.from_dict(manifest["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CalibrationCacheError(f"cannot load {directory}: bad config ({exc})") from exc
    denoiser = find_denoiser(pipe)
    if getattr(denoiser, STATE_ATTR, None) is not None:
        raise RuntimeError("this pipeline is already quantized")
    model_fp = model_fingerprint(denoiser)
    saved_fp = (manifest.get("fingerprints") or {}).get("model")
    if check_model and saved_fp not in (None, "(saved)", "(unknown)") and saved_fp != model_fp:
        raise CalibrationCacheError(
            f"cannot load {directory}: it was saved from a different model (weights "
            f"fingerprint {str(saved_fp)[:12]}..., this {type(denoiser).__name__} has "
            f"{model_fp[:12]}...); load it into a pipeline built from the same folder and "
            "dtype, or pass check_model=False")
    report = QuantReport(config_name=config.name, backend=None, config=config.to_dict(),
                         bytes_before=weight_bytes_by_dtype(denoiser), cache=["hit"],
                         calibration_id=(manifest.get("fingerprints") or {}).get("calibration"))
    kernel = _pick_backend(backend, next(denoiser.parameters()).device, config)
    report.backend = kernel.name
    targets, _ = select_layers(denoiser, config)
    names = sorted(targets)
    saved_names = manifest.get("layers")
    if isinstance(saved_names, list) and saved_names != names:
        missing = sorted(set(names) - set(saved_names))
        unknown = sorted(set(saved_names) - set(names))
        raise CalibrationCacheError(
            f"cannot load {directory}: its layers do not match the model's (not saved: "
            f"{missing[:3]}, not in the model: {unknown[:3]})")
    try:
        weights_saved = manifest.get("contents") == CONTENTS_WEIGHTS
        calib = _from_artifact(loaded.tensors, names, config, weights_saved)
        weights = None
        if weights_saved:
            weights = {name: read_layer_weights(loaded.tensors, name, targets[name], config)
                       for name in names}
    except (KeyError, ValueError) as exc:
        raise CalibrationCacheError(f"cannot load {directory}: contents mismatch: {exc}") from exc
    _apply(pipe, config, calib, kernel, report, model_fp, weights)
    report.bytes_after = weight_bytes_by_dtype(denoiser)
    report.total_seconds = time.perf_counter() - start
    logger.info("loaded %s from %s onto %s: %d layers (%s)", config.name, directory,
                kernel.name, len(report.replaced), manifest.get("contents", CONTENTS_CALIBRATION))
    return report


def calibrate_attention(
    pipe: Any,
    calibration_prompts: list[str] | str | Path | None = None,
    *,
    seed: int = 0,
    call_kwargs: dict[str, Any] | None = None,
    kernel: Any = None,
) -> int:
    """Static FP8 attention for a pipeline ``quantize`` has quantized: record the Q/K/V
    statistics of its self-attention per timestep group and CFG half over the calibration
    prompts (run as the quantized config's calibration runs them: size, steps, guidance;
    ``call_kwargs`` override), then give every eligible module FA3 e4m3 with them
    (``trdq.nn.static_attention``; ``kernel``: another e4m3 kernel taking ``stats=``, e.g.
    ``fp8_attention_reference`` where FA3 does not run). Returns how many modules.

    Not cached with the calibration: one pass of the calibration prompts through the
    quantized pipeline, seconds on a GPU."""
    from trdq.integrations.pipeline_args import calibration_call_kwargs
    from trdq.nn.static_attention import calibrate_static_attention

    state = get_state(pipe)
    if state is None:
        raise ValueError("calibrate_attention needs a pipeline quantized by trdq.quantize")
    config = state.config
    prompts = load_prompts(calibration_prompts, _default_prompts(pipe))
    if config.calib_num_prompts and len(prompts) > config.calib_num_prompts:
        prompts = prompts[: config.calib_num_prompts]
    kwargs = {**calibration_call_kwargs(pipe, config), **(call_kwargs or {})}
    size = max(1, config.calib_batch_size)

    def run() -> None:
        for i in range(0, len(prompts), size):
            generator = torch.Generator(device="cpu").manual_seed(seed + i // size)
            pipe(prompt=prompts[i : i + size], generator=generator, **kwargs)

    kernels = calibrate_static_attention(find_denoiser(pipe), run, state.context, kernel)
    return len(kernels)


def dequantize_hooks(pipe: Any) -> None:
    """Detach the timestep hook and call wrapper (layers stay quantized)."""
    state = get_state(pipe)
    if state is None:
        return
    state.hook.detach()
    unwrap_pipeline_call(pipe, state.hook)
    if state.cfg_split is not None:
        state.cfg_split.remove()
