"""The warm-up before /readyz (TRDQ_WARMUP_*): which shapes it runs, and bad values."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from server.app import create_app
from server.engine import execute
from server.settings import Settings
from tests.helpers.serving import make_settings


def test_warmup_settings_are_checked_and_parsed():
    settings = Settings(warmup_batch_sizes=" 1, 2,4", warmup_size="64X32", warmup_steps=3)
    assert settings.warmup_batch_size_list == [1, 2, 4]
    assert settings.warmup_width_height == (64, 32)
    assert Settings().warmup_width_height is None and Settings().warmup_batch_size_list == [1]
    for field, bad in (("warmup_batch_sizes", "1,0"), ("warmup_batch_sizes", "two"),
                       ("warmup_size", "1024"), ("warmup_size", "0x16"), ("warmup_steps", 0)):
        with pytest.raises(ValidationError, match=field):
            Settings(**{field: bad})


def test_warmup_runs_every_batch_size_at_the_size_asked(tmp_path, monkeypatch):
    calls = []
    real_generate = execute.generate

    def spy(pipe, request, on_step=None):
        calls.append((len(request.prompts), request.width, request.height,
                      request.num_inference_steps))
        return real_generate(pipe, request, on_step=on_step)

    monkeypatch.setattr(execute, "generate", spy)
    settings = make_settings(tmp_path, warmup=True, warmup_batch_sizes="1,2",
                             warmup_size="32x48", warmup_steps=2)
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
    assert calls == [(1, 32, 48, 2), (2, 32, 48, 2)]  # no CUDA graphs on CPU: once each


def test_a_warmup_size_the_model_cannot_run_refuses_the_start(tmp_path):
    settings = make_settings(tmp_path, warmup=True, warmup_size="40x40")
    with pytest.raises(ValueError, match="TRDQ_WARMUP_SIZE=40x40"), \
            TestClient(create_app(settings)):
        pass
