"""The kernel switches: read from the environment in one place, configured explicitly
(the server does at start-up), and followed by the kernel modules' choices."""

from __future__ import annotations

from pathlib import Path

import pytest

from trdq.kernels import cpu_int8, cpu_native, switches
from trdq.kernels.switches import KernelSwitches


def test_environment_defaults_and_spellings():
    assert KernelSwitches.from_env({}) == KernelSwitches(
        native_cache_dir=Path.home() / ".cache" / "trdq" / "native")
    got = KernelSwitches.from_env({
        "TRDQ_CPU_NATIVE": "0", "TRDQ_CPU_INT_MM": "1", "TRDQ_CPU_PREPACK": "off",
        "TRDQ_GEMM_TMA": " GRAPHS ", "TRDQ_CACHE_DIR": "/srv/cache",
    })
    assert (got.cpu_native, got.cpu_int_mm, got.cpu_prepack, got.gemm_tma) == (
        False, True, False, "graphs")
    assert got.native_cache_dir == Path("/srv/cache/native")
    assert KernelSwitches.from_env({"TRDQ_CPU_INT_MM": "auto"}).cpu_int_mm is None
    assert KernelSwitches.from_env({"TRDQ_CPU_NATIVE": ""}).cpu_native is True
    both = {"TRDQ_NATIVE_CACHE": "/n", "TRDQ_CACHE_DIR": "/c"}
    assert KernelSwitches.from_env(both).native_cache_dir == Path("/n")


@pytest.mark.parametrize("name,value", [("TRDQ_CPU_NATIVE", "maybe"),
                                        ("TRDQ_CPU_INT_MM", "fast"),
                                        ("TRDQ_GEMM_TMA", "2")])
def test_a_bad_environment_value_names_the_variable(name, value):
    with pytest.raises(ValueError, match=name):
        KernelSwitches.from_env({name: value})


def test_configure_drives_cpu_int8_and_restores():
    before = switches.current()
    with switches.using(cpu_int_mm=True, cpu_prepack=False) as now:
        assert now.cpu_int_mm is True and switches.current() is now
        assert cpu_int8.FAST_INT_MM and not cpu_int8.ONEDNN_PREPACK and not cpu_int8.U8_GEMM
        assert cpu_int8.gemm_path() == "torch._int_mm"
        described = switches.describe()
        assert described["cpu_int_mm"] is True and described["cpu_prepack"] is False
    with switches.using(cpu_int_mm=False):
        assert not cpu_int8.FAST_INT_MM
        assert cpu_int8.ONEDNN_PREPACK is False
    assert switches.current() == before
    expected = cpu_int8._fast_int_mm(before.cpu_int_mm)
    assert cpu_int8.FAST_INT_MM is expected


def test_cpu_native_off_reports_the_c_pass_unavailable():
    with switches.using(cpu_native=False):
        assert cpu_native._library() is None
        assert not cpu_native.available()


def test_gemm_tma_switch_reaches_the_triton_module():
    triton_w4a8 = pytest.importorskip("trdq.kernels.triton_w4a8")
    with switches.using(gemm_tma="0"):
        assert triton_w4a8.TMA_MODE == "0"
    assert triton_w4a8.TMA_MODE == switches.current().gemm_tma
    with pytest.raises(ValueError, match="gemm_tma"):
        switches.configure(gemm_tma="sometimes")


@pytest.mark.parametrize("isa,prepacked", [("AMX", True), ("AVX-512 VNNI", False)])
def test_onednn_prepacked_linear_only_on_amx(monkeypatch, isa, prepacked):
    """oneDNN's prepacked linear with signed int8 activations was measured fast on AMX
    and ~3000x slower than torch._int_mm on an AVX-512 VNNI EPYC (a reference kernel):
    there 8-bit weights take torch._int_mm."""
    if not cpu_int8._onednn_linear_ops():
        pytest.skip("this torch build has no oneDNN int8 linear ops")
    monkeypatch.setattr(cpu_int8, "cpu_isa", lambda: isa)
    try:
        cpu_int8._apply_switches(KernelSwitches(cpu_int_mm=None, cpu_prepack=True))
        assert cpu_int8.FAST_INT_MM
        assert cpu_int8.ONEDNN_PREPACK is prepacked
        assert (cpu_int8.gemm_path() == "torch._int_mm") is not prepacked
    finally:
        monkeypatch.undo()
        cpu_int8._apply_switches(switches.current())
