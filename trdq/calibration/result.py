"""What calibration produces, and its flat ``{name/key: tensor}`` form for the cache's
safetensors artifacts (trdq/cache.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from trdq import primitives as P
from trdq.quant_transforms import LayerQuantParams
from trdq.rotation import DuQuantRotation

__all__ = ["LOW_RANK_KEYS", "CalibrationResult", "FaithfulParams"]

#: ``LayerQuantParams`` fields of the low-rank error branch (trdq/low_rank.py)
LOW_RANK_KEYS = ("low_rank_up", "low_rank_down")


@dataclass
class FaithfulParams:
    smooth_by_range: torch.Tensor  # [R, K]
    rotations: list[DuQuantRotation] | None


@dataclass
class CalibrationResult:
    params: dict[str, LayerQuantParams] = field(default_factory=dict)
    faithful: dict[str, FaithfulParams] = field(default_factory=dict)
    seconds: float = 0.0
    timesteps: list[float] = field(default_factory=list)
    groups_seen: list[int] = field(default_factory=list)

    # ---- (de)serialisation to flat safetensors dicts -----------------------------------
    def to_tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, p in self.params.items():
            out[f"{name}/rotation_block"] = torch.tensor(p.rotation_block or 0, dtype=torch.int64)
            out[f"{name}/act_scale_by_group"] = p.act_scale_by_group.float().cpu().contiguous()
            out[f"{name}/clip_ratio_by_group"] = p.clip_ratio_by_group.float().cpu().contiguous()
            if p.smooth_divisor is not None:
                out[f"{name}/smooth_divisor"] = p.smooth_divisor.float().cpu().contiguous()
            if p.weight_clip is not None:
                out[f"{name}/weight_clip"] = p.weight_clip.float().cpu().contiguous()
            if p.weight_q is not None:
                out[f"{name}/weight_q"] = P.store_int_weights(p.weight_q)
            for key in LOW_RANK_KEYS:
                if getattr(p, key) is not None:
                    out[f"{name}/{key}"] = getattr(p, key).float().cpu().contiguous()
        for name, f in self.faithful.items():
            out[f"{name}/smooth_by_range"] = f.smooth_by_range.float().cpu().contiguous()
            if f.rotations is not None:
                out[f"{name}/r0"] = torch.stack([r.r0 for r in f.rotations]).contiguous()
                out[f"{name}/perm"] = torch.stack([r.perm for r in f.rotations]).contiguous()
                out[f"{name}/r1"] = torch.stack([r.r1 for r in f.rotations]).contiguous()
        return out

    @classmethod
    def from_tensors(
        cls, tensors: dict[str, torch.Tensor], layer_names: list[str], faithful: bool,
        weight_clip: bool = False, weight_q: bool = False, low_rank: bool = False,
    ) -> CalibrationResult:
        """Rebuild from ``to_tensors`` output; raises KeyError naming a missing tensor
        (``weight_clip`` / ``weight_q`` / ``low_rank``: the config calibrated them, so every
        layer must have them)."""
        result = cls()
        for name in layer_names:
            if faithful:
                rots = None
                if f"{name}/r0" in tensors:
                    r0, perm, r1 = (tensors[f"{name}/{k}"] for k in ("r0", "perm", "r1"))
                    rots = [DuQuantRotation(r0[i], perm[i], r1[i]) for i in range(r0.shape[0])]
                result.faithful[name] = FaithfulParams(tensors[f"{name}/smooth_by_range"], rots)
            else:
                block = int(tensors[f"{name}/rotation_block"])
                result.params[name] = LayerQuantParams(
                    rotation_block=block or None,
                    smooth_divisor=tensors.get(f"{name}/smooth_divisor"),
                    act_scale_by_group=tensors[f"{name}/act_scale_by_group"],
                    clip_ratio_by_group=tensors[f"{name}/clip_ratio_by_group"],
                    weight_clip=tensors[f"{name}/weight_clip"] if weight_clip else None,
                    weight_q=P.load_int_weights(tensors[f"{name}/weight_q"]) if weight_q else None,
                    **{key: tensors[f"{name}/{key}"] if low_rank else None for key in LOW_RANK_KEYS},
                )
        return result
