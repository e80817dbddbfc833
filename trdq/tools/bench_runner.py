"""One row of ``trdq bench``: the denoiser prepared as the row's name asks, then timed.

``_Runner`` builds the preset's pipeline once and keeps the reference denoiser on the host;
each row gets a fresh copy on the device, prepared from its name (``trdq.tools.bench_rows``:
quantized, compiled, fused, attention backend, CUDA graphs, text-encoder and VAE
variants), is timed in each scope and batch (``trdq.tools.bench_measure``), and is then
released: every switch a suffix turned is set back, so the next row starts from the same
pipeline.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import time
from typing import Any

import torch
import torch._inductor.config as inductor_config

from trdq.integrations.diffusers import fuse_qkv_projections
from trdq.kernels import cpu_native
from trdq.kernels import fa3_attention as fa3
from trdq.nn.attention import STATIC_FP8, set_attention_backend, split_attention_suffix
from trdq.runtime import host_memory
from trdq.runtime.compile import (
    compile_denoiser,
    compile_text_encoders,
    compile_vae_decoder,
    uncompile_text_encoders,
    uncompile_vae_decoder,
)
from trdq.runtime.cuda_graphs import (
    CudaGraphForward,
    graph_text_encoders,
    quant_context,
    ungraph_text_encoders,
)
from trdq.tools.bench_measure import BenchResult, component_bytes, sync, time_calls, time_step
from trdq.tools.bench_memory import StagePeaks, graph_pool_idle_bytes
from trdq.tools.bench_presets import BenchPreset, resolve_zoo_geometry
from trdq.tools.bench_rows import (
    FA3_CROSS,
    FLUX_ENTRY,
    FUSED_FF,
    FUSED_NORM,
    FUSED_ROPE,
    MULTI_KERNEL,
    PAD_HEADS,
    SYSTEM_MALLOC,
    T5_COMPILE,
    T5_GRAPHS,
    TORCH_OPS,
    TRITON_CAST,
    VAE_TILING,
)
from trdq.tools.bench_variants import (
    apply_fp8_swap,
    apply_torchao,
    profile_step,
    profile_text_encoder,
)

logger = logging.getLogger(__name__)


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
        # "+multikernel", "+fusednorm", "+fusedff", "+fluxentry", "+tritoncast", "+fusedrope",
        # "+fa3cross", "+padheads": after all the others
        last: set[str] = set()
        while row.endswith((MULTI_KERNEL, FUSED_NORM, FUSED_FF, FLUX_ENTRY, TRITON_CAST,
                            FUSED_ROPE, FA3_CROSS, PAD_HEADS)):
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
        if PAD_HEADS in last:
            from trdq.nn.padded_heads import pad_attention_heads

            info["padded_attention_modules"] = pad_attention_heads(transformer)
            if not info["padded_attention_modules"]:
                raise ValueError(f"{PAD_HEADS}: no self-attention module with fused q/k/v, "
                                 "an unrotated to_out and heads to pad")
        if FLUX_ENTRY in last:
            from trdq.nn.flux_block import fuse_flux_blocks

            info["fused_flux_blocks"] = fuse_flux_blocks(transformer)
            if not info["fused_flux_blocks"]:
                raise ValueError(f"{FLUX_ENTRY}: no FLUX double-stream block can be fused "
                                 "(layers quantized with fp8-norot)")
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
        if FA3_CROSS in last:
            from trdq.nn.cross_attention import install_cross_attention_kernel

            info["fa3_cross_modules"] = install_cross_attention_kernel(transformer)
            if not info["fa3_cross_modules"]:
                raise ValueError(f"{FA3_CROSS}: no PixArt/Latte cross-attention module, or FA3 "
                                 "does not run here")
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
                sync(dev)
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
