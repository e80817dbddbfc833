"""A shipped calibration artifact seeds an empty cache; a broken one is not used."""

import shutil

import torch

from trdq.cache import CalibrationCache, Fingerprint, write_artifact


def _fingerprint() -> Fingerprint:
    return Fingerprint(model="m" * 16, config="c" * 16, calibration="p" * 16)


def test_seed_copies_a_shipped_artifact_then_loads_it(tmp_path):
    fingerprint = _fingerprint()
    shipped = tmp_path / "shipped"
    write_artifact(shipped / fingerprint.id, fingerprint, {"x": torch.ones(3)}, {})
    cache = CalibrationCache(tmp_path / "cache")
    with cache.lock(fingerprint):
        assert cache.seed_from(shipped, fingerprint)
        assert not cache.seed_from(shipped, fingerprint)  # already there: left alone
        loaded = cache.load(fingerprint)
    assert loaded.status == "hit"
    assert torch.equal(loaded.tensors["x"], torch.ones(3))


def test_a_corrupted_shipped_artifact_is_reported_invalid(tmp_path):
    fingerprint = _fingerprint()
    shipped = tmp_path / "shipped"
    path = write_artifact(shipped / fingerprint.id, fingerprint, {"x": torch.ones(64)}, {})
    tensors = next(p for p in path.iterdir() if p.suffix == ".safetensors")
    tensors.write_bytes(tensors.read_bytes()[:-16])  # truncated
    cache = CalibrationCache(tmp_path / "cache")
    with cache.lock(fingerprint):
        cache.seed_from(shipped, fingerprint)
        assert cache.load(fingerprint).status == "invalid"


def test_nothing_shipped_means_nothing_seeded(tmp_path):
    cache = CalibrationCache(tmp_path / "cache")
    assert not cache.seed_from(tmp_path / "none", _fingerprint())
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)
