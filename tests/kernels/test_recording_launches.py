"""``recording_launches`` (kernels.launch): which launches are recorded into a CUDA graph, and
the W8A8 GEMM's TMA choice that depends on it (``TRDQ_GEMM_TMA``)."""

from __future__ import annotations

import threading

import pytest

from trdq.kernels import triton_w4a8
from trdq.kernels.launch import launches_recorded, recording_launches


def test_recording_is_scoped_and_nests():
    assert not launches_recorded()
    with recording_launches():
        assert launches_recorded()
        with recording_launches():
            assert launches_recorded()
        assert launches_recorded()
    assert not launches_recorded()


def test_recording_ends_when_the_block_raises():
    with pytest.raises(RuntimeError), recording_launches():
        raise RuntimeError("capture failed")
    assert not launches_recorded()


def test_recording_is_per_thread():
    """The server's per-GPU workers are threads: one capturing must not switch the others."""
    seen = []
    with recording_launches():
        worker = threading.Thread(target=lambda: seen.append(launches_recorded()))
        worker.start()
        worker.join()
    assert seen == [False]


@pytest.mark.parametrize(
    "mode,recorded,wanted",
    [("graphs", False, False), ("graphs", True, True), ("1", False, True), ("0", True, False)],
)
def test_gemm_tma_follows_mode_and_recording(monkeypatch, mode, recorded, wanted):
    monkeypatch.setattr(triton_w4a8, "TMA_MODE", mode)
    if recorded:
        with recording_launches():
            assert triton_w4a8._tma_wanted() is wanted
    else:
        assert triton_w4a8._tma_wanted() is wanted


def test_the_launch_lock_is_reentrant():
    """A CUDA graph capture holds it and launches kernels, whose launches take it again (and
    a kernel's first launch tunes, i.e. captures): a plain lock would deadlock there."""
    from trdq.kernels.launch import TRITON_LAUNCH_LOCK

    with TRITON_LAUNCH_LOCK, TRITON_LAUNCH_LOCK:
        pass
