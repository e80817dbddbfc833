"""The quality benchmark's bookkeeping: run generators, score them, write JSON and Markdown.

The quantization itself stays outside: a setting is any callable that turns prompts and
seeds into uint8 samples (images (H, W, 3) or videos (T, H, W, 3)). `run_quality` calls
the reference setting first (default "fp"), then every other one on the same prompts and
seeds, and reports per setting the analytic prompt accuracy (all attributes right, and
per attribute), PSNR/SSIM to the reference sample of the same seed, and the generation
time. `QualityReport.to_dict` is the stable `trdq eval --json` layout::

    {"model": str, "prompts": int, "results": [{"quant": str, "accuracy": float,
     "per_attribute": {name: float}, "psnr_to_fp": float|null, "ssim_to_fp": float|null,
     "seconds": float, "accuracy_by_kind": {"full": float, "partial": float,
     "scene": float}}]}

``accuracy_by_kind`` splits the accuracy by caption kind: full combinations, partial
captions (some attributes unnamed; only the named ones are scored) and two-shape scenes
(``trdq.data.scene``; an attribute counts as right when both shapes have it right); a kind
absent from the prompts is absent there.

PSNR is averaged per sample, each capped at `PSNR_CAP_DB` so that a bit-identical sample
(infinite PSNR) keeps the mean finite and the JSON valid; the reference's own row has
null similarities.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import numpy as np

from trdq.data.grammar import Caption
from trdq.data.scene import Scene, parse_prompt
from trdq.eval.metrics import psnr, ssim
from trdq.eval.scene import by_attribute, evaluate_scene
from trdq.eval.shapes import evaluate, summarize

logger = logging.getLogger(__name__)

PSNR_CAP_DB = 100.0

#: prompts, seeds -> one uint8 sample per prompt.
SampleGenerator = Callable[[Sequence[str], Sequence[int]], Sequence[np.ndarray]]


@dataclass
class QualityResult:
    quant: str
    accuracy: float
    per_attribute: dict[str, float]
    psnr_to_fp: float | None
    ssim_to_fp: float | None
    seconds: float
    #: "full" / "partial" -> accuracy over the prompts of that caption kind
    accuracy_by_kind: dict[str, float] = field(default_factory=dict)


@dataclass
class QualityReport:
    model: str
    prompts: int
    results: list[QualityResult] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "prompts": self.prompts,
            "results": [asdict(r) for r in self.results],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def result(self, quant: str) -> QualityResult:
        for result in self.results:
            if result.quant == quant:
                return result
        raise KeyError(f"no result for {quant!r} in {[r.quant for r in self.results]}")


def _map_pairs(fn: Callable, first: Sequence, second: Sequence, workers: int) -> list:
    """``[fn(a, b) for a, b in zip(first, second)]``, over ``workers`` processes when
    there are enough pairs to pay for them (scoring 513 videos takes ~30 s on one core,
    longer than generating them on a GPU). Forked workers: the scorers are numpy only."""
    if workers <= 1 or len(first) < 4 * workers:
        return [fn(a, b) for a, b in zip(first, second)]
    context = multiprocessing.get_context("fork")
    chunk = max(1, len(first) // (4 * workers))
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        return list(pool.map(fn, first, second, chunksize=chunk))


def _evaluate(sample: np.ndarray, caption: Caption | Scene | str) -> dict[str, bool]:
    caption = parse_prompt(caption) if isinstance(caption, str) else caption
    if isinstance(caption, Scene):
        return by_attribute(evaluate_scene(np.asarray(sample), caption))
    return evaluate(np.asarray(sample), caption)


def score_samples(
    samples: Sequence[np.ndarray], captions: Sequence[Caption | Scene | str], *, workers: int = 1
) -> list[dict[str, bool]]:
    """Per sample, which attributes its caption names were read back right."""
    if len(samples) != len(captions):
        raise ValueError(f"{len(samples)} samples for {len(captions)} captions")
    return _map_pairs(_evaluate, samples, captions, workers)


def accuracy_of(
    samples: Sequence[np.ndarray], captions: Sequence[Caption | Scene | str], *, workers: int = 1
) -> tuple[float, dict[str, float]]:
    """(all-attributes-right fraction, per-attribute accuracy) of samples vs their captions."""
    return summarize(score_samples(samples, captions, workers=workers))


def caption_kind(caption: Caption | Scene | str) -> str:
    """"full" for a full combination, "partial" for a caption that leaves attributes out,
    "scene" for two shapes (``trdq.data.scene``)."""
    caption = parse_prompt(caption) if isinstance(caption, str) else caption
    if isinstance(caption, Scene):
        return "scene"
    return "full" if caption.is_complete else "partial"


def accuracy_by_kind(
    scores: Sequence[Mapping[str, bool]], captions: Sequence[Caption | Scene | str]
) -> dict[str, float]:
    """All-attributes-right fraction per caption kind present ("full", then "partial")."""
    kinds = [caption_kind(c) for c in captions]
    return {
        kind: summarize([s for s, k in zip(scores, kinds) if k == kind])[0]
        for kind in ("full", "partial", "scene")
        if kind in kinds
    }


def _similarity(reference: np.ndarray, sample: np.ndarray) -> tuple[float, float]:
    return min(psnr(reference, sample), PSNR_CAP_DB), ssim(reference, sample)


def similarity_to(
    references: Sequence[np.ndarray], samples: Sequence[np.ndarray], *, workers: int = 1
) -> tuple[float, float]:
    """(mean PSNR capped at `PSNR_CAP_DB`, mean SSIM) of samples to same-seed references."""
    if len(references) != len(samples) or not samples:
        raise ValueError(f"need equally many samples, got {len(references)} and {len(samples)}")
    pairs = _map_pairs(_similarity, references, samples, workers)
    return float(np.mean([p for p, _ in pairs])), float(np.mean([s for _, s in pairs]))


def _generate(
    name: str, generator: SampleGenerator, prompts: Sequence[str], seeds: Sequence[int]
) -> tuple[list[np.ndarray], float]:
    start = time.perf_counter()
    samples = [np.asarray(s) for s in generator(prompts, seeds)]
    seconds = time.perf_counter() - start
    if len(samples) != len(prompts):
        raise ValueError(f"setting {name!r} returned {len(samples)} samples for {len(prompts)}")
    return samples, seconds


def run_quality(
    model: str,
    generators: Mapping[str, SampleGenerator],
    prompts: Sequence[str],
    seeds: Sequence[int] | None = None,
    *,
    reference: str = "fp",
    workers: int = 1,
) -> QualityReport:
    """Generate `prompts` with every setting and score them (see the module docstring).

    `seeds` defaults to 0..n-1 (one fixed seed per prompt). When `reference` is not among
    the settings, every similarity is null. `workers` > 1 scores in that many processes.
    """
    seeds = list(range(len(prompts))) if seeds is None else list(seeds)
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
    captions = [parse_prompt(p) for p in prompts]
    order = sorted(generators, key=lambda name: name != reference)  # reference first
    report = QualityReport(model=model, prompts=len(prompts))
    reference_samples: list[np.ndarray] | None = None
    for name in order:
        samples, seconds = _generate(name, generators[name], prompts, seeds)
        scores = score_samples(samples, captions, workers=workers)
        accuracy, per_attribute = summarize(scores)
        psnr_db = ssim_value = None
        if name == reference:
            reference_samples = samples
        elif reference_samples is not None:
            psnr_db, ssim_value = similarity_to(reference_samples, samples, workers=workers)
        report.results.append(
            QualityResult(name, accuracy, per_attribute, psnr_db, ssim_value, seconds,
                          accuracy_by_kind(scores, captions))
        )
        logger.info(
            "%s %s: accuracy %.3f, psnr %s, %.1f s", model, name, accuracy, psnr_db, seconds
        )
    return report


def sampling_error_note(accuracy: float, prompts: int) -> str:
    """How far an accuracy over ``prompts`` prompts can move by the sample alone, at the
    first (full-precision) row's ``accuracy``: the binomial standard error, or, with no
    failure at all, the rule-of-three bound (95%) on the failure rate."""
    if 0.0 < accuracy < 1.0:
        error = math.sqrt(accuracy * (1.0 - accuracy) / prompts)
        return (f"Sampling error: over {prompts} prompts an accuracy near {accuracy:.3f} has a "
                f"standard error of {100 * error:.1f} points (another sample of prompts moves "
                "it by about that).")
    return (f"Sampling error: {prompts} prompts without a {'success' if accuracy == 0 else 'failure'} "
            f"bound the {'success' if accuracy == 0 else 'failure'} rate below "
            f"{300 / prompts:.1f}% (95%).")


def _cell(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def quality_markdown(
    reports: Sequence[QualityReport],
    command: str,
    *,
    device: str | None = None,
    notes: Sequence[str] = (),
    date: str | None = None,
) -> str:
    """docs/QUALITY.md: one table per model, dated, with the command that produced it."""
    date = date or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Quality of quantized generation",
        "",
        f"Generated {date}" + (f" on {device}" if device else "") + " by:",
        "",
        "```",
        command,
        "```",
        "",
        (
            "Accuracy: fraction of held-out prompts whose every attribute the analytic "
            "evaluator (`trdq.eval.shapes`) reads back correctly; per-attribute columns "
            "likewise. A partial caption (\"a red circle\") is scored on the attributes it "
            "names; `full captions` / `partial captions`: the accuracy over each kind "
            "(`scene captions`, with `--scenes`: two-shape scenes, an attribute right when "
            "both shapes have it). "
            "PSNR/SSIM: to the full-precision sample of the same prompt and seed. "
            "Seconds: wall time to generate all prompts."
        ),
    ]
    for report in reports:
        attributes = list(dict.fromkeys(a for r in report.results for a in r.per_attribute))
        # per caption kind only where the prompts mix kinds
        kinds = list(dict.fromkeys(k for r in report.results for k in r.accuracy_by_kind))
        kinds = kinds if len(kinds) > 1 else []
        header = ["quant", "accuracy", *(f"{k} captions" for k in kinds), *attributes,
                  "PSNR to FP (dB)", "SSIM to FP", "seconds"]
        lines += [
            "",
            f"## {report.model} ({report.prompts} prompts)",
            "",
            *([sampling_error_note(report.results[0].accuracy, report.prompts), ""]
              if report.results and report.prompts else []),
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
        ]
        for r in report.results:
            cells = [
                r.quant,
                f"{r.accuracy:.3f}",
                *(_cell(r.accuracy_by_kind.get(k), ".3f") for k in kinds),
                *(_cell(r.per_attribute.get(a), ".3f") for a in attributes),
                _cell(r.psnr_to_fp, ".2f"),
                _cell(r.ssim_to_fp, ".4f"),
                f"{r.seconds:.1f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"
