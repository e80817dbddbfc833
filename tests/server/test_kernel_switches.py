"""TRDQ_CPU_NATIVE, TRDQ_CPU_INT_MM, TRDQ_CPU_PREPACK, TRDQ_GEMM_TMA, TRDQ_NATIVE_CACHE: server
settings, validated with the setting named, applied to the library at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from server.engine.models import configure_kernels
from server.settings import Settings
from trdq.kernels import cpu_int8, switches


def test_defaults_and_spellings(monkeypatch):
    settings = Settings()
    assert (settings.cpu_native, settings.cpu_int_mm, settings.cpu_prepack,
            settings.gemm_tma, settings.native_cache) == (True, None, True, "graphs", None)
    monkeypatch.setenv("TRDQ_CPU_INT_MM", "1")
    monkeypatch.setenv("TRDQ_CPU_PREPACK", "0")
    monkeypatch.setenv("TRDQ_GEMM_TMA", "false")
    monkeypatch.setenv("TRDQ_CPU_NATIVE", "off")
    settings = Settings()
    assert (settings.cpu_native, settings.cpu_int_mm, settings.cpu_prepack,
            settings.gemm_tma) == (False, True, False, "0")
    assert Settings(cpu_int_mm="auto").cpu_int_mm is None


@pytest.mark.parametrize("field,value,message", [
    ("cpu_int_mm", "fast", "auto"), ("gemm_tma", "sometimes", "graphs"),
    ("cpu_native", "maybe", "bool"),
])
def test_a_bad_value_names_the_setting(field, value, message):
    with pytest.raises(ValidationError, match=f"(?s){field}.*{message}"):
        Settings(**{field: value})


def test_start_up_applies_them_and_reports_what_they_resolve_to(tmp_path):
    previous = switches.current()
    try:
        kernels = configure_kernels(Settings(cpu_int_mm=False, cpu_prepack=False,
                                             native_cache=tmp_path / "native"))
        assert kernels["cpu_int_mm"] is False and cpu_int8.FAST_INT_MM is False
        assert kernels["cpu_prepack"] is False and not cpu_int8.U8_GEMM
        assert kernels["cpu_gemm"] == cpu_int8.gemm_path()
        assert Path(kernels["native_cache_dir"]) == tmp_path / "native"
        # without TRDQ_NATIVE_CACHE the library keeps its own default
        assert configure_kernels(Settings())["native_cache_dir"] == str(tmp_path / "native")
    finally:
        switches.configure(**{f: getattr(previous, f) for f in previous.__dataclass_fields__})
    assert switches.current() == previous
