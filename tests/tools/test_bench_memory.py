"""trdq.tools.bench_memory: graph-pool bytes and per-stage peaks, with the CUDA counters faked
(the accounting logic is plain Python; CI has no GPU)."""

from __future__ import annotations

import torch
from torch import nn

from trdq.tools import bench_memory
from trdq.tools.bench_memory import StagePeaks, graph_pool_idle_bytes


def test_graph_pool_idle_bytes_counts_private_pools_only():
    snapshot = [
        {"segment_pool_id": (0, 0), "total_size": 1000, "allocated_size": 100},
        {"segment_pool_id": (1, 2), "total_size": 800, "allocated_size": 300},
        {"segment_pool_id": [1, 2], "total_size": 200, "allocated_size": 0},
    ]
    assert graph_pool_idle_bytes(snapshot) == 500 + 200
    assert graph_pool_idle_bytes([]) == 0


class _Counters:
    """Stand-ins for the CUDA memory counters: each component sets its own peak."""

    def __init__(self):
        self.peak = 0

    def install(self, monkeypatch):
        cuda = bench_memory.torch.cuda
        monkeypatch.setattr(cuda, "synchronize", lambda device=None: None)
        monkeypatch.setattr(cuda, "reset_peak_memory_stats", lambda device=None: self._reset())
        monkeypatch.setattr(cuda, "max_memory_allocated", lambda device=None: self.peak)
        monkeypatch.setattr(cuda, "memory_allocated", lambda device=None: 50_000_000)

    def _reset(self):
        self.peak = 0


class _Using(nn.Module):
    def __init__(self, counters, nbytes):
        super().__init__()
        self.counters, self.nbytes = counters, nbytes

    def forward(self, x):
        self.counters.peak = max(self.counters.peak, self.nbytes)
        return x


class _Vae:
    def __init__(self, counters):
        self.counters = counters

    def decode(self, x):
        self.counters.peak = max(self.counters.peak, 300_000_000)
        return x


class _Pipe:
    def __init__(self, counters):
        self.text_encoder = _Using(counters, 100_000_000)
        self.transformer = _Using(counters, 200_000_000)
        self.vae = _Vae(counters)

    def __call__(self):
        self.text_encoder(torch.zeros(1))
        for _ in range(3):
            self.transformer(torch.zeros(1))
        return self.vae.decode(torch.zeros(1))


def test_stage_peaks_attributes_each_stage_and_cleans_up(monkeypatch):
    counters = _Counters()
    counters.install(monkeypatch)
    pipe = _Pipe(counters)
    with StagePeaks(pipe, torch.device("cuda")) as stages:
        pipe()
    assert stages.peaks == {"encode": 100_000_000, "denoise": 200_000_000, "decode": 300_000_000}
    assert stages.report() == {"encode": 0.1, "denoise": 0.2, "decode": 0.3, "resident": 0.05}
    assert stages.report(extra_bytes=10**9)["decode"] == 1.3
    # hooks and the decode wrapper are gone: nothing is recorded any more
    counters.peak = 0
    pipe()
    assert stages.peaks["decode"] == 300_000_000 and "decode" not in vars(pipe.vae)


def test_stage_peaks_time_every_text_encoder_as_encode(monkeypatch):
    """FLUX's T5 (``text_encoder_2``) is part of the encode stage, and an encoder shared
    by two attributes is counted once."""
    counters = _Counters()
    counters.install(monkeypatch)
    pipe = _Pipe(counters)
    pipe.text_encoder_2 = _Using(counters, 400_000_000)
    pipe.text_encoder_3 = pipe.text_encoder
    with StagePeaks(pipe, torch.device("cuda")) as stages:
        assert len(stages._handles) == 2 * 3  # text_encoder, text_encoder_2, transformer
        pipe.text_encoder_2(torch.zeros(1))
        pipe()
    assert stages.peaks["encode"] == 400_000_000 and stages.peaks["denoise"] == 200_000_000


def test_component_bytes_counts_every_text_encoder_a_pipeline_has():
    """FLUX and SD3 keep T5 in text_encoder_2 / text_encoder_3: its bytes count too."""
    from types import SimpleNamespace

    import torch

    from trdq.tools.bench import component_bytes

    linear = torch.nn.Linear(4, 4)  # 20 float32 parameters = 80 bytes
    pipe = SimpleNamespace(text_encoder=linear, text_encoder_2=linear, transformer=linear,
                           vae=None)
    assert component_bytes(pipe) == {"text_encoder": 80, "transformer": 80, "vae": 0,
                                     "text_encoder_2": 80}
