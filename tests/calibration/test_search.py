"""The per-group activation search (``trdq.calibration.search``): the rows it sees do not
depend on the number of groups."""

from __future__ import annotations

import torch

from tests.helpers.quant import fast
from trdq.calibration.collect import StatsCollector
from trdq.calibration.search import _weight_rows
from trdq.timestep import GroupMap, QuantContext


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
