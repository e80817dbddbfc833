"""The embedded zoo: small diffusers pipelines shipped inside the package."""

from trdq.zoo.registry import ZOO_DIR, ZOO_MODELS, calibration_prompts_path, zoo_path

__all__ = ["ZOO_DIR", "ZOO_MODELS", "calibration_prompts_path", "zoo_path"]
