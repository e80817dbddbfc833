"""Saved quantized models (``trdq.save`` / ``trdq.load``, ``trdq.checkpoint``): canonical
weights that load without calibrating, bit for bit, on any backend, and a clear error for
an artifact that is damaged or belongs to another model."""

from __future__ import annotations

import shutil

import pytest
import torch

from tests.helpers.quant import fast, run_image
from trdq import api
from trdq.cache import CalibrationCacheError, Fingerprint, read_artifact, write_artifact
from trdq.testing.tiny import TINY_PROMPTS, tiny_pixart_pipeline


def _no_calibration(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("loading a saved model calibrated")

    monkeypatch.setattr(api, "calibrate_pipeline", refuse)


def _canonical(pipe) -> dict[str, tuple[torch.Tensor, ...]]:
    state = api.get_state(pipe)
    return {name: (*layer.canonical_weights(), layer.act_scale_by_group,
                   layer.clip_ratio_by_group)
            for name, layer in state.layers.items()}


@pytest.mark.parametrize("preset", ["w8a8", "w4a8"])
def test_saved_model_loads_bit_identical_on_any_cpu_backend(tmp_path, monkeypatch, preset):
    """Saved from cpu_int8, loaded on cpu_int8: the same images, bit for bit. Loaded on
    the reference backend: the same canonical weights, and the images of the model
    quantized directly on the reference backend (same calibration, from the cache); and
    the other way round."""
    config = fast(preset, num_groups=2)
    cache = tmp_path / "cache"
    on_int8 = tiny_pixart_pipeline()
    api.quantize(on_int8, config, cache_dir=cache, backend="cpu_int8", progress=False,
                 calibration_prompts=TINY_PROMPTS)
    on_ref = tiny_pixart_pipeline()
    api.quantize(on_ref, config, cache_dir=cache, backend="reference", progress=False,
                 calibration_prompts=TINY_PROMPTS)
    assert api.get_state(on_ref).report.cache == ["hit"]
    images = {"cpu_int8": run_image(on_int8, TINY_PROMPTS[:1], steps=4),
              "reference": run_image(on_ref, TINY_PROMPTS[:1], steps=4)}
    api.save(on_int8, tmp_path / "from-int8")
    api.save(on_ref, tmp_path / "from-ref")
    manifest = read_artifact(tmp_path / "from-int8").manifest
    assert manifest["contents"] == "weights" and manifest["config"]["name"] == config.name

    _no_calibration(monkeypatch)
    for saved in ("from-int8", "from-ref"):
        for backend in ("cpu_int8", "reference"):
            fresh = tiny_pixart_pipeline()
            report = api.load(fresh, tmp_path / saved, backend=backend)
            assert report.backend == backend and report.replaced == sorted(
                api.get_state(on_int8).layers)
            assert torch.equal(run_image(fresh, TINY_PROMPTS[:1], steps=4), images[backend])
            for name, tensors in _canonical(fresh).items():
                for got, want in zip(tensors, _canonical(on_int8)[name]):
                    assert torch.equal(got, want), name


def test_a_cache_artifact_loads_like_a_saved_model(tmp_path, monkeypatch):
    """The calibration cache's artifacts are the same format without the weights: ``load``
    takes one too and quantizes the model's float weights with it."""
    config = fast("w8a8", num_groups=2)
    pipe = tiny_pixart_pipeline()
    report = api.quantize(pipe, config, cache_dir=tmp_path, progress=False,
                          calibration_prompts=TINY_PROMPTS)
    _no_calibration(monkeypatch)
    fresh = tiny_pixart_pipeline()
    api.load(fresh, tmp_path / report.calibration_id)
    torch.testing.assert_close(run_image(fresh, TINY_PROMPTS[:1], steps=3),
                               run_image(pipe, TINY_PROMPTS[:1], steps=3), rtol=0, atol=0)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    directory = tmp_path_factory.mktemp("saved") / "model"
    pipe = tiny_pixart_pipeline()
    api.quantize(pipe, fast("w8a8", num_groups=2), progress=False,
                 calibration_prompts=TINY_PROMPTS)
    api.save(pipe, directory)
    return directory


def _copy(saved, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(saved, target)
    return target


def test_load_refuses_a_corrupted_or_truncated_file(saved, tmp_path):
    damaged = _copy(saved, tmp_path)
    tensors = damaged / "tensors.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-5] ^= 0xFF
    tensors.write_bytes(bytes(data))
    with pytest.raises(CalibrationCacheError, match="checksum"):
        api.load(tiny_pixart_pipeline(), damaged)
    tensors.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CalibrationCacheError, match="truncated"):
        api.load(tiny_pixart_pipeline(), damaged)
    (damaged / "manifest.json").unlink()
    with pytest.raises(CalibrationCacheError, match="manifest missing"):
        api.load(tiny_pixart_pipeline(), damaged)


def test_load_refuses_another_models_artifact(saved):
    other = tiny_pixart_pipeline()
    with torch.no_grad():
        other.transformer.proj_out.weight.add_(0.01)
    with pytest.raises(CalibrationCacheError, match="different model"):
        api.load(other, saved)
    assert api.get_state(other) is None
    api.load(other, saved, check_model=False)  # asked for: the saved layers, this model's rest
    assert api.get_state(other).report.replaced


def test_load_names_the_layer_whose_weights_do_not_fit(saved, tmp_path):
    loaded = read_artifact(saved)
    manifest = loaded.manifest
    name = manifest["layers"][0]
    tensors = dict(loaded.tensors)
    tensors[f"{name}/weight_scale"] = tensors[f"{name}/weight_scale"][:-1].contiguous()
    extra = {k: v for k, v in manifest.items()
             if k not in ("id", "format_version", "fingerprints", "library_version", "created",
                          "files")}
    bad = write_artifact(tmp_path / "bad", Fingerprint(**manifest["fingerprints"]), tensors, extra)
    with pytest.raises(CalibrationCacheError, match=f"{name}: weight scales"):
        api.load(tiny_pixart_pipeline(), bad)
    del tensors[f"{name}/qweight"]
    bad = write_artifact(tmp_path / "bad", Fingerprint(**manifest["fingerprints"]), tensors, extra)
    with pytest.raises(CalibrationCacheError, match="qweight"):
        api.load(tiny_pixart_pipeline(), bad)
