"""Dynamic batching: compatible requests share one pipeline call, and each output depends
only on its own seed: batched == alone (up to fp32 GEMM rounding across batch sizes, and
for a quantized model the rounding flips that it sets off)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from server.app import create_app
from tests.helpers.serving import FAST, make_settings, metric_value, post_concurrently

# Different prompts and seeds in one batch; same size/steps/guidance so they are compatible.
REQUESTS = [
    {"prompt": "a red circle top left", "seed": 11, **FAST},
    {"prompt": "a blue square bottom right", "seed": 22, **FAST},
    {"prompt": "a green triangle", "seed": 33, "negative_prompt": "blurry", **FAST},
]


def _pixels(reply) -> np.ndarray:
    assert reply.status_code == 200, reply.text
    data = base64.b64decode(reply.json()["images"][0]["b64"])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


# w8a8: slow. The quantized model is batched == alone only within quantization noise:
# fp32 GEMMs round differently at another batch size, a few activations land on the other
# side of an int8 rounding step (one denoiser call on the zoo: input 6e-6 apart, output
# 4e-3), and the sampler amplifies that: its x0 estimate at t ~ 999 divides by
# sqrt(alpha_bar) ~ 0.07 and CFG multiplies by 4.5, so with 2 steps at 32 px the images
# differ by 7 levels on average even for w8a8-minmax (no CFG-wise parameters at all).
# With 20 steps at 64 px: mean 0.43 levels with zoo run 7, but 7-18 levels with the sharper
# runs 8/9. So the quantized case checks batching for function only; the per-call bound is
# tests/quant/test_batch_invariance.py and the CFG-wise row layout is checked exactly in
# tests/quant/test_cfg.py.
@pytest.mark.parametrize("quant", ["fp", pytest.param("w8a8", marks=pytest.mark.slow)])
def test_batched_outputs_equal_outputs_alone(tmp_path, quant):
    settings = make_settings(tmp_path, quant=quant, max_batch=4, batch_window_ms=1500)
    requests = REQUESTS
    with TestClient(create_app(settings)) as client:
        alone = [_pixels(client.post("/generate/image", json=body)) for body in requests]
        before = client.get("/metrics").text
        replies = post_concurrently(client, "/generate/image", requests)
        after = client.get("/metrics").text

    calls = metric_value(after, "trdq_batch_size_count") - metric_value(before, "trdq_batch_size_count")
    jobs = metric_value(after, "trdq_batch_size_sum") - metric_value(before, "trdq_batch_size_sum")
    assert jobs == len(requests)
    assert calls < len(requests), "the concurrent requests were not batched"
    for index, expected in enumerate(alone):
        batched = _pixels(replies[index])
        difference = np.abs(batched - expected)
        # Same seed -> same noise; only GEMM rounding at another batch size may differ.
        if quant == "fp":
            assert difference.max() <= 2, (index, difference.max())
            assert difference.mean() < 0.05, (index, difference.mean())
        else:
            # Quantized: batching works and every request gets its own image, but the pixels
            # are only as close as int8 rounding flips allow (see the comment above; with zoo
            # runs 8/9 a request differed by 7-18 levels on average, run to run); the
            # per-call batch invariance bound is tests/quant/test_batch_invariance.py.
            assert batched.shape == expected.shape
    assert np.abs(alone[0] - alone[1]).mean() > 1  # the outputs do differ between requests


def test_incompatible_requests_are_not_batched_together(tmp_path):
    settings = make_settings(tmp_path, max_batch=4, batch_window_ms=1000)
    bodies = [{"prompt": "a red circle", **FAST},
              {"prompt": "a red circle", **FAST, "width": 48}]
    with TestClient(create_app(settings)) as client:
        replies = post_concurrently(client, "/generate/image", bodies)
        metrics = client.get("/metrics").text
    assert sorted(r.json()["width"] for r in replies) == [32, 48]
    assert metric_value(metrics, "trdq_batch_size_count") == 2
