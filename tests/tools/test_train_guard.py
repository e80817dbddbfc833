"""The DiT trainer's divergence guard keeps the EMA weights of the last sane log point."""

from __future__ import annotations

import torch

from trdq.tools.zoo_training.dit import DiTConfig, _Trainer


def _run(spike_from: int | None, divergence_factor: float = 1.5):
    torch.manual_seed(0)
    module = torch.nn.Linear(4, 4)
    config = DiTConfig(
        steps=12, seconds=1e6, lr=1e-2, warmup_steps=1, log_every=2,
        divergence_factor=divergence_factor,
    )
    trainer = _Trainer("toy", [{"params": list(module.parameters()), "lr": config.lr}],
                       [module], config)
    calls, snapshots = [0], {}
    x = torch.randn(8, 4)

    def loss_fn() -> torch.Tensor:
        calls[0] += 1
        # the EMA as it stands after (calls - 1) optimizer steps
        snapshots[calls[0] - 1] = [s.clone() for s in trainer.emas[0].shadow]
        scale = 100.0 if spike_from is not None and calls[0] >= spike_from else 1.0
        return scale * module(x).pow(2).mean()

    return module, trainer.run(loss_fn), snapshots


def test_blow_up_ends_the_stage_with_the_last_good_ema():
    module, summary, snapshots = _run(spike_from=5)
    assert summary["diverged_at"] == 6 and summary["kept_step"] == 4
    assert summary["steps"] == 6
    for param, good in zip(module.parameters(), snapshots[4]):
        torch.testing.assert_close(param.detach(), good.to(param.dtype), rtol=0, atol=0)


def test_healthy_run_is_untouched():
    _, summary, _ = _run(spike_from=None)
    assert summary["diverged_at"] is None and summary["steps"] == 12
    assert summary["kept_step"] == 12


def test_guard_off_trains_through_the_spike():
    _, summary, _ = _run(spike_from=5, divergence_factor=0)
    assert summary["diverged_at"] is None and summary["steps"] == 12
