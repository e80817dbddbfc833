"""``trdq bench``: latency, peak memory and weight bytes of a pipeline, per configuration.

Every configuration ("row") runs in the same process, on the same device, against the
same baselines, and the ratios are computed from those numbers only:
``fp32-eager`` (CPU only), ``bf16-eager``, ``bf16-compile``, each TR-DQ preset through
``trdq.quantize`` eager and compiled (``w8a8-eager``, ``w8a8-compile``, ...), torchao's
``Float8DynamicActivationFloat8WeightConfig`` (per-row) and
``Int8DynamicActivationInt8WeightConfig`` with compile when torchao is importable, and
``fp8swap-*`` (every block ``nn.Linear`` swapped straight for the cuda_fp8 op, dynamic
per-token, no calibration) when asked for.

Scopes: ``pipeline`` (text encode + sampler loop + VAE decode, wall time around the
call) and ``denoiser_step`` (one CFG forward of the denoiser, CUDA events). Median of
``--runs`` after ``--warmup`` runs; peak memory via ``torch.cuda.max_memory_allocated``
(process max RSS on CPU); ``+cg`` rows add the bytes their CUDA graphs' private pool holds
for replayed intermediates, which that counter never sees (``trdq.tools.bench_memory``). Only the
denoiser differs between rows; the other components stay resident. "compile" is ``torch.compile`` (default mode, never max-autotune) of each
transformer block (regional: the 28 identical blocks share one compiled graph), or of the
whole denoiser with ``--compile full``.

Output: ``--json FILE`` with exactly ``{"preset", "device", "torch", "results": [{"name",
"scope", "latency_s", "peak_memory_bytes", "weight_bytes"}]}`` (names get ``@b4`` for
batch 4), a sidecar ``FILE.details.json`` (batch, per-component bytes, compile seconds,
quantize reports, errors), and, with ``--markdown FILE``, a dated table appended there.
Nothing under docs/ is written unless asked: a run kept for the record goes to
``docs/bench/NAME.json`` (with its sidecar), and ``python -m trdq.tools.bench_report --all
docs/bench --out docs/BENCHMARKS.md`` regenerates the tables from every such record.

Row suffixes: ``+cg`` (CUDA graphs), ``+fp8attn`` / ``+fa3attn`` (self-attention through
FA3 in e4m3 / bf16, ``trdq.nn.attention``), ``+fp8longattn`` (e4m3 on long sequences only),
``+fp8staticattn`` (e4m3 with statistics recorded per timestep group over the row's
calibration prompts first, ``trdq.api.calibrate_attention``), ``+t5int8`` / ``+t5int4``, ``+vaetile``,
``+torchops`` (CPU), ``+sysmalloc`` (CPU: glibc's own malloc thresholds, without
``TRDQ_HOST_MALLOC=reuse``), ``+t5compile`` (written last: the text encoders' layers compiled too;
``+t5cg`` also replays them from CUDA graphs),
``+multikernel`` (Inductor's ``triton.multi_kernel``, which also generates a persistent
variant of each row reduction and keeps the faster), ``+fusednorm`` (the blocks'
LayerNorm entries through ``trdq.nn.fused_block``; ``+fusedff`` also its GELU kernel, and
FLUX/SD3/Wan MLPs' GELU + quantizer through ``trdq.nn.fused_mlp``),
``+tritoncast`` (with ``+fp8staticattn``: the Q/K/V casts as one Triton launch) and
``+fusedrope`` (with ``+fp8staticattn``: FLUX's q/k norms, rotary embedding and casts as
one launch, ``trdq.nn.flux_attention``) after all the others, in any order.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import os
import resource
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch._inductor.config as inductor_config

from trdq.integrations.diffusers import fuse_qkv_projections
from trdq.kernels import cpu_int8, cpu_native
from trdq.kernels import fa3_attention as fa3
from trdq.nn.attention import STATIC_FP8, set_attention_backend, split_attention_suffix
from trdq.runtime import host_memory
from trdq.runtime.compile import (
    compile_denoiser,
    compile_text_encoders,
    compile_vae_decoder,
    repeated_blocks,
    uncompile_text_encoders,
    uncompile_vae_decoder,
)
from trdq.runtime.cuda_graphs import (
    CudaGraphForward,
    graph_text_encoders,
    quant_context,
    ungraph_text_encoders,
)
from trdq.tools.bench_memory import StagePeaks, graph_pool_idle_bytes
from trdq.tools.bench_presets import PRESET_NAMES, BenchPreset, get_preset, resolve_zoo_geometry
from trdq.tools.bench_report import render_markdown, write_outputs
from trdq.tools.bench_variants import (
    apply_fp8_swap,
    apply_torchao,
    profile_step,
    profile_text_encoder,
)

logger = logging.getLogger(__name__)

__all__ = ["BenchResult", "main", "run_bench"]

#: row suffix: decode through diffusers' tiled VAE (``vae.enable_tiling()``) in that row
VAE_TILING = "+vaetile"
#: row suffix (CPU): cpu_int8 quantizes activations with its torch ops, not its C pass
TORCH_OPS = "+torchops"
#: row suffix (CPU): glibc's own malloc thresholds for the row, as without
#: ``TRDQ_HOST_MALLOC=reuse`` (freed activations unmapped; trdq/runtime/host_memory.py)
SYSTEM_MALLOC = "+sysmalloc"
#: row suffix: also torch.compile the text encoders' layers (``compile_text_encoders``)
T5_COMPILE = "+t5compile"
#: row suffix, in place of ``+t5compile``: the compiled text encoders also replayed from
#: CUDA graphs (``graph_text_encoders``)
T5_GRAPHS = "+t5cg"
#: row suffix, written last: compile with Inductor's ``triton.multi_kernel = 1`` (each
#: reduction also as a persistent kernel, the faster kept at run time; LayerNorm over 1152
#: or 3072 channels is past the default persistent threshold of 1024)
MULTI_KERNEL = "+multikernel"
#: row suffix, written last: ``fuse_block_norms`` on the quantized denoiser (PixArt/Latte
#: blocks: residual add, LayerNorm, modulate and e4m3 quantizer in one kernel)
FUSED_NORM = "+fusednorm"
#: row suffix, written last: ``+fusednorm`` and the feed-forward's GELU + quantizer kernel
#: (PixArt/Latte through ``fuse_block_norms``; FLUX/SD3/Wan MLPs through ``fuse_mlps``)
FUSED_FF = "+fusedff"
#: row suffix, written last: static FP8 attention's Q/K/V casts as one Triton launch
#: (``trdq.kernels.triton_attention_quant``) instead of Inductor's three kernels
TRITON_CAST = "+tritoncast"
#: row suffix, written last: with ``+fp8staticattn``, FLUX's attention prologue (q/k
#: RMSNorm, rotary embedding, e4m3 casts) as one Triton launch (``trdq.nn.flux_attention``)
FUSED_ROPE = "+fusedrope"


@dataclasses.dataclass
class BenchResult:
    name: str
    scope: str
    latency_s: float
    peak_memory_bytes: int
    weight_bytes: int
    batch: int = 1
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "scope": self.scope,
            "latency_s": self.latency_s,
            "peak_memory_bytes": self.peak_memory_bytes,
            "weight_bytes": self.weight_bytes,
        }


# ---- measuring ------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def tensor_bytes(t: torch.Tensor) -> int:
    """Storage bytes; tensor subclasses (torchao's quantized weights) are counted by their
    inner tensors, not by the logical (bf16) dtype they present."""
    if hasattr(t, "__tensor_flatten__") and type(t) not in (torch.Tensor, torch.nn.Parameter):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def module_bytes(module: torch.nn.Module | None) -> int:
    if module is None:
        return 0
    return sum(tensor_bytes(t) for t in list(module.parameters()) + list(module.buffers()))


#: components whose weights every row counts, and the extra text encoders FLUX and SD3
#: have (T5 sits in ``text_encoder_2`` / ``text_encoder_3`` there, beside CLIP)
COMPONENTS = ("text_encoder", "transformer", "vae")
EXTRA_TEXT_ENCODERS = ("text_encoder_2", "text_encoder_3")


def component_bytes(pipe) -> dict[str, int]:
    """Weight bytes per component (an extra text encoder only where the pipeline has one)."""
    present = [n for n in EXTRA_TEXT_ENCODERS if getattr(pipe, n, None) is not None]
    return {name: module_bytes(getattr(pipe, name, None)) for name in (*COMPONENTS, *present)}


def time_calls(fn, device: torch.device, warmup: int, runs: int) -> tuple[float, int]:
    """Median seconds of ``fn()`` and the peak memory over the timed runs."""
    for _ in range(warmup):
        fn()
    _sync(device)
    _reset_peak(device)
    times = []
    for _ in range(runs):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), _peak(device)


def time_step(fn, device: torch.device, warmup: int, runs: int) -> tuple[float, int]:
    if device.type != "cuda":
        return time_calls(fn, device, warmup, runs)
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize(device)
    _reset_peak(device)
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times), _peak(device)


# ---- the run ----------------------------------------------------------------------------
def default_rows(device: torch.device, quant: list[str], torchao: bool, swap: bool) -> list[str]:
    rows = ["fp32-eager"] if device.type == "cpu" else []
    cg = ["compile+cg"] if device.type == "cuda" else []
    rows += [f"bf16-{m}" for m in ["eager", "compile"] + cg]
    for q in quant:
        rows += [f"{q}-{m}" for m in ["eager", "compile"] + cg]
    if swap:
        rows += [f"fp8swap-{m}" for m in ["eager", "compile"] + cg]
    if torchao:
        rows += ["torchao-fp8row-compile"] if device.type == "cuda" else []
        rows += ["torchao-int8-compile"]
    return rows


def _torchao_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchao") is not None


class _Runner:
    def __init__(self, preset: BenchPreset, device: torch.device, args: argparse.Namespace):
        self.preset, self.device, self.args = preset, device, args
        base_dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
        t0 = time.perf_counter()
        self.fused_attention = 0
        self._multi_kernel_default = inductor_config.triton.multi_kernel
        torch.manual_seed(args.seed)  # same random weights every run (and calibration cache)
        self.pipe = preset.build(device, base_dtype)
        resolve_zoo_geometry(preset, self.pipe)
        self.build_s = time.perf_counter() - t0
        # the reference denoiser waits on the CPU; each row gets a fresh copy on the device
        self.base = self.pipe.transformer.to("cpu")
        self.pipe.transformer = None
        if args.fuse_qkv:
            self.fused_attention = fuse_qkv_projections(self.base)
        self.results: list[BenchResult] = []
        self.details: dict[str, Any] = {
            "rows": {},
            "errors": {},
            "build_s": self.build_s,
            "fused_attention_modules": self.fused_attention,
        }

    def _dtype_for(self, row: str) -> torch.dtype:
        if row.startswith("fp32"):
            return torch.float32
        if row.startswith("bf16"):
            return torch.bfloat16
        return self.act_dtype()

    def act_dtype(self) -> torch.dtype:
        """TR-DQ and peer rows: --act-dtype, by default what the server runs on this device."""
        if self.args.act_dtype == "auto":
            from trdq.pipeline import default_dtype

            return default_dtype(self.device)
        return torch.float32 if self.args.act_dtype == "fp32" else torch.bfloat16

    def _prepare(self, row: str) -> dict[str, Any]:
        info: dict[str, Any] = {}
        dtype = self._dtype_for(row)
        # "+multikernel", "+fusednorm", "+fusedff", "+tritoncast", "+fusedrope": after all
        # the others
        last: set[str] = set()
        while row.endswith((MULTI_KERNEL, FUSED_NORM, FUSED_FF, TRITON_CAST, FUSED_ROPE)):
            row, _, suffix = row.rpartition("+")
            last.add("+" + suffix)
        if MULTI_KERNEL in last:
            # read when each graph compiles (at its first call); _release sets it back
            inductor_config.triton.multi_kernel = 1
            info["inductor_multi_kernel"] = 1
        if FUSED_ROPE in last and "+fp8staticattn" not in row:  # checked before quantizing
            raise ValueError(f"{FUSED_ROPE} needs +fp8staticattn (its statistics)")
        if TRITON_CAST in last:
            fa3.set_triton_cast(True)  # _release turns it off
            info["triton_cast"] = True
        fused_gelu = FUSED_FF in last
        fused_norm = fused_gelu or FUSED_NORM in last
        # taken off before the other suffixes ("+t5compile" / "+t5cg" is written last); the
        # layers are compiled after a "+t5int8"/"+t5int4" row has quantized its copy of the
        # encoder
        t5_graphs = row.endswith(T5_GRAPHS)
        if t5_graphs and self.device.type != "cuda":
            raise ValueError(f"{T5_GRAPHS} (CUDA graphs) needs a CUDA device")
        row = row.removesuffix(T5_GRAPHS)
        t5_compile = t5_graphs or row.endswith(T5_COMPILE)
        row = row.removesuffix(T5_COMPILE)
        if row.endswith(VAE_TILING):
            # diffusers' tiled VAE decode (overlapping tiles, blended seams): the decode
            # stage's activations no longer grow with the image; _release turns it off
            row = row.removesuffix(VAE_TILING)
            self.pipe.vae.enable_tiling()
            info["vae_tiling"] = True
        # "+fp8attn" / "+fa3attn": the denoiser's self-attention through that backend
        row, attention = split_attention_suffix(row)
        if row.endswith(SYSTEM_MALLOC):
            row = row.removesuffix(SYSTEM_MALLOC)
            if not host_memory.set_system_thresholds(True):  # _release sets reuse back
                raise ValueError(f"{SYSTEM_MALLOC}: needs glibc and TRDQ_HOST_MALLOC=reuse")
            info["host_malloc"] = "system"
        if row.endswith(TORCH_OPS):
            row = row.removesuffix(TORCH_OPS)
            cpu_native.set_enabled(False)  # _release turns it back on
            info["cpu_native"] = False
        for name in ("text_encoder", "vae"):
            getattr(self.pipe, name).to(dtype)
        transformer = copy.deepcopy(self.base).to(self.device, dtype)
        self.pipe.transformer = transformer
        kind, _, mode = row.rpartition("-")
        # a trailing "+t5int8" / "+t5int4" also quantizes the text encoder (weight-only),
        # on a copy that _release puts back
        mode, _, t5 = mode.partition("+t5")
        if t5:
            from trdq.text_encoder import quantize_text_encoder

            self._text_encoder = self.pipe.text_encoder
            self.pipe.text_encoder = copy.deepcopy(self._text_encoder)
            info["text_encoder"] = quantize_text_encoder(self.pipe.text_encoder, t5).__dict__
            # the full-precision original waits on the host, so the row's peak memory is
            # that of a pipeline holding only the quantized encoder
            self._text_encoder.to("cpu")
        if t5_compile:
            info["compiled_text_encoder_layers"] = compile_text_encoders(self.pipe)
        if t5_graphs:
            info["graphed_text_encoders"] = graph_text_encoders(self.pipe)
        t0 = time.perf_counter()
        if kind.startswith("torchao-"):
            apply_torchao(transformer, kind.split("-", 1)[1])
        elif kind == "fp8swap":
            info["swapped_linears"] = apply_fp8_swap(transformer)
        elif kind not in ("bf16", "fp32"):
            info["quantize"] = self._quantize(kind)
        if fused_norm:
            from trdq.nn.fused_block import fuse_block_norms
            from trdq.nn.fused_mlp import fuse_mlps

            info["fused_norm_blocks"] = fuse_block_norms(transformer, gelu=fused_gelu)
            if fused_gelu:
                info["fused_mlps"] = fuse_mlps(transformer)
            if not (info["fused_norm_blocks"] or info.get("fused_mlps")):
                raise ValueError(f"{FUSED_FF if fused_gelu else FUSED_NORM}: no block of this "
                                 "denoiser can be fused (layers quantized with fp8-norot: "
                                 "ada_norm_single blocks, or with +fusedff tanh-GELU MLPs)")
        if attention == STATIC_FP8:
            info["attention"] = self._calibrate_static_attention()
            if FUSED_ROPE in last:
                from trdq.nn.flux_attention import fuse_flux_attention

                info["fused_rope_modules"] = fuse_flux_attention(transformer)
                if not info["fused_rope_modules"]:
                    raise ValueError(f"{FUSED_ROPE}: no FLUX attention module with fused "
                                     "projections and static FP8 attention")
        elif attention is not None:
            report = set_attention_backend(transformer, attention, self.device)
            info["attention"] = {"backend": report.backend, "modules": len(report.replaced)}
        info["prepare_s"] = time.perf_counter() - t0
        if mode.startswith("compile"):
            info["compiled_modules"] = compile_denoiser(self.pipe.transformer, self.args.compile)
            # what the server's TRDQ_COMPILE does too; _release puts the eager VAE back
            info["compiled_vae_decoder"] = compile_vae_decoder(self.pipe.vae)
        if mode.endswith("+cg"):
            if self.device.type != "cuda":
                raise RuntimeError("CUDA graphs (+cg rows) need a CUDA device")
            CudaGraphForward(self.pipe.transformer, quant_context(self.pipe.transformer))
        return info

    def _calibrate_static_attention(self) -> dict[str, Any]:
        """``+fp8staticattn``: the statistics recorded as the server records them
        (``trdq.api.calibrate_attention``: the row's calibration prompts and size)."""
        from trdq.api import calibrate_attention

        t0 = time.perf_counter()
        with torch.inference_mode():
            modules = calibrate_attention(self.pipe)
        return {"backend": STATIC_FP8, "modules": modules,
                "calibration_s": time.perf_counter() - t0}

    def _quantize(self, preset_name: str) -> dict[str, Any]:
        from trdq.api import quantize
        from trdq.config import QuantConfig

        cfg = QuantConfig.preset(preset_name)
        changes: dict[str, Any] = {
            "calib_num_prompts": self.args.calib_prompts,
            "calib_batch_size": self.args.calib_prompts,
            "calib_steps": self.preset.steps,
            # the guidance the pipeline runs at (FLUX's distilled embedding, Wan's two
            # branches: the preset's guidance_scale is 1.0 there, meaning "no CFG batch")
            "calib_guidance_scale": getattr(getattr(self.preset, "spec", None),
                                            "pipeline_guidance", self.preset.guidance_scale),
        }
        if self.preset.calib_hw is not None:
            changes["calib_height"], changes["calib_width"] = self.preset.calib_hw
        if self.preset.frames is not None:
            changes["calib_num_frames"] = self.preset.frames
        if self.args.calibration == "timing":
            # the same layers, flags and kernels; no clip/alpha search, min-max weight clip,
            # round-to-nearest integers: what the kernels time does not depend on the values
            changes.update(search=False, weight_clip_search=False, weight_rounding="nearest")
        cfg = dataclasses.replace(cfg, **{k: v for k, v in changes.items() if hasattr(cfg, k)})
        report = quantize(
            self.pipe, cfg, cache_dir=self.args.cache_dir, backend=self.args.backend, progress=False
        )
        return {
            "backend": report.backend,
            "replaced": len(report.replaced),
            "skipped": len(report.skipped),
            "cache": report.cache,
            "bytes_before": report.weight_bytes_before,
            "bytes_after": report.weight_bytes_after,
            "calibration_seconds": report.calibration_seconds,
        }

    def _release(self) -> None:
        from trdq import api

        api.dequantize_hooks(self.pipe)
        self.pipe.transformer = None
        uncompile_vae_decoder(self.pipe.vae)
        ungraph_text_encoders(self.pipe)
        uncompile_text_encoders(self.pipe)
        cpu_native.set_enabled(True)
        fa3.set_triton_cast(False)
        host_memory.set_system_thresholds(False)
        inductor_config.triton.multi_kernel = self._multi_kernel_default
        if getattr(self.pipe.vae, "use_tiling", False):
            self.pipe.vae.disable_tiling()
        if getattr(self, "_text_encoder", None) is not None:
            self.pipe.text_encoder, self._text_encoder = self._text_encoder, None
            self.pipe.text_encoder.to(self.device)
        torch._dynamo.reset()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def run_row(self, row: str) -> None:
        args, preset, dev = self.args, self.preset, self.device
        t0 = time.perf_counter()
        info = self._prepare(row)
        transformer = self.pipe.transformer
        info["weight_bytes_by_component"] = comps = component_bytes(self.pipe)
        for batch in args.batches or preset.batches:
            name = row if batch == 1 else f"{row}@b{batch}"
            if "pipeline" in args.scopes and "pipeline" in preset.scopes:
                kwargs = preset.call_kwargs(batch)
                first = time.perf_counter()
                with torch.inference_mode():
                    self.pipe(**kwargs)
                _sync(dev)
                info[f"first_call_s@b{batch}"] = time.perf_counter() - first

                def call(kwargs=kwargs):
                    with torch.inference_mode():
                        self.pipe(**kwargs)

                lat, peak = time_calls(call, dev, args.warmup, args.runs)
                pool = self._graph_pool_bytes(row)
                self._add(
                    BenchResult(name, "pipeline", lat, peak + pool, sum(comps.values()), batch)
                )
                if dev.type == "cuda":  # one more call, to see which stage sets the peak
                    with StagePeaks(self.pipe, dev) as stages:
                        call()
                    info[f"peak_by_stage_gb@b{batch}"] = stages.report(pool)
                    info[f"ms_by_stage@b{batch}"] = stages.milliseconds()
                if args.profile and dev.type == "cuda":
                    encode = profile_text_encoder(self.pipe, call)
                    info[f"text_encoder_ms@b{batch}"] = encode
                    if encode is not None:
                        print(
                            f"[bench] text encoder {name}: wall {encode['wall_ms']:.1f} ms, "
                            f"GPU {encode['gpu_ms']:.1f} ms",
                            flush=True,
                        )
            if "denoiser_step" in args.scopes:
                inputs = preset.step_inputs(transformer, batch, dev, self._dtype_for(row))
                # the step is called without the pipeline, which is what tells a quantized
                # denoiser that its batch is [uncond, cond] (per-half parameters, CFG-delta)
                from trdq.api import STATE_ATTR

                state = getattr(transformer, STATE_ATTR, None)
                if state is not None:
                    state.context.cfg_override = preset.guidance_scale > 1

                def step(inputs=inputs):
                    with torch.inference_mode():
                        transformer(**inputs)

                lat, peak = time_step(step, dev, args.warmup + 2, args.step_runs)
                peak += self._graph_pool_bytes(row)
                self._add(
                    BenchResult(name, "denoiser_step", lat, peak, comps["transformer"], batch)
                )
                if args.profile and dev.type == "cuda":
                    info[f"profile@b{batch}"] = prof = profile_step(step)
                    print(
                        f"[bench] profile {name}: "
                        + ", ".join(
                            f"{k} {v:.2f}" for k, v in prof["ms_per_step_by_category"].items()
                        )
                        + f" (sum {prof['total_ms']:.2f} ms GPU)",
                        flush=True,
                    )
        info["row_s"] = time.perf_counter() - t0
        self.details["rows"][row] = info
        self._release()

    def _graph_pool_bytes(self, row: str) -> int:
        """What a +cg row's graphs hold for their intermediates (see trdq.tools.bench_memory)."""
        if self.device.type != "cuda" or "+cg" not in row:
            return 0
        return graph_pool_idle_bytes()

    def _add(self, result: BenchResult) -> None:
        self.results.append(result)
        logger.info(
            "%-28s %-13s %9.2f ms  peak %.2f GB  weights %.1f MB",
            result.name,
            result.scope,
            result.latency_s * 1e3,
            result.peak_memory_bytes / 1e9,
            result.weight_bytes / 1e6,
        )
        print(
            f"[bench] {result.name:28s} {result.scope:13s} {result.latency_s * 1e3:9.2f} ms "
            f"peak {result.peak_memory_bytes / 1e9:6.2f} GB weights "
            f"{result.weight_bytes / 1e6:8.1f} MB",
            flush=True,
        )


def _folder_builder(model: str):
    def build(device: torch.device, dtype: torch.dtype):
        from trdq.pipeline import load_pipeline

        pipe = load_pipeline(model, device=device, dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return build


def _trdq_settings() -> str:
    """The ``TRDQ_*`` environment variables the run was given (kernel choices such as
    ``TRDQ_GEMM_TMA`` change what a row times), so a section says how it was run."""
    return ", ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("TRDQ_"))


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    preset = get_preset(args.preset)
    if args.model:  # same geometry/steps/CFG as the preset, real weights from a local folder
        preset.build = _folder_builder(args.model)
        preset.notes = [f"weights from {args.model}"] + preset.notes[1:]
    quant = [q for q in (args.quant or "").split(",") if q]
    torchao = not args.no_torchao and _torchao_importable()
    rows = args.rows.split(",") if args.rows else default_rows(device, quant, torchao, args.swap)
    runner = _Runner(preset, device, args)
    notes = list(preset.notes) + [
        (
            f"compile={args.compile} (torch.compile default mode"
            + (f"; each of the {len(repeated_blocks(runner.base))} repeated blocks"
               if args.compile == "regional" else "")
            + "); '+cg' rows replay the "
            "denoiser forward from CUDA graphs (one per timestep group; their peak includes "
            "the graphs' private pool)"
        ),
        (f"fused q/k/v projections in every row: {runner.fused_attention} attention modules"
         if runner.fused_attention else
         "q/k/v projections unfused" + (" (diffusers cannot fuse this denoiser's)"
                                        if args.fuse_qkv else "")),
        f"median of {args.runs} pipeline / {args.step_runs} step runs after warm-up",
        (
            f"TR-DQ rows: trdq.quantize backend={args.backend}, calibrated on "
            f"{args.calib_prompts} prompt(s) at "
            f"{preset.calib_hw or 'the pipeline default size'}, "
            f"{'fp32' if runner.act_dtype() == torch.float32 else 'bf16'} activations"
            + ("; calibration=timing (no search, GPTQ or weight clip: same kernels, "
               "latency only, not the recipe's quality)" if args.calibration == "timing" else "")
        ),
    ]
    settings = _trdq_settings()
    if settings:
        notes.append(f"settings: {settings}")
    if device.type == "cpu":
        prepack = (" (plus a prepacked copy of each 8-bit weight while it runs, 1 byte per "
                   "weight, not in the weights column)"
                   if cpu_int8.ONEDNN_PREPACK or cpu_int8.U8_GEMM else "")
        notes.append(f"cpu_int8 GEMM (8-bit weights): {cpu_int8.gemm_path()}{prepack}")
        notes.append(
            "peak GB on CPU is the process's max RSS so far (it never falls: a row shows the "
            "largest of its own and every earlier row's, calibration included)"
        )
    for row in rows:
        print(f"[bench] row {row} ...", flush=True)
        try:
            runner.run_row(row)
        except Exception as exc:  # noqa: BLE001 - one failing row must not lose the others
            runner.details["errors"][row] = f"{type(exc).__name__}: {exc}"
            print(f"[bench] row {row} FAILED: {type(exc).__name__}: {exc}", flush=True)
            traceback.print_exc()
            runner._release()
        if args.json:  # partial results survive a time limit
            write_outputs(
                preset.name, device, runner.results, runner.details, args.json, None, notes
            )
    for prefix, title, decimals in (("peak_by_stage_gb", "peak GB by stage", 2),
                                    ("ms_by_stage", "wall ms by stage (edges synchronized)", 1)):
        stage_note = _stage_note(runner.details["rows"], prefix, title, decimals)
        if stage_note:
            notes.append(stage_note)
    encoder_note = _text_encoder_note(runner.details["rows"])
    if encoder_note:
        notes.append(encoder_note)
    md = None if args.no_markdown or not args.markdown else Path(args.markdown)
    return write_outputs(preset.name, device, runner.results, runner.details, args.json, md, notes)


def _per_result(rows: dict[str, dict[str, Any]], prefix: str):
    """``(result name, value)`` of each row's ``{prefix}@bN`` detail, the name as in the
    table: the row, with ``@bN`` for batches other than 1."""
    for row, info in rows.items():
        for key, value in info.items():
            if key.startswith(prefix) and value:
                batch = key.removeprefix(prefix)
                yield (row if batch == "@b1" else row + batch), value


def _stage_note(
    rows: dict[str, dict[str, Any]], prefix: str, title: str, decimals: int
) -> str | None:
    """One note listing each result's ``{prefix}@bN`` stage values, encode / denoise /
    decode."""
    entries = [
        f"{name}: "
        + " / ".join(f"{stages.get(s, float('nan')):.{decimals}f}"
                     for s in ("encode", "denoise", "decode"))
        for name, stages in _per_result(rows, prefix)
    ]
    if not entries:
        return None
    return f"{title}, encode / denoise / decode: " + "; ".join(entries)


def _text_encoder_note(rows: dict[str, dict[str, Any]]) -> str | None:
    """One note listing each result's text-encoder wall / GPU ms (``--profile``)."""
    entries = [
        f"{name}: {ms['wall_ms']:.1f} / {ms['gpu_ms']:.1f}"
        for name, ms in _per_result(rows, "text_encoder_ms")
    ]
    if not entries:
        return None
    return "text encoder alone, wall / GPU kernel ms (`--profile`): " + "; ".join(entries)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trdq bench", description=__doc__.splitlines()[0])
    p.add_argument(
        "--preset",
        default="cpu-small",
        help=f"one of {', '.join(PRESET_NAMES)}, or a zoo name / diffusers folder",
    )
    p.add_argument("--json", help="write the results here")
    p.add_argument(
        "--model",
        help="local diffusers folder (or zoo name) replacing the "
        "preset's random weights; geometry, steps and CFG stay the preset's",
    )
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--rows", help="comma list of row names (default: all that apply)")
    p.add_argument(
        "--quant",
        default=None,
        help="TR-DQ presets to bench (default: w8a8,fp8,w4a8 on CUDA, w8a8 on CPU)",
    )
    p.add_argument("--backend", default="auto", help="kernel backend for trdq.quantize")
    p.add_argument("--scopes", default="pipeline,denoiser_step")
    p.add_argument("--batches", default=None, help="comma list (default: the preset's)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--step-runs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--compile", choices=("regional", "full"), default="regional")
    p.add_argument("--swap", action="store_true", help="add fp8swap-* rows (no calibration)")
    p.add_argument(
        "--no-fuse-qkv",
        dest="fuse_qkv",
        action="store_false",
        help="keep separate q/k/v projections (default: fused, for every row)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--profile",
        action="store_true",
        help="also record GPU kernel time per category of one denoiser step",
    )
    p.add_argument("--no-torchao", action="store_true")
    p.add_argument(
        "--act-dtype",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="activations of the quantized and peer rows (auto: what the server runs, fp32 on "
        "CPU, bf16 on GPU; tables before 2026-11-27 14:00 ran bf16 everywhere)",
    )
    p.add_argument("--calib-prompts", type=int, default=1)
    p.add_argument(
        "--calibration",
        choices=("full", "timing"),
        default="full",
        help="full: the preset's recipe; timing: the same quantized layers and kernels "
        "without the parameter search, GPTQ or weight clip (minutes less on large models; "
        "for latency only, the notes say so)",
    )
    p.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "trdq-bench"))
    p.add_argument("--markdown", help="also append the run's table to this Markdown file")
    p.add_argument("--no-markdown", action="store_true", help="(the default) no Markdown")
    p.add_argument(
        "--render",
        metavar="JSON",
        help="only append the table of an existing results file to --markdown",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    host_memory.configure_host_malloc()  # as `trdq` does (also for python -m trdq.tools.bench)
    if args.render:
        if not args.markdown:
            print("--render needs --markdown FILE", file=sys.stderr)
            return 2
        render_markdown(args.render, Path(args.markdown))
        return 0
    args.scopes = [s for s in args.scopes.split(",") if s]
    args.batches = [int(b) for b in args.batches.split(",")] if args.batches else None
    if args.quant is None:
        cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")) != "cpu"
        args.quant = "w8a8,fp8,w4a8" if cuda else "w8a8"
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    doc = run_bench(args)
    print(json.dumps(doc, indent=1))
    return 0 if doc["results"] else 1


if __name__ == "__main__":
    sys.exit(main())
