"""Calibration cache: hit, miss, truncated, corrupted, mismatched, refused, concurrent."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from tests.helpers.quant import fast
from trdq import api
from trdq.cache import (
    CalibrationCacheError,
    Fingerprint,
    model_fingerprint,
    read_artifact,
    write_artifact,
)
from trdq.testing.tiny import TINY_PROMPTS, tiny_pixart_pipeline, tiny_pixart_transformer

CFG = fast("w8a8", num_groups=2, calib_num_prompts=2, calib_steps=4, search=False)


def _quantize(cache_dir, **kw):
    pipe = tiny_pixart_pipeline()
    report = api.quantize(pipe, CFG, cache_dir=cache_dir, progress=False,
                          calibration_prompts=TINY_PROMPTS, **kw)
    return pipe, report


def _artifact(cache_dir) -> Path:  # noqa: F821
    dirs = [p for p in cache_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(dirs) == 1
    return dirs[0]


def test_unit_write_read_and_each_failure(tmp_path):
    fp = Fingerprint("m", "c", "k")
    tensors = {"a/act": torch.arange(6.0).reshape(3, 2)}
    path = write_artifact(tmp_path / fp.id, fp, tensors, {"config": {}})
    ok = read_artifact(path, fp)
    assert ok.status == "hit" and torch.equal(ok.tensors["a/act"], tensors["a/act"])
    assert ok.manifest["fingerprints"]["model"] == "m" and "created" in ok.manifest
    assert read_artifact(tmp_path / "nothing", fp).status == "miss"
    assert read_artifact(path, Fingerprint("other", "c", "k")).status == "invalid"
    data = (path / "tensors.safetensors").read_bytes()
    (path / "tensors.safetensors").write_bytes(data[:-7])
    assert "truncated" in read_artifact(path, fp).reason
    flipped = bytearray(data)
    flipped[-1] ^= 0xFF
    (path / "tensors.safetensors").write_bytes(bytes(flipped))
    assert "checksum" in read_artifact(path, fp).reason
    (path / "manifest.json").write_text("{not json")
    assert read_artifact(path, fp).status == "invalid"
    (path / "manifest.json").unlink()
    assert "manifest missing" in read_artifact(path, fp).reason
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_model_fingerprint_tracks_weights():
    a, b = tiny_pixart_transformer(0), tiny_pixart_transformer(0)
    assert model_fingerprint(a) == model_fingerprint(b)
    with torch.no_grad():
        b.proj_out.weight[0, 0] += 1e-3
    assert model_fingerprint(a) != model_fingerprint(b)


def test_miss_then_hit_skips_calibration(tmp_path):
    _, cold = _quantize(tmp_path)
    assert cold.cache == ["miss"] and cold.calibration_id
    pipe, warm = _quantize(tmp_path)
    assert warm.cache == ["hit"] and warm.calibration_id == cold.calibration_id
    state = api.get_state(pipe)
    assert state.calibration.timesteps == []  # nothing ran
    manifest = json.loads((_artifact(tmp_path) / "manifest.json").read_text())
    assert manifest["config"]["name"] == "w8a8" and manifest["calibration_seconds"] > 0
    assert set(manifest["fingerprints"]) == {"model", "config", "calibration", "method",
                                             "format_version"}


def test_a_new_calibration_method_misses_earlier_artifacts(tmp_path):
    """An artifact cached by an earlier calibration method is not served: the method's
    version is part of the fingerprint (``trdq.calibration.METHOD_VERSION``)."""
    from trdq.calibration import METHOD_VERSION

    fp = Fingerprint("m", "c", "k", method=METHOD_VERSION)
    earlier = Fingerprint("m", "c", "k", method=METHOD_VERSION - 1)
    assert fp.id != earlier.id
    path = write_artifact(tmp_path / earlier.id, earlier, {"x": torch.ones(2)}, {})
    assert read_artifact(tmp_path / fp.id, fp).status == "miss"
    assert read_artifact(path, fp).status == "invalid"  # and never mistaken for it


@pytest.mark.parametrize("damage", [pytest.param("truncate", marks=pytest.mark.slow),
                                    pytest.param("corrupt", marks=pytest.mark.slow),
                                    "mismatch", "manifest", "contents"])
def test_invalid_artifacts_are_rebuilt(tmp_path, damage):
    _quantize(tmp_path)
    art = _artifact(tmp_path)
    tensors = art / "tensors.safetensors"
    manifest_path = art / "manifest.json"
    if damage == "truncate":
        tensors.write_bytes(tensors.read_bytes()[: tensors.stat().st_size // 2])
    elif damage == "corrupt":
        data = bytearray(tensors.read_bytes())
        data[len(data) // 2] ^= 0x55
        tensors.write_bytes(bytes(data))
    elif damage == "mismatch":
        manifest = json.loads(manifest_path.read_text())
        manifest["fingerprints"]["config"] = "0" * 64
        manifest_path.write_text(json.dumps(manifest))
    elif damage == "manifest":
        manifest_path.unlink()
    else:  # a valid file whose tensors do not match the model's layers
        from safetensors.torch import save_file

        from trdq.cache import _sha256_file

        save_file({"x": torch.zeros(1)}, str(tensors))
        manifest = json.loads(manifest_path.read_text())
        manifest["files"]["tensors.safetensors"] = {"sha256": _sha256_file(tensors),
                                                     "bytes": tensors.stat().st_size}
        manifest_path.write_text(json.dumps(manifest))
    _, report = _quantize(tmp_path)
    assert report.cache == ["invalid", "miss"], report.cache_reason
    _, again = _quantize(tmp_path)
    assert again.cache == ["hit"]


def test_invalid_artifact_refused_when_recalibration_disabled(tmp_path):
    _quantize(tmp_path)
    tensors = _artifact(tmp_path) / "tensors.safetensors"
    tensors.write_bytes(b"garbage")
    with pytest.raises(CalibrationCacheError, match="invalid.*recalibration is disabled"):
        _quantize(tmp_path, recalibrate_on_invalid=False)


def test_two_concurrent_quantizations_calibrate_once(tmp_path):
    # (build first: the seeded builders use the global RNG and are not thread-safe)
    pipes = [tiny_pixart_pipeline(), tiny_pixart_pipeline()]
    results = []

    def worker(pipe):
        report = api.quantize(pipe, CFG, cache_dir=tmp_path, progress=False,
                              calibration_prompts=TINY_PROMPTS)
        results.append(report.cache)

    threads = [threading.Thread(target=worker, args=(p,)) for p in pipes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(map(tuple, results)) == [("hit",), ("miss",)]
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 1
