"""Several precisions of one model in one server: each variant gets its own denoiser."""

from __future__ import annotations

import pytest
import torch

from server.engine.models import load_models
from server.metrics import Metrics
from tests.helpers.serving import make_settings_with_video


@pytest.mark.slow  # calibrates w8a7 (no shipped artifact): ~1-2 min on 2 cores
def test_three_precisions_load_each_with_its_own_denoiser(tmp_path):
    """Copying the denoiser after another variant was quantized and profiled copied that
    variant's hook handles too, which cannot be copied (a TypeError at start-up)."""
    settings = make_settings_with_video(tmp_path, quant="fp,w8a8,w8a7", video_model="none", warmup=False)
    models = load_models(settings, Metrics(), torch.device("cpu"))
    served = models.all()
    assert [m.quant for m in served] == ["fp", "w8a8", "w8a7"]
    denoisers = {id(m.pipe.transformer) for m in served}
    assert len(denoisers) == 3
