"""TR-DQ: timestep-grouped, rotation-smoothed, CFG-aware quantization of diffusion transformers.

    pipe = trdq.load_pipeline("tiny-shapes-t2i")
    report = trdq.quantize(pipe, "w8a8", cache_dir="~/.cache/trdq")
    trdq.save(pipe, "w8a8-tiny")      # canonical quantized weights + calibration + config
    trdq.load(trdq.load_pipeline("tiny-shapes-t2i"), "w8a8-tiny", backend="reference")
"""

from trdq.api import QuantReport, calibrate, load, quantize, save
from trdq.config import QuantConfig
from trdq.pipeline import load_pipeline

__all__ = ["QuantConfig", "QuantReport", "calibrate", "load", "load_pipeline", "quantize", "save"]
__version__ = "0.1.0"
