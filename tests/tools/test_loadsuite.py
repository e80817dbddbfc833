"""`trdq loadsuite`: the devices suite's settings and section (fast), and one real run
of it on two CPU "devices" in process mode (slow)."""

from __future__ import annotations

import json

import pytest

from trdq.tools import loadsuite


def _args(*extra: str):
    return loadsuite.build_parser().parse_args(["devices", "--devices", "cpu,cpu", *extra])


def _result(throughput: float, p95: float) -> dict:
    return {"rounds": 1, "requests": 8, "ok": 8, "rejected_429": 0, "errors": 0,
            "throughput_rps": throughput, "p50_s": p95 / 2, "p95_s": p95, "p99_s": p95,
            "concurrency": 16}


def test_devices_suite_runs_process_workers_warmed_on_the_load_shapes():
    env = loadsuite.devices_env(_args("--steps", "20", "--width", "1024", "--height", "1024"))
    assert env == {"TRDQ_WORKER_MODE": "process", "TRDQ_WARMUP_STEPS": "20",
                   "TRDQ_WARMUP_BATCH_SIZES": "1,2,3,4", "TRDQ_WARMUP_SIZE": "1024x1024"}
    env = loadsuite.devices_env(_args("--worker-mode", "thread", "--env", "TRDQ_MAX_BATCH=2",
                                      "--env", "TRDQ_WARMUP_STEPS=4"))
    assert env == {"TRDQ_WORKER_MODE": "thread", "TRDQ_WARMUP_BATCH_SIZES": "1,2"}


@pytest.mark.parametrize("two_devices, p95, verdict", [
    (1.9, 1.0, ("Target (issue 28: >= 1.8x with two devices, p95 not above one device's "
                "at the same load per device): met")),
    (1.5, 1.0, "not met (speed-up not met, p95 met)"),
    (1.9, 2.0, "not met (speed-up met, p95 not met)"),
])
def test_devices_section_names_the_mode_and_whether_the_target_is_met(two_devices, p95, verdict):
    results = loadsuite._with_speedups({"1 device (cpu)": _result(1.0, 1.0),
                                        "2 devices": _result(two_devices, p95)})
    one, many = results.values()
    data = {"results": results, "target": {
        "speedup_min": 1.8, "speedup_met": many["speedup"] >= 1.8,
        "p95_met": many["p95_s"] <= one["p95_s"]}}
    section = loadsuite.render("devices", data, _args(), "trdq loadsuite devices", (0.1, 0, 0))
    assert "### `devices` (image, model default size, " in section
    assert section.splitlines()[1].endswith(", process workers)")
    assert "Concurrency 16 per device" in section
    assert "TRDQ_WORKER_MODE=process" in section
    assert verdict in section


@pytest.mark.slow  # two servers start, with one and two worker processes: ~30 s-2 min
def test_devices_suite_compares_one_and_two_worker_processes(tmp_path):
    out = tmp_path / "RELIABILITY.md"
    code = loadsuite.main([
        "devices", "--devices", "cpu,cpu", "--steps", "2", "--width", "32", "--height", "32",
        "--requests", "1", "--rounds", "1", "--concurrency", "2", "--port", "8391",
        "--env", "TRDQ_QUANT=fp", "--env", "TRDQ_THREADS=1", "--ready-timeout", "300",
        "--json", str(tmp_path / "devices.json"), "--out-md", str(out),
    ])
    assert code == 0
    data = json.loads((tmp_path / "devices.json").read_text())
    assert data["worker_mode"] == "process"
    assert [r["errors"] for r in data["results"].values()] == [0, 0]
    assert [r["concurrency"] for r in data["results"].values()] == [2, 4]
    assert "process workers)" in out.read_text()
