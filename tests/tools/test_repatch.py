"""Warm-starting a DiT at a finer patch size (`trdq.tools.zoo_training.repatch`) and the DiT
loss weighting (`trdq.tools.zoo_training.dit.loss_weight`)."""

from __future__ import annotations

import pytest
import torch

from trdq.tools.zoo_training.dit import DiTConfig, loss_weight
from trdq.tools.zoo_training.loop import NoiseSchedule
from trdq.tools.zoo_training.repatch import repatch_state, saved_patch_size
from trdq.zoo import architectures as arch


def _pixart(patch_size: int, seed: int = 0):
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(seed)
    config = dict(arch.t2i_transformer(patch_size), num_layers=1)
    return PixArtTransformer2DModel(**config).eval()


def test_repatch_keeps_blocks_and_smooth_inputs():
    coarse, fine = _pixart(2), _pixart(1, seed=1)
    state = repatch_state(coarse.state_dict(), 1)
    assert saved_patch_size(state) == 1
    fine.load_state_dict(state)  # strict: every key and shape fits the patch-1 model
    for key, value in coarse.state_dict().items():
        if not key.startswith(("pos_embed.proj", "proj_out")):
            assert torch.equal(state[key], value)
    # A constant latent embeds to the same token (before the position embedding).
    latent = torch.full((1, 4, 16, 16), 0.7)
    with torch.no_grad():
        assert torch.allclose(
            coarse.pos_embed.proj(latent)[..., 0, 0], fine.pos_embed.proj(latent)[..., 0, 0]
        )
    # The output rows are the means of the old 2x2 sub-positions' rows.
    old_rows = coarse.proj_out.weight.view(2, 2, 8, -1)
    assert torch.allclose(fine.proj_out.weight, old_rows.mean(dim=(0, 1)))
    # Patch-1 tokens sit on the patch-2 grid's coordinates (0, 0.5, 1, ...).
    assert torch.allclose(fine.pos_embed.pos_embed[0, 0], coarse.pos_embed.pos_embed[0, 0])
    assert torch.allclose(fine.pos_embed.pos_embed[0, 34], coarse.pos_embed.pos_embed[0, 9])


def test_repatch_same_size_is_identity_and_rejects_non_divisors():
    state = _pixart(2).state_dict()
    assert repatch_state(state, 2) is state
    with pytest.raises(ValueError, match="not a divisor"):
        repatch_state(repatch_state(state, 1), 2)


def test_loss_weight_power():
    schedule = NoiseSchedule(torch.device("cpu"))
    t = torch.tensor([0, 500, 999])
    v = loss_weight(schedule, t, DiTConfig(loss_weight_power=1.0))
    assert torch.allclose(v, schedule.v_weight[t])
    balanced = loss_weight(schedule, t, DiTConfig())
    assert torch.allclose(balanced, schedule.v_weight[t].sqrt())
