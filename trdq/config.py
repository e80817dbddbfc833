"""QuantConfig: the typed, versioned description of one quantization recipe.

A config is plain data (JSON/YAML round-trip, stable ``config_hash``) and the preset
names are what the server's ``TRDQ_QUANT`` takes: ``fp``, ``w8a8``, ``w4a8``, ``fp8``,
the ablation chain ``{w8a8,w4a8}-minmax -> -rot -> -rot-search (one timestep group) ->
-rot-groups-search -> {w8a8,w4a8}`` (the full method adds CFG-wise parameters; ``-rot-groups``,
groups without the search, is a preset too), the same chain with static
activation scales (``-static`` suffix, e.g. ``w8a8-static``, ``w8a8-minmax-static``) and ``faithful`` / ``faithful-w4a8`` (the released algorithm, reference
backend only; see TRDQ-RELEASED.md; ``-1range``: the same with one time range).

Timestep groups live on the model's training scale [0, 1000]: ``group_boundaries`` are the
ascending interior cut points; group g covers ``[edge[g], edge[g+1])``, group 0 being the
least noisy (smallest t).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "BIT_PAIRS",
    "CONFIG_VERSION",
    "DEFAULT_FP_PATTERNS",
    "INT_BITS",
    "LOW_RANK_W4",
    "PRESETS",
    "QuantConfig",
    "preset_names",
]

CONFIG_VERSION = 1
TIMESTEP_SCALE = 1000.0

#: module-name regexes (re.search) kept in full precision: embedders and adaLN projection
DEFAULT_FP_PATTERNS: tuple[str, ...] = (
    r"(^|\.)pos_embed(\.|$)",
    r"patch_embed",
    r"(^|\.)x_embedder(\.|$)",
    r"adaln_single",
    r"time_embed",
    r"timestep_embedder",
    r"(^|\.)t_embedder(\.|$)",
    r"caption_projection",
    r"(^|\.)y_embedder(\.|$)",
    r"(^|\.)norm_out(\.|$)",
    r"csize_embedder|ar_embedder|resolution_embedder|aspect_ratio_embedder",
)

#: integer widths for weights and activations. 8/8 and 4/8 are the served formats (real
#: kernels on CPU and GPU); 6/6 and 4/4 are the quality ablation's lower widths, where the
#: components' effects on activations show (W8A8 min-max is lossless on the zoo): they run
#: exactly on ``cpu_int8`` (integers held in int8) and on the reference backend elsewhere.
#: 8/7 (``w8a7``) is for CPUs without int8 dot-product instructions (AVX2): 7-bit
#: activations are what oneDNN's u8 x s8 kernel multiplies exactly there (``cpu_int8``),
#: as PyTorch's own x86 quantization reduces activations to 7 bits (``reduce_range``).
INT_BITS = (4, 6, 7, 8)
#: (weight bits, activation bits) of the preset chains: ``w8a8``, ``w4a8``, ``w6a6``, ``w4a4``
BIT_PAIRS = ((8, 8), (4, 8), (6, 6), (4, 4))
#: the low-rank error branch of the 4-bit presets (from the search stage). W4A8 PSNR to FP
#: on the image zoo's training prompts (CPU): 30.6 dB without, 34.4 / 34.7 / 35.8 dB at
#: rank 8 / 16 / 32 in a first fit; the recipe's rank 16 gives 35.7 dB
#: (docs/journal/2026-12-07-low-rank-branch.md). 8-bit weights have too little error to
#: pay for the branch's bytes.
LOW_RANK_W4 = 16

RotationKind = Literal["none", "hadamard", "duquant"]
WeightRounding = Literal["nearest", "gptq"]
ActMode = Literal["static", "dynamic"]


@dataclass
class QuantConfig:
    """One quantization recipe. Field groups: bits/formats, groups, rotation, smoothing,
    search, CFG, layer selection, calibration, faithful-mode switches."""

    name: str = "w8a8"
    version: int = CONFIG_VERSION
    #: False only for ``fp``: nothing is replaced
    enabled: bool = True

    weight_bits: int = 8
    act_bits: int = 8
    #: e4m3 weights and activations (with fp32 row-wise weight scales)
    fp8: bool = False
    weight_granularity: Literal["per_channel"] = "per_channel"
    #: static: per-group (per CFG half) per-tensor scale; dynamic: per-token absmax x clip
    act_mode: ActMode = "dynamic"
    #: dynamic mode: subtract each token's mean before rotation/quantization and add it
    #: back exactly through the weights' row sums (see trdq/nn/quant_linear.py)
    act_center: bool = False

    num_groups: int = 8
    #: interior cut points on [0, 1000], ascending, len == num_groups - 1; None = uniform
    group_boundaries: list[float] | None = None

    rotation: RotationKind = "hadamard"
    rotation_block_size: int = 128

    smoothing: bool = False
    smoothing_alpha: float = 0.5

    #: per-group search of the clip ratio (and of alpha when smoothing is on)
    search: bool = True
    clip_grid: list[float] = field(
        default_factory=lambda: [1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5]
    )
    alpha_grid: list[float] = field(default_factory=lambda: [0.25, 0.4, 0.5, 0.6, 0.75])

    #: integer weights: calibration picks one clip ratio per output channel minimising
    #: the layer's OUTPUT error on the calibration rows (``P.output_weight_clip``), stored
    #: in the artifact; off = min-max. On from the search stage (``_chain``).
    #: (A clip by the weight's own rounding error was measured worse than min-max on the
    #: zoo and removed; docs/QUALITY.md.)
    weight_clip_search: bool = False
    #: integer weights: round to nearest, or ``gptq`` (error-compensating rounding on
    #: the calibration rows, trdq/gptq.py; the integers are stored in the artifact).
    #: On from the search stage.
    weight_rounding: WeightRounding = "nearest"
    #: rank of the 16-bit branch fitted to the integer weights' error on the calibration
    #: rows (trdq/low_rank.py); 0 = none. The W4 presets' search stage uses ``LOW_RANK_W4``.
    low_rank: int = 0
    #: separate activation parameters for the uncond/cond halves of a CFG batch, searched
    #: against the guided output's error; integer weights calibrated on the guided rows
    cfg_wise: bool = True
    #: dynamic mode, CFG batches: quantize each cond row as its difference from the paired
    #: uncond row and add the uncond output back (``y_c = y_u + W d``): the halves share
    #: their rounding error, which guidance would otherwise amplify ~5.7x at w = 4.5
    #: (trdq/nn/quant_linear.py). On with the CFG-wise stage.
    cfg_delta: bool = False
    #: faithful only: run the denoiser once per CFG half (as the released code)
    cfg_split: bool = False

    fp_layer_patterns: list[str] = field(default_factory=lambda: list(DEFAULT_FP_PATTERNS))
    #: the layers ``fp_layer_patterns`` keeps out of QuantLinear (embedders, adaLN and
    #: caption projections: a few rows per step, ~4% of PixArt's weights) get weight-only
    #: integer weights of this many bits (per output channel), or stay full precision (None)
    embedder_weight_bits: int | None = 8
    #: the same for the per-block adaLN projections of the families that have them
    #: (``Family.block_modulation_patterns``: FLUX, SD3). They grow with depth: 3.3B of
    #: FLUX.1-dev's 11.9B weights, so the W4 presets give them 4 bits (group 64) to keep
    #: the transformer near 4 bits a weight; the model-level embedders stay at 8.
    modulation_weight_bits: int | None = 8
    #: layers with fewer input channels than this stay in full precision
    min_in_features: int = 16

    # calibration
    calib_steps: int = 20
    calib_guidance_scale: float = 4.5
    calib_num_prompts: int = 8
    calib_batch_size: int = 4
    #: activation rows kept per (layer, group, CFG half) for the search
    calib_rows: int = 256
    calib_height: int | None = None
    calib_width: int | None = None
    calib_num_frames: int | None = None

    # faithful-mode switches (TRDQ-RELEASED.md 14.2/14.8)
    weight_symmetric: bool = True
    act_symmetric: bool = True
    ema_momentum: float = 0.95

    # ---- derived -------------------------------------------------------------------
    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.version != CONFIG_VERSION:
            raise ValueError(f"config version {self.version} unsupported (want {CONFIG_VERSION})")
        if self.weight_bits not in INT_BITS:
            raise ValueError(f"weight_bits must be one of {INT_BITS}, got {self.weight_bits}")
        if self.act_bits not in INT_BITS:
            raise ValueError(f"act_bits must be one of {INT_BITS}, got {self.act_bits}")
        if self.fp8 and (self.weight_bits != 8 or self.act_bits != 8):
            raise ValueError("fp8 needs weight_bits=8 and act_bits=8")
        for key in ("embedder_weight_bits", "modulation_weight_bits"):
            if getattr(self, key) not in (None, 4, 8):
                raise ValueError(f"{key} must be None, 4 or 8, got {getattr(self, key)}")
        if self.act_center and self.act_mode != "dynamic":
            raise ValueError("act_center needs act_mode='dynamic'")
        if self.cfg_delta and self.act_mode != "dynamic":
            raise ValueError("cfg_delta needs act_mode='dynamic' (per-token scales)")
        if self.weight_rounding not in ("nearest", "gptq"):
            raise ValueError(f"weight_rounding must be nearest or gptq, got {self.weight_rounding!r}")
        if self.low_rank < 0:
            raise ValueError(f"low_rank must be >= 0, got {self.low_rank}")
        if self.low_rank and (self.fp8 or self.faithful):
            raise ValueError("low_rank is for integer weights (not fp8 or faithful presets)")
        if self.fp8 and (self.weight_rounding == "gptq" or self.weight_clip_search):
            raise ValueError("weight_clip_search and gptq rounding are for integer weights, "
                             "not fp8")
        if self.act_mode not in ("static", "dynamic"):
            raise ValueError(f"act_mode must be static or dynamic, got {self.act_mode!r}")
        if self.rotation not in ("none", "hadamard", "duquant"):
            raise ValueError(f"unknown rotation {self.rotation!r}")
        rb = self.rotation_block_size
        if rb < 1 or rb & (rb - 1):
            raise ValueError(f"rotation_block_size must be a power of two, got {rb}")
        if self.num_groups < 1:
            raise ValueError("num_groups must be >= 1")
        b = self.group_boundaries
        if b is not None:
            if len(b) != self.num_groups - 1:
                raise ValueError(f"{self.num_groups} groups need {self.num_groups - 1} boundaries")
            if list(b) != sorted(b) or any(not 0 < v < TIMESTEP_SCALE for v in b):
                raise ValueError(f"group boundaries must be ascending inside (0, 1000): {b}")
        if not self.clip_grid or any(not 0 < c <= 1.5 for c in self.clip_grid):
            raise ValueError(f"clip_grid values must be in (0, 1.5]: {self.clip_grid}")

    def boundaries(self) -> list[float]:
        """Interior cut points (explicit or uniform over [0, 1000])."""
        if self.group_boundaries is not None:
            return [float(v) for v in self.group_boundaries]
        step = TIMESTEP_SCALE / self.num_groups
        return [step * i for i in range(1, self.num_groups)]

    @property
    def faithful(self) -> bool:
        return self.rotation == "duquant"

    # ---- serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown QuantConfig fields: {unknown}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)

    @classmethod
    def from_json(cls, text: str) -> QuantConfig:
        return cls.from_dict(json.loads(text))

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=True)

    @classmethod
    def from_yaml(cls, text: str) -> QuantConfig:
        import yaml

        data = yaml.safe_load(text)
        if not isinstance(data, dict):
            raise TypeError("YAML config must be a mapping")
        return cls.from_dict(data)

    @classmethod
    def from_file(cls, path: str | Path) -> QuantConfig:
        path = Path(path)
        text = path.read_text()
        return cls.from_json(text) if path.suffix == ".json" else cls.from_yaml(text)

    def config_hash(self) -> str:
        """sha256 over the canonical JSON (the name is part of the recipe's identity)."""
        canon = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()

    def replace(self, **changes: Any) -> QuantConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def preset(cls, name: str) -> QuantConfig:
        try:
            builder = PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown quant preset {name!r}; known: {preset_names()}") from None
        return builder()


def _chain(
    bits: int, act_bits: int, name: str, stage: int, act_mode: ActMode = "dynamic"
) -> QuantConfig:
    """Ablation stage 0..4: minmax, +rot, +groups, +search, +cfg-wise (full).

    The CFG-wise stage searches the activation clip per CFG half against the guided
    output's error, calibrates the integer weights on the guided rows
    (trdq/calibration/search.py ``_weight_rows``) and, with per-token activations, quantizes
    cond rows as deltas from their uncond rows (``cfg_delta``).

    The search stage also calibrates the integer weights: a clip per output channel
    (``weight_clip_search``) and GPTQ rounding (``weight_rounding``), both from the
    calibration rows (the W4A8 lever; at W8A8 +0.2-0.6 dB to FP; docs/QUALITY.md), and
    with 4-bit weights fits the low-rank error branch (``low_rank``, trdq/low_rank.py).

    Every stage quantizes activations the way the full method does (``act_mode``): the
    chain isolates rotation, groups, search and CFG-wise, not the activation mode. With
    per-token activations the rotation stage also centres each token (``act_center``):
    a rotation gathers a token's mean into one channel per block, and centring removes
    that outlier it would otherwise create.
    """
    return QuantConfig(
        name=name,
        weight_bits=bits,
        act_bits=act_bits,
        act_mode=act_mode,
        act_center=act_mode == "dynamic" and stage >= 1,
        rotation="hadamard" if stage >= 1 else "none",
        num_groups=8 if stage >= 2 else 1,
        search=stage >= 3,
        weight_clip_search=stage >= 3,
        weight_rounding="gptq" if stage >= 3 else "nearest",
        low_rank=LOW_RANK_W4 if bits == 4 and stage >= 3 else 0,
        cfg_wise=stage >= 4,
        cfg_delta=stage >= 4 and act_mode == "dynamic",
        modulation_weight_bits=4 if bits == 4 else 8,
    )


def _faithful(bits: int, act_bits: int, name: str) -> QuantConfig:
    return QuantConfig(
        name=name,
        weight_bits=bits,
        act_bits=act_bits,
        act_mode="dynamic",
        num_groups=20,
        rotation="duquant",
        smoothing=True,
        smoothing_alpha=0.11,
        search=False,
        cfg_wise=False,
        cfg_split=True,
        weight_symmetric=False,
        act_symmetric=False,
        ema_momentum=0.5,
        embedder_weight_bits=None,  # the released code keeps them in full precision
        modulation_weight_bits=None,
    )


PRESETS: dict[str, Any] = {
    "fp": lambda: QuantConfig(name="fp", enabled=False, num_groups=1, search=False,
                              cfg_wise=False, rotation="none"),
    # the GPU speed path: static per-group scales need no per-token reduction, so the
    # fused rotate+quantize kernel and CUDA graphs carry it (docs/BENCHMARKS.md)
    "fp8": lambda: QuantConfig(name="fp8", fp8=True, act_mode="static"),
    # fp8 without the Hadamard rotation: e4m3's exponent absorbs what the rotation spreads,
    # and with nothing to rotate the activation quantization is elementwise, fused by
    # torch.compile into the op before each linear (no quantizer pass; cuda_fp8)
    "fp8-norot": lambda: QuantConfig(name="fp8-norot", fp8=True, act_mode="static",
                                     rotation="none"),
    "faithful": lambda: _faithful(8, 8, "faithful"),
}
# the full method at 7-bit activations: the fast exact int8 path of AVX2 CPUs (cpu_int8)
PRESETS["w8a7"] = lambda: _chain(8, 7, "w8a7", 4)
_STAGES = ("-minmax", "-rot", "-rot-groups", "-rot-groups-search", "")
for _wb, _ab in BIT_PAIRS:
    _base = f"w{_wb}a{_ab}"
    _fname = "faithful" if _base == "w8a8" else f"faithful-{_base}"
    if _base != "w8a8":
        PRESETS[_fname] = lambda w=_wb, a=_ab, n=_fname: _faithful(w, a, n)
    # the released algorithm with ONE time range: what its per-range weights (a differently
    # smoothed, rotated and rounded weight copy per range) add over a single copy
    PRESETS[_fname + "-1range"] = (
        lambda w=_wb, a=_ab, n=_fname + "-1range": _faithful(w, a, n).replace(num_groups=1))
    for _stage, _suffix in enumerate(_STAGES):
        PRESETS[_base + _suffix] = (
            lambda w=_wb, a=_ab, n=_base + _suffix, s=_stage: _chain(w, a, n, s))
        # the same chain with static per-group (per CFG half) activation scales
        _static = _base + _suffix + "-static"
        PRESETS[_static] = lambda w=_wb, a=_ab, n=_static, s=_stage: _chain(w, a, n, s, "static")
    # the search stage with ONE timestep group: beside -rot-groups-search it isolates what
    # the time dimension adds to the search (with per-token scales and no search, groups
    # alone carry only a clip ratio of 1, so -rot-groups equals -rot there)
    for _mode in ("", "-static"):
        PRESETS[_base + "-rot-search" + _mode] = (
            lambda w=_wb, a=_ab, n=_base + "-rot-search" + _mode, m=_mode:
            _chain(w, a, n, 3, "static" if m else "dynamic").replace(num_groups=1))


def preset_names() -> list[str]:
    return sorted(PRESETS)
