"""Quality measures: analytic attribute accuracy on shapes frames, and PSNR/SSIM."""

from trdq.eval.metrics import psnr, ssim
from trdq.eval.perturb import degrade
from trdq.eval.report import QualityReport, QualityResult, quality_markdown, run_quality
from trdq.eval.shapes import (
    Prediction,
    evaluate,
    predict_image,
    predict_video,
    score,
    summarize,
)

__all__ = [
    "Prediction",
    "QualityReport",
    "QualityResult",
    "degrade",
    "evaluate",
    "predict_image",
    "predict_video",
    "psnr",
    "quality_markdown",
    "run_quality",
    "score",
    "ssim",
    "summarize",
]
