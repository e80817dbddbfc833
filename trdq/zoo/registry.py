"""Names of the embedded pipelines and where their diffusers folders live."""

from __future__ import annotations

from pathlib import Path

ZOO_DIR = Path(__file__).resolve().parent / "models"
CALIBRATION_DIR = Path(__file__).resolve().parent / "calibration"

#: name -> the diffusers pipeline class its folder holds (for documentation and checks).
ZOO_MODELS = {
    "tiny-shapes-t2i": "PixArtAlphaPipeline",
    "tiny-shapes-t2v": "LattePipeline",
}


def zoo_path(name: str) -> Path:
    """The folder of a zoo pipeline; raises KeyError with the known names."""
    if name not in ZOO_MODELS:
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(sorted(ZOO_MODELS))}")
    return ZOO_DIR / name


def calibration_prompts_path(name: str) -> Path | None:
    """The calibration prompt file shipped with a zoo model, if any."""
    path = CALIBRATION_DIR / f"{name}.txt"
    return path if path.exists() else None
