"""Calibration (``trdq.calibrate``, ``trdq.calibration``): weights calibrated with the
activations and kept in the result, one result per seed, prompts from a text file."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.quant import fast, run_image
from trdq import api
from trdq.calibration import CalibrationResult
from trdq.config import QuantConfig
from trdq.testing.tiny import TINY_PROMPTS, tiny_pixart_pipeline


def test_w4a8_calibrated_weights_are_stored_and_reloaded(tmp_path):
    """The full W4A8 recipe calibrates its weights (a clip per output channel, GPTQ
    rounding, the low-rank error branch); the integers the served layers hold are the calibrated ones, they travel
    with the artifact, and an artifact that lacks them is refused so the cache rebuilds."""
    pipe = tiny_pixart_pipeline()
    config = fast("w4a8", num_groups=2)
    assert config.weight_clip_search and config.weight_rounding == "gptq"
    for name in ("w8a8-rot-groups", "w4a8-rot-groups"):  # before the search stage
        plain = QuantConfig.preset(name)
        assert not plain.weight_clip_search and plain.weight_rounding == "nearest"
    api.quantize(pipe, config, progress=False, calibration_prompts=TINY_PROMPTS)
    calib = api.get_state(pipe).calibration
    params = calib.params
    assert all(p.weight_clip.min() >= 0.6 and p.weight_clip.max() <= 1.0 for p in params.values())
    assert any(bool((p.weight_clip < 1.0).any()) for p in params.values())
    name = min(params)
    layer = pipe.transformer.get_submodule(name)
    assert torch.equal(layer.backend.unpack(layer.packed)[0], params[name].weight_q)
    out = run_image(pipe, TINY_PROMPTS[:1], steps=4)
    api.save(pipe, tmp_path / "artifact")
    fresh = tiny_pixart_pipeline()
    assert api.load(fresh, tmp_path / "artifact").cache == ["hit"]
    torch.testing.assert_close(run_image(fresh, TINY_PROMPTS[:1], steps=4), out)
    tensors = calib.to_tensors()
    assert tensors[f"{name}/weight_q"].dtype == torch.uint8  # stored packed, 4 bits
    assert layer.low_rank_up is not None  # the W4 search stage's error branch travels too
    for key in ("weight_clip", "weight_q", "low_rank_up", "low_rank_down"):
        broken = {k: v for k, v in tensors.items() if k != f"{name}/{key}"}
        with pytest.raises(KeyError, match=key):
            CalibrationResult.from_tensors(broken, sorted(params), faithful=False,
                                           weight_clip=True, weight_q=True, low_rank=True)


def test_calibration_is_deterministic_for_a_seed():
    cfg = fast("w8a8", num_groups=2, calib_num_prompts=2, calib_steps=4)
    a = api.calibrate(tiny_pixart_pipeline(), cfg, TINY_PROMPTS, seed=3, progress=False)
    b = api.calibrate(tiny_pixart_pipeline(), cfg, TINY_PROMPTS, seed=3, progress=False)
    ta, tb = a.to_tensors(), b.to_tensors()
    assert ta.keys() == tb.keys()
    for key in ta:
        torch.testing.assert_close(ta[key], tb[key])
    assert a.seconds > 0 and a.timesteps


def test_prompts_from_text_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# comment\na red circle\n\na blue square\n")
    from trdq.calibration import load_prompts

    assert load_prompts(path) == ["a red circle", "a blue square"]
