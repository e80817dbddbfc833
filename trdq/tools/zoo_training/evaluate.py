"""Held-out evaluation of saved zoo pipelines with the analytic shapes evaluator.

Generates `heldout_prompts(n, seed, kind)` through `trdq.pipeline.generate` (the same path
the server and `trdq eval` use) with fixed per-prompt seeds, and scores every sample with
`trdq.eval.shapes.evaluate`: full-prompt accuracy and per-attribute accuracy.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from pathlib import Path

import numpy as np

from trdq.data import heldout_prompts
from trdq.eval.shapes import evaluate, summarize
from trdq.pipeline import GenerationRequest, generate, load_pipeline, max_frames
from trdq.zoo import architectures as arch

logger = logging.getLogger(__name__)


def _score(item: tuple[np.ndarray, str]) -> dict[str, bool]:
    return evaluate(*item)


def score_samples(
    samples: list[np.ndarray], prompts: list[str], workers: int = 1
) -> tuple[float, dict]:
    """`summarize` of the evaluator's scores, in `workers` processes."""
    items = list(zip(samples, prompts))
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            scores = pool.map(_score, items, chunksize=4)
    else:
        scores = [_score(item) for item in items]
    return summarize(scores)


def evaluate_pipeline(
    path: Path,
    kind: str,
    count: int,
    *,
    device: str = "cpu",
    seed: int = 0,
    steps: int = 20,
    guidance_scale: float = 4.5,
    batch: int = 100,
    workers: int = 1,
) -> dict:
    """Generate and score `count` held-out prompts; `batch=1` exercises one-prompt calls."""
    pipe = load_pipeline(path, device=device)
    prompts = heldout_prompts(count, seed, kind)  # type: ignore[arg-type]
    size = arch.T2I_RESOLUTION if kind == "image" else arch.T2V_RESOLUTION
    started = time.perf_counter()
    samples: list[np.ndarray] = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        request = GenerationRequest(
            prompts=chunk,
            seeds=[1000 + start + i for i in range(len(chunk))],
            width=size,
            height=size,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            num_frames=max_frames(pipe) if kind == "video" else None,
        )
        samples.extend(generate(pipe, request))
    seconds = time.perf_counter() - started
    accuracy, per_attribute = score_samples(samples, prompts, workers)
    result = {
        "kind": kind,
        "prompts": len(prompts),
        "prompt_seed": seed,
        "batch": batch,
        "steps": steps,
        "guidance_scale": guidance_scale,
        "accuracy": round(accuracy, 4),
        "per_attribute": {k: round(v, 4) for k, v in per_attribute.items()},
        "generation_seconds": round(seconds, 1),
        "device": device,
    }
    logger.info("eval %s: %s", path.name, result)
    return result
