"""Calibration: activation statistics over prompts x the sampler's real timesteps, then a
per-layer, per-group (per CFG half) search of the activation parameters.

Collection runs the full-precision pipeline (``output_type="latent"``, no VAE) with the
config's step count and guidance, so the timesteps are exactly the sampler's. A pre-hook
on every target linear records, per (timestep group, CFG half):

- the per-channel absmax of the raw input (smoothing statistics; exact min-max range
  without rotation),
- the absmax of the rotated input (exact static range with rotation),
- a bounded, seeded sample of input rows (random rows plus the largest ones), bounded per
  uniform timestep bin as well (``ROW_BINS``), so the rows the weights are calibrated on do
  not depend on the group count; used by the search, and for ``faithful`` the EMA of
  mean_batch(max_tokens |X|) per range.

Integer weights can be calibrated first, on ``H = X^T X`` of all stored rows (with
CFG-wise parameters, of the guided rows the sampler's output sees): with
``weight_clip_search`` each output channel's clip is chosen by the output error its
rounding causes (``P.output_weight_clip``), with ``weight_rounding="gptq"`` the integers
are rounded to compensate each other's error (trdq/gptq.py). The activation search then
picks, per group and half, the clip ratio (from ``clip_grid``) minimising the
layer's output MSE ``|Q(x) Q(W)^T - x W^T|^2`` on that group's rows. The smoothing
exponent is searched per layer over all groups: the weights are stored once, so a
per-group exponent would need per-group weight copies (TRDQ.md: not the default).

Modules, in the order data flows through them:

- ``collect``: the prompts, the forward pre-hooks and the per-layer statistics they keep;
- ``search``: TR-DQ's per-layer solve (smoothing, integer weights, per-group clips);
- ``faithful``: the released code's per-range smoothing and DuQuant rotations;
- ``result``: what calibration produces, and its flat tensor form for the cache;
- ``pipeline``: ``calibrate_pipeline``, which runs the FP pipeline and solves every layer.
"""

from trdq.calibration.collect import LayerStats, StatsCollector, load_prompts
from trdq.calibration.faithful import solve_faithful
from trdq.calibration.pipeline import calibrate_pipeline
from trdq.calibration.result import CalibrationResult, FaithfulParams
from trdq.calibration.search import solve_layer

#: The calibration method's version, part of every cache fingerprint: bump it when a change
#: to collection or search changes what a given config calibrates to, so artifacts cached
#: before it are recomputed rather than served. 2: rows sampled per timestep bin.
METHOD_VERSION = 2

__all__ = [
    "METHOD_VERSION",
    "CalibrationResult",
    "FaithfulParams",
    "LayerStats",
    "StatsCollector",
    "calibrate_pipeline",
    "load_prompts",
    "solve_faithful",
    "solve_layer",
]
