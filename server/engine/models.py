"""Load, quantize and warm the served pipelines (runs on the engine's worker thread).

For each enabled model (image, video) the pipeline is loaded once; each precision in
TRDQ_QUANT gets its own denoiser (the full-precision one for `fp`, a TR-DQ-quantized
copy otherwise) while the text encoder, VAE and scheduler config are shared.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch

from server.engine.remote_metrics import MetricsRecorder
from server.errors import ModelUnavailableError
from server.metrics import Metrics
from server.settings import Settings
from trdq.kernels import switches as kernel_switches
from trdq.machine import cpu_has_native_bf16
from trdq.pipeline import (
    default_dtype,
    default_size,
    frame_step,
    load_pipeline,
    max_frames,
    min_inference_steps,
    pipeline_task,
    pipeline_weight_bytes,
    size_multiple,
)
from trdq.runtime.profiling import PipelineProfiler

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class ModelCard:
    """What the HTTP side needs to know of a served variant (validation, /info): plain,
    picklable values, so a worker process can send it to the server process."""

    name: str
    task: str
    quant: str
    default_width: int
    default_height: int
    max_frames: int
    min_steps: int
    #: width and height must be multiples of this (VAE factor x patch size)
    size_multiple: int
    #: frame counts are 1 + k * frame_step (Wan: 4)
    frame_step: int = 1
    #: the pipeline completes partial shapes captions from the seed (the embedded models)
    completes_captions: bool = False
    info: dict = field(default_factory=dict)


@dataclass(kw_only=True)
class ServedModel(ModelCard):
    """One pipeline variant the engine can run."""

    pipe: Any
    profiler: PipelineProfiler
    group_of: Callable[[float | None], str] = lambda timestep: "0"

    def card(self) -> ModelCard:
        return ModelCard(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ModelCard)})


M = TypeVar("M", bound=ModelCard)


@dataclass
class ModelSet(Generic[M]):
    by_task_and_quant: dict[tuple[str, str], M]
    default_quant: str

    def get(self, task: str, quant: str | None) -> M:
        key = (task, quant or self.default_quant)
        if key not in self.by_task_and_quant:
            available = sorted(q for t, q in self.by_task_and_quant if t == task)
            if not available:
                raise ModelUnavailableError(f"this server serves no {task} model")
            raise ModelUnavailableError(
                f"precision {key[1]!r} is not loaded for {task}; loaded: {', '.join(available)}"
            )
        return self.by_task_and_quant[key]

    def all(self) -> list[M]:
        return list(self.by_task_and_quant.values())

    def cards(self) -> ModelSet[ModelCard]:
        return ModelSet(
            {key: model.card() if isinstance(model, ServedModel) else model
             for key, model in self.by_task_and_quant.items()},
            self.default_quant,
        )


def configure_kernels(settings: Settings) -> dict[str, Any]:
    """Apply the kernel switches (TRDQ_CPU_NATIVE, TRDQ_CPU_INT_MM, TRDQ_CPU_PREPACK,
    TRDQ_GEMM_TMA, TRDQ_NATIVE_CACHE) to the process, before any model is built; returns
    what they resolve to here, for /info."""
    changes: dict[str, Any] = {
        "cpu_native": settings.cpu_native, "cpu_int_mm": settings.cpu_int_mm,
        "cpu_prepack": settings.cpu_prepack, "gemm_tma": settings.gemm_tma,
    }
    if settings.native_cache is not None:  # else the library's: $TRDQ_CACHE_DIR/native
        changes["native_cache_dir"] = settings.native_cache.expanduser()
    kernel_switches.configure(**changes)
    return kernel_switches.describe()


#: Where load-time and generation metrics go: the app's Metrics (thread workers), or a
#: recorder whose events a worker process sends to the server process.
MetricSink = Metrics | MetricsRecorder


def load_models(
    settings: Settings, metrics: MetricSink, device: torch.device
) -> ModelSet[ServedModel]:
    """Every enabled model at every precision in TRDQ_QUANT, on ``device``."""
    if device.type == "cpu" and settings.threads:
        torch.set_num_threads(settings.threads)
    dtype = served_dtype(settings.dtype, device)
    cuda_graphs = check_cuda_graphs(settings.cuda_graphs, device)
    served: dict[tuple[str, str], ServedModel] = {}
    for model_name in (settings.image_model, settings.video_model_name):
        if model_name is None:
            continue
        base = load_pipeline(model_name, device=device, dtype=dtype)
        task = pipeline_task(base)
        fused_qkv = _fuse_qkv(base, settings.fuse_qkv, device)
        _quantize_text_encoder(base, settings.text_encoder_quant)
        # every variant's denoiser is copied before any is quantized or profiled: the hooks
        # those attach (and their handles) are not copyable
        pipes = {
            quant: base if quant == "fp" else _pipeline_copy_with_own_denoiser(base)
            for quant in settings.quant_names
        }
        for quant, pipe in pipes.items():
            model = _make_served(model_name, task, quant, pipe, metrics)
            model.info["text_encoder_quant"] = settings.text_encoder_quant
            model.info["fused_qkv_modules"] = fused_qkv
            if quant != "fp":
                _quantize(model, settings, metrics)
                _set_attention(model, settings, device)
            _fuse_blocks(model, settings.fused_block, device)
            if settings.compile:
                _compile(model, device)
            if cuda_graphs:  # (checked above: the device is CUDA)
                _replay_from_cuda_graphs(model, settings.cuda_graphs_max)
            _publish_weight_bytes(model, metrics)
            served[(task, quant)] = model
            logger.info("serving %s (%s) at %s in %s on %s", model_name, task, quant,
                        model.info["dtype"], device)
    if not served:
        raise RuntimeError("both TRDQ_MODEL and TRDQ_VIDEO_MODEL are disabled: nothing to serve")
    return ModelSet(served, default_quant=settings.quant_names[0])


def served_dtype(setting: str, device: torch.device) -> torch.dtype:
    """TRDQ_DTYPE on ``device``; ``auto`` is trdq's default (bf16 on CUDA, fp32 on CPU).

    fp32 stays the CPU default because CPUs without native bf16 (AVX-512 BF16 or AMX)
    emulate its GEMMs, several times slower than fp32; where it is native, bf16
    activations with the cpu_int8 backend are the fast path, so it is a setting.
    """
    if setting == "auto":
        return default_dtype(device)
    dtype = getattr(torch, setting)
    if dtype == torch.bfloat16 and device.type == "cpu" and not cpu_has_native_bf16():
        logger.warning(
            "TRDQ_DTYPE=bfloat16 on a CPU without AVX-512 BF16 or AMX: bf16 is emulated "
            "there and usually much slower than float32"
        )
    return dtype


def _fuse_qkv(pipe, setting: str | bool, device: torch.device) -> int:
    """diffusers' fused q/k/v projections in the denoiser (TRDQ_FUSE_QKV; auto: on CUDA),
    before any variant is copied or quantized; returns the attention modules fused."""
    if not (device.type == "cuda" if setting == "auto" else setting):
        return 0
    from trdq.integrations.diffusers import fuse_qkv_projections

    fused = fuse_qkv_projections(pipe.transformer)
    logger.info("fused the q/k/v projections of %d attention modules", fused)
    return fused


def _quantize_text_encoder(pipe, quant: str) -> None:
    """Weight-only int8/int4 T5 (TRDQ_TEXT_ENCODER_QUANT), shared by every variant."""
    if quant == "none":
        return
    from trdq.text_encoder import quantize_text_encoder

    # Flux and SD3 keep their T5 beside one or two CLIP encoders (text_encoder_2/_3)
    for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        encoder = getattr(pipe, name, None)
        if encoder is None:
            continue
        report = quantize_text_encoder(encoder, quant)
        logger.info(
            "%s weights %s: %d linears, %.1f -> %.1f MB", name, quant, len(report.replaced),
            report.bytes_before / 1e6, report.bytes_after / 1e6,
        )


def _pipeline_copy_with_own_denoiser(base):
    """A pipeline sharing every component with `base` except a copy of the denoiser."""
    components = dict(base.components)
    components["transformer"] = copy.deepcopy(base.transformer)
    pipe = type(base)(**components)
    # Keep the source path: the calibration prompts (and so the cache key) follow from it.
    pipe.register_to_config(_name_or_path=base.config._name_or_path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _make_served(name: str, task: str, quant: str, pipe, metrics: MetricSink) -> ServedModel:
    height, width = default_size(pipe)
    model = ServedModel(
        name=name, task=task, quant=quant, pipe=pipe, profiler=PipelineProfiler(pipe),
        default_width=width, default_height=height,
        max_frames=max_frames(pipe) if task == "video" else 1,
        min_steps=min_inference_steps(pipe), size_multiple=size_multiple(pipe),
        frame_step=frame_step(pipe) if task == "video" else 1,
        completes_captions=getattr(pipe, "trdq_completes_captions", False),
        info={"quant": quant, "dtype": str(pipe.transformer.dtype).removeprefix("torch.")},
    )

    def observe_step(seconds: float, timestep: float | None) -> None:
        metrics.denoise_step.labels(
            model=name, quant=quant, group=model.group_of(timestep)
        ).observe(seconds)

    model.profiler.add_step_listener(observe_step)
    return model


def _quantize(model: ServedModel, settings: Settings, metrics: MetricSink) -> None:
    """Quantize the model's denoiser with TR-DQ from the calibration cache."""
    from trdq.api import add_step_listener, get_state, quantize

    report = quantize(
        model.pipe,
        model.quant,
        cache_dir=settings.cache_dir.expanduser(),
        backend=settings.backend,
        calibration_prompts=settings.calibration_prompts,
        recalibrate_on_invalid=settings.recalibrate,
        progress=False,
    )
    for result in report.cache:
        if result in ("hit", "miss", "invalid"):
            metrics.calibration_cache.labels(result=result).inc()
    switches = metrics.group_switches.labels(model=model.name)
    add_step_listener(model.pipe, lambda event: switches.inc() if event.switched else None,
                      timed=False)
    state = get_state(model.pipe)
    if state is None:  # quantize() returned without leaving its state on the pipeline
        raise RuntimeError(f"{model.name} at {model.quant}: no quantization state after quantize")
    hook = state.hook
    # the profiler sees the timestep the pipeline passes (Flux: t / 1000)
    model.group_of = lambda timestep: "0" if timestep is None else str(
        hook.group_map.group_of(timestep * hook.timestep_multiplier))
    model.info.update(
        quant_config=report.config, calibration_id=report.calibration_id,
        backend=report.backend, calibration_cache=report.cache,
        calibration_seconds=round(report.calibration_seconds, 3),
        quantize_seconds=round(report.total_seconds, 3),
        layers_quantized=len(report.replaced), layers_skipped=report.skipped,
    )
    logger.info(
        "quantized %s to %s with backend %s in %.1f s (cache: %s)",
        model.name, model.quant, report.backend, report.total_seconds, ",".join(report.cache),
    )


def _set_attention(model: ServedModel, settings: Settings, device: torch.device) -> None:
    """The quantized denoiser's self-attention kernel (TRDQ_ATTENTION); an explicit FA3
    backend this worker cannot run refuses the start, naming the setting."""
    from trdq.nn.attention import STATIC_FP8, set_attention_backend

    setting = settings.attention
    if setting == STATIC_FP8:  # calibrated here: one pass of the calibration prompts
        model.info["attention"] = _calibrate_static_attention(model, settings, device)
        return
    try:
        report = set_attention_backend(model.pipe.transformer, setting, device)
    except RuntimeError as exc:
        raise ValueError(f"TRDQ_ATTENTION={setting}: {exc}") from exc
    model.info["attention"] = report.backend


def _calibrate_static_attention(model: ServedModel, settings: Settings,
                                device: torch.device) -> str:
    """TRDQ_ATTENTION=fp8-static: FA3 e4m3 with Q/K/V statistics recorded per timestep
    group over the calibration prompts (``trdq.api.calibrate_attention``)."""
    from trdq.api import calibrate_attention
    from trdq.kernels.fa3_attention import fa3_status

    runs, why = fa3_status(device)
    if not runs:
        raise ValueError(f"TRDQ_ATTENTION=fp8-static: {why}")
    started = time.perf_counter()
    modules = calibrate_attention(model.pipe, settings.calibration_prompts)
    logger.info("static FP8 attention for %s (%s) on %d modules, recorded in %.1f s",
                model.name, model.quant, modules, time.perf_counter() - started)
    return "fp8-static"


def _fuse_blocks(model: ServedModel, setting: str | bool, device: torch.device) -> None:
    """The quantized blocks' fused entries (TRDQ_FUSED_BLOCK; auto: on CUDA): PixArt/Latte
    LayerNorm + modulate + quantizer, the feed-forwards' GELU + quantizer (FLUX, SD3, Wan;
    FLUX's single blocks' ``cat`` too) and, with TRDQ_ATTENTION=fp8-static (set before
    this), FLUX's attention prologue. FLUX.1-dev-1024 step on an H100: 91.1 -> 86.4 ms with
    the last two (docs/bench/flux-dev-1024-fusions-h100.json). FLUX's double-stream
    LayerNorm entries (``trdq.nn.flux_block``) only with TRDQ_FUSED_BLOCK=1 until timed.
    Blocks that do not allow it (a config without static e4m3 scales) keep diffusers'
    forward; ``/info`` shows how many were fused."""
    if not (device.type == "cuda" if setting == "auto" else setting):
        model.info["fused_blocks"] = model.info["fused_mlps"] = 0
        model.info["fused_attention_prologues"] = 0
        return
    from trdq.nn.flux_attention import fuse_flux_attention
    from trdq.nn.flux_block import fuse_flux_blocks
    from trdq.nn.fused_block import fuse_block_norms
    from trdq.nn.fused_mlp import fuse_mlps

    model.info["fused_blocks"] = fuse_block_norms(model.pipe.transformer, gelu=True)
    if setting != "auto":  # not yet timed on a GPU: only where asked for
        model.info["fused_blocks"] += fuse_flux_blocks(model.pipe.transformer)
    model.info["fused_mlps"] = fuse_mlps(model.pipe.transformer)
    model.info["fused_attention_prologues"] = fuse_flux_attention(model.pipe.transformer)


def _compile(model: ServedModel, device: torch.device) -> None:
    """torch.compile each denoiser block, the image VAE's decoder and, on CUDA, each
    text-encoder layer (TRDQ_COMPILE).

    Compiling block by block keeps the timestep hook and the profiler outside the
    graphs and makes the one compile serve every block; the quantized layers are torch
    custom ops, so the blocks compile without graph breaks. The text encoder is compiled
    on CUDA only, where an eager T5 encode is bound by the host launching its kernels
    (``compile_text_encoders``); it is shared by the variants and compiled once. The
    warm-up pays the compile time before /readyz turns 200.
    """
    from trdq.runtime.compile import compile_denoiser, compile_text_encoders, compile_vae_decoder

    blocks = compile_denoiser(model.pipe.transformer, "regional")
    model.info["compiled_vae_decoder"] = compile_vae_decoder(model.pipe.vae)
    if device.type == "cuda":
        compile_text_encoders(model.pipe)
    model.info["compiled"] = True
    model.info["compiled_blocks"] = blocks


def check_cuda_graphs(setting: str | bool, device: torch.device) -> bool:
    """Whether this worker replays from CUDA graphs: TRDQ_CUDA_GRAPHS=auto (the default)
    on a CUDA device; true needs one: refuse to start, naming the setting."""
    if setting == "auto":
        return device.type == "cuda"
    if setting and device.type != "cuda":
        raise ValueError(
            f"TRDQ_CUDA_GRAPHS=1 needs a CUDA device, but this worker runs on {device}; "
            "set it to auto or 0, or serve on cuda"
        )
    return bool(setting)


def _replay_from_cuda_graphs(model: ServedModel, max_graphs: int) -> None:
    """Replay the denoiser's forward from CUDA graphs (TRDQ_CUDA_GRAPHS).

    Without graphs a quantized step is bound by the host launching its ~400 small kernels
    (PixArt-1024 W8A8 + compile on H100s: 62-90 ms a step depending on the host, 33.0 ms
    replayed from graphs, bf16 + compile 33.5 without them; docs/BENCHMARKS.md). The first
    call per timestep group and shape runs eagerly (and autotunes), the second captures;
    the warm-up pays for the default shape before /readyz turns 200. The text encoders
    are replayed too (``graph_text_encoders``: a compiled T5-XXL encode is host-bound as
    well); an encoder shared by the variants is wrapped once.
    """
    from trdq.runtime.cuda_graphs import CudaGraphForward, graph_text_encoders, quant_context

    transformer = model.pipe.transformer
    CudaGraphForward(
        transformer, quant_context(transformer), max_graphs=max_graphs, eager_on_failure=True
    )
    graph_text_encoders(model.pipe, max_graphs=max_graphs, eager_on_failure=True)
    model.info["cuda_graphs"] = True


def _publish_weight_bytes(model: ServedModel, metrics: MetricSink) -> None:
    by_component = pipeline_weight_bytes(model.pipe)
    model.info["weight_bytes"] = by_component
    for component, by_dtype in by_component.items():
        for dtype, size in by_dtype.items():
            metrics.weight_bytes.labels(
                model=model.name, quant=model.quant, component=component, dtype=dtype
            ).set(size)
