"""FaithfulLinear runs where its weight is: the host-side calibration tensors move with it
(on CUDA the faithful preset failed with a cuda/cpu mismatch). The meta device stands in
for the GPU, so the check runs on CPU-only CI."""

from __future__ import annotations

import torch
from torch import nn

from trdq.nn import FaithfulLinear
from trdq.rotation import DuQuantRotation
from trdq.timestep import QuantContext


def test_calibration_buffers_follow_the_weight_device():
    linear = nn.Linear(16, 8, device="meta")
    rotations = [DuQuantRotation.fit(torch.rand(16) + 0.1, 8) for _ in range(2)]
    layer = FaithfulLinear(linear, torch.ones(2, 16), rotations, QuantContext(), weight_bits=8)
    tensors = dict(layer.named_buffers()) | dict(layer.named_parameters())
    assert set(tensors) >= {"smooth_by_range", "r0", "perm", "r1", "weight", "bias"}
    assert all(t.device.type == "meta" for t in tensors.values()), {
        name: t.device for name, t in tensors.items()
    }
