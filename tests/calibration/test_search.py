"""The per-group activation search (``trdq.calibration.search``): a group keeps its own
clip only where it beats the clip shared by all groups by the configured margin; the
rows it sees do not depend on the number of groups."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.quant import fast
from trdq import api
from trdq.calibration.collect import StatsCollector
from trdq.calibration.search import _pick, _weight_rows
from trdq.testing.tiny import TINY_PROMPTS, tiny_pixart_pipeline
from trdq.timestep import GroupMap, QuantContext


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


def test_the_weight_rows_do_not_depend_on_the_group_count():
    """Rows are sampled per timestep bin, so one group and eight uniform groups calibrate
    the integer weights on the same rows (the ablation's "+ groups" changes only the
    per-group activation parameters)."""
    lin = torch.nn.Linear(32, 16)
    gen = torch.Generator().manual_seed(0)
    inputs = [(float(t), torch.randn(2, 40, 32, generator=gen))
              for t in torch.linspace(999, 0, 48)]
    weight_rows = {}
    for groups in (1, 8):
        config = fast("w4a8", num_groups=groups, calib_rows=16)
        context = QuantContext(num_groups=groups, cfg_active=True)
        group_map = GroupMap(tuple(config.boundaries()))
        collector = StatsCollector({"lin": lin}, config, context, seed=0)
        for t, x in inputs:
            context.timestep = t
            context.set_group(group_map.group_of(t))
            collector.observe("lin", x)
        stats = collector.stats["lin"]
        assert max(b.shape[0] for ts in stats.rows.values() for b in ts) <= 2 * config.calib_rows
        weight_rows[groups] = _weight_rows(stats, config)
    assert weight_rows[1].shape[0] > 8 * 16  # every bin's rows, not one bucket's
    torch.testing.assert_close(weight_rows[1], weight_rows[8])
