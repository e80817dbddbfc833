"""The per-group activation search (``trdq.calibration.search``): a group keeps its own
clip only where it beats the clip shared by all groups by the configured margin."""

from __future__ import annotations

import pytest
import torch

from tests.quant.helpers import fast
from trdq import api
from trdq.calibration.search import _pick
from trdq.testing.tiny import TINY_PROMPTS, tiny_pixart_pipeline


def test_pick_keeps_a_groups_own_clip_only_past_the_margin():
    errors = torch.tensor([1.0, 0.95, 0.5])
    assert _pick(errors, shared=0, margin=0.0) == 2
    assert _pick(errors, shared=0, margin=0.4) == 2    # 0.5 < 0.6
    assert _pick(errors, shared=0, margin=0.6) == 0    # 0.5 is not < 0.4
    assert _pick(errors, shared=2, margin=0.9) == 2    # the shared one is the group's best


@pytest.mark.parametrize("preset", ["w4a4-rot-groups-search", "w4a4", "w4a4-rot-groups-search-static"])
def test_a_large_margin_gives_every_group_the_shared_clip(preset):
    """With a margin no group can clear, every group serves one clip per CFG half (the
    lowest error over all groups' rows); with none, the groups' own clips differ."""
    def clips(margin):
        cfg = fast(preset, num_groups=4, group_clip_margin=margin)
        result = api.calibrate(tiny_pixart_pipeline(), cfg, TINY_PROMPTS, seed=0, progress=False)
        return {name: p.clip_ratio_by_group for name, p in result.params.items()}

    shared = clips(0.99)
    for ratio in shared.values():
        torch.testing.assert_close(ratio, ratio[:1].expand_as(ratio))
    own = clips(0.0)
    assert any(not torch.equal(r, r[:1].expand_as(r)) for r in own.values())


def test_the_margin_is_a_fraction():
    with pytest.raises(ValueError, match="group_clip_margin"):
        fast("w4a8", group_clip_margin=1.0)
