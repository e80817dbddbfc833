"""TRDQ_DTYPE: the dtype the pipelines are loaded and served in."""

import logging

import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import ValidationError

from server.app import create_app
from server.engine import models as engine_models
from server.settings import Settings
from tests.helpers.serving import make_settings_with_video


def test_dtype_aliases_are_normalised():
    assert Settings().dtype == "auto"
    for value, name in (("fp32", "float32"), (" FLOAT32", "float32"), ("bf16", "bfloat16"),
                        ("BFloat16 ", "bfloat16"), ("Auto", "auto")):
        assert Settings(dtype=value).dtype == name


def test_bad_dtype_is_refused_naming_the_allowed_values(monkeypatch, capsys):
    for bad in ("float16", "int8", ""):
        with pytest.raises(ValidationError, match="dtype") as error:
            Settings(dtype=bad)
        assert "auto, float32 (fp32) or bfloat16 (bf16)" in str(error.value)
    from server.__main__ import main

    monkeypatch.setenv("TRDQ_DTYPE", "fp16")
    assert main([]) == 2
    assert "invalid setting TRDQ_DTYPE: " in capsys.readouterr().err


def test_auto_keeps_the_device_default():
    assert engine_models.served_dtype("auto", torch.device("cpu")) == torch.float32
    assert engine_models.served_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert engine_models.served_dtype("float32", torch.device("cuda")) == torch.float32


def test_bf16_reaches_load_pipeline_and_info_and_warns_once_without_native_support(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(engine_models, "cpu_has_native_bf16", lambda: False)
    asked: list[torch.dtype] = []
    real_load_pipeline = engine_models.load_pipeline

    def spy(name, device, dtype):
        asked.append(dtype)
        return real_load_pipeline(name, device=device, dtype=dtype)

    monkeypatch.setattr(engine_models, "load_pipeline", spy)
    settings = make_settings_with_video(tmp_path, dtype="bf16", device="cpu", video_model="none",
                             warmup=False)
    with (
        caplog.at_level(logging.WARNING, logger=engine_models.__name__),
        TestClient(create_app(settings)) as client,
    ):
        info = client.get("/info").json()
        pipe = client.app.state.engine.models.get("image", "fp").pipe
    assert asked == [torch.bfloat16]
    assert pipe.transformer.dtype == torch.bfloat16
    assert [model["dtype"] for model in info["models"]] == ["bfloat16"]
    warnings = [r for r in caplog.records if "TRDQ_DTYPE=bfloat16" in r.getMessage()]
    assert len(warnings) == 1


def test_native_bf16_cpu_does_not_warn(monkeypatch, caplog):
    monkeypatch.setattr(engine_models, "cpu_has_native_bf16", lambda: True)
    with caplog.at_level(logging.WARNING, logger=engine_models.__name__):
        assert engine_models.served_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert not caplog.records
