"""One ``trdq eval`` setting after another: load, quantize, generate, score.

Each setting gets a freshly loaded pipeline, quantized with its preset (calibration outside
the timed part), and generates the run's prompts with their seeds in ``--batch`` batches;
``trdq.eval.report.run_quality`` scores the samples, and the similarity to the ``fp``
samples kept from the first setting is filled in here. Only one pipeline is held at a time.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from trdq.eval.report import QualityReport, run_quality, similarity_to
from trdq.nn.attention import set_attention_backend, split_attention_suffix
from trdq.tools.eval_settings import REFERENCE

__all__ = ["SettingInfo", "evaluate_settings"]

logger = logging.getLogger(__name__)


@dataclass
class SettingInfo:
    """How one setting was prepared (for the notes): backend, cache, calibration time."""

    name: str
    backend: str | None
    cache: list[str]
    calibration_seconds: float
    quantize_seconds: float


def _prepare(args: argparse.Namespace, name: str):
    """A freshly loaded pipeline quantized with preset ``name``, and how it went."""
    from trdq.api import quantize
    from trdq.config import QuantConfig
    from trdq.pipeline import load_pipeline

    pipe = load_pipeline(args.model, device=args.device)
    preset, attention = split_attention_suffix(name)
    config = QuantConfig.preset(preset)
    if args.calib_prompts and config.enabled:
        config = config.replace(calib_num_prompts=args.calib_prompts)
    backend = "reference" if config.faithful else args.backend
    started = time.perf_counter()
    qreport = quantize(
        pipe, config, cache_dir=args.cache_dir, backend=backend, progress=not args.quiet
    )
    attention_label = None
    if attention is not None:  # "+fp8attn" / "+fa3attn": self-attention through that kernel
        attention_label = _set_attention(pipe, attention, args.device)
    info = SettingInfo(
        name,
        qreport.backend if attention is None else f"{qreport.backend}, {attention_label} attention",
        list(qreport.cache),
        qreport.calibration_seconds,
        time.perf_counter() - started,
    )
    return pipe, info


def _set_attention(pipe, attention: str, device: str) -> str:
    """The setting's self-attention backend on the quantized ``pipe``; what the notes call
    it. Where FA3 does not run (a CPU), the e4m3 settings run its oracle
    (``fp8_attention_reference``: FA3's roundings, computed in float32): the quality of
    the quantization, not of the kernel."""
    from trdq.api import calibrate_attention
    from trdq.kernels import fa3_attention as fa3
    from trdq.nn.attention import STATIC_FP8, install_attention_kernel

    oracle = attention in ("fp8", STATIC_FP8) and not fa3.fa3_status(device)[0]
    if attention == STATIC_FP8:
        calibrate_attention(pipe, kernel=fa3.fp8_attention_reference if oracle else None)
    elif oracle:
        install_attention_kernel(pipe.transformer, fa3.fp8_attention_reference, attention)
    else:
        set_attention_backend(pipe.transformer, attention, device)
    return f"{attention} (e4m3 oracle)" if oracle else attention


def _batched_generator(
    pipe, args: argparse.Namespace, name: str, size: tuple[int, int], num_frames: int | None
):
    """prompts, seeds -> samples, ``--batch`` prompts per pipeline call, with a progress bar."""
    from tqdm.auto import tqdm

    from trdq.pipeline import GenerationRequest, generate

    def run(prompts: Sequence[str], seeds: Sequence[int]) -> list[np.ndarray]:
        samples: list[np.ndarray] = []
        starts = range(0, len(prompts), args.batch)
        for i in tqdm(
            starts, desc=f"trdq eval {name}", unit="batch", disable=args.quiet, file=sys.stderr
        ):
            request = GenerationRequest(
                prompts=list(prompts[i : i + args.batch]),
                seeds=list(seeds[i : i + args.batch]),
                width=size[0],
                height=size[1],
                num_inference_steps=args.steps,
                guidance_scale=args.guidance,
                num_frames=num_frames,
            )
            samples.extend(generate(pipe, request))
        return samples

    return run


def evaluate_settings(
    args: argparse.Namespace, settings: Sequence[str], on_result=None
) -> tuple[QualityReport, list[SettingInfo]]:
    """Run every setting on the ``--split`` prompts; the report holds fp first."""
    from trdq.data.split import split_prompts
    from trdq.pipeline import max_frames, pipeline_task

    report: QualityReport | None = None
    infos: list[SettingInfo] = []
    reference_samples: list[np.ndarray] = []
    prompts: list[str] = []
    seeds: list[int] = []
    for index, name in enumerate(settings):
        logger.info(
            "[%d/%d] %s: loading %s and quantizing", index + 1, len(settings), name, args.model
        )
        pipe, info = _prepare(args, name)
        infos.append(info)
        if report is None:
            args.task = pipeline_task(pipe)
            prompts = split_prompts(args.split, args.prompts, seed=args.seed, kind=args.task,
                                    partial=args.partial, scenes=getattr(args, "scenes", 0.0))
            seeds = [args.seed + i for i in range(len(prompts))]
            report = QualityReport(model=args.model, prompts=len(prompts))
        default = int(pipe.transformer.config.sample_size) * int(pipe.vae_scale_factor)
        size = (args.width or default, args.height or default)
        frames = (args.frames or max_frames(pipe)) if args.task == "video" else None
        generate = _batched_generator(pipe, args, name, size, frames)
        samples: list[np.ndarray] = []

        def recording(p, s, _generate=generate, _samples=samples):
            _samples[:] = [np.asarray(x) for x in _generate(p, s)]
            return _samples

        # one setting per run_quality call (one pipeline held at a time); the similarity
        # to the reference samples kept from the fp run is filled in here
        result = run_quality(args.model, {name: recording}, prompts, seeds,
                             reference=REFERENCE, workers=args.workers)
        row = result.result(name)
        if name == REFERENCE:
            reference_samples = samples
        else:
            row.psnr_to_fp, row.ssim_to_fp = similarity_to(
                reference_samples, samples, workers=args.workers
            )
        report.results.append(row)
        logger.info(
            "%s: accuracy %.3f, PSNR %s dB, SSIM %s, %.1f s (calibration %.1f s, %s)",
            name,
            row.accuracy,
            _fmt(row.psnr_to_fp, ".2f"),
            _fmt(row.ssim_to_fp, ".4f"),
            row.seconds,
            info.calibration_seconds,
            ",".join(info.cache) or "-",
        )
        if on_result is not None:  # partial results survive an interrupted run
            on_result(report, infos)
        del pipe, generate, recording
        gc.collect()
    assert report is not None
    return report, infos


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)
