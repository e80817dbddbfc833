"""trdq loadtest: exact JSON summary, 429s counted apart from errors, loopback only."""

from __future__ import annotations

import json

import pytest

from tests.helpers.serving import live_server, make_settings
from trdq.tools.loadtest import NotLoopbackError, check_loopback, main, percentile

KEYS = {"concurrency", "requests", "ok", "rejected_429", "errors", "throughput_rps",
        "p50_s", "p95_s", "p99_s"}


@pytest.mark.parametrize("url", ["http://10.0.0.1:8000", "http://8.8.8.8", "ftp://127.0.0.1",
                                 "http://no-such-host.invalid"])
def test_only_loopback_urls_are_accepted(url, capsys):
    with pytest.raises(NotLoopbackError):
        check_loopback(url)
    assert main(["--url", url, "--requests", "1"]) == 2
    assert "refused" in capsys.readouterr().err


def test_bounds_and_percentiles(capsys):
    assert main(["--url", "http://127.0.0.1:1", "--requests", "100000"]) == 2
    assert main(["--url", "http://127.0.0.1:1", "--concurrency", "0"]) == 2
    check_loopback("http://localhost:8000")
    check_loopback("http://[::1]:8000")
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5 and percentile([], 99) == 0.0


@pytest.mark.integration
def test_against_a_live_server(tmp_path):
    with live_server(make_settings(tmp_path, max_queue=1, max_batch=1)) as (base, _app):
        common = ["--url", base, "--endpoint", "image", "--steps", "2", "--width", "32",
                  "--height", "32"]
        out = tmp_path / "c1.json"
        assert main(common + ["--concurrency", "1", "--requests", "3", "--json", str(out)]) == 0
        summary = json.loads(out.read_text())
        assert set(summary) == KEYS
        assert summary["ok"] == 3 and summary["errors"] == 0 and summary["requests"] == 3
        assert 0 < summary["p50_s"] <= summary["p95_s"] <= summary["p99_s"]
        assert summary["throughput_rps"] > 0

        out = tmp_path / "c6.json"
        assert main(common + ["--concurrency", "6", "--requests", "12", "--json", str(out)]) == 0
        overloaded = json.loads(out.read_text())
        assert overloaded["rejected_429"] > 0 and overloaded["errors"] == 0
        assert overloaded["ok"] + overloaded["rejected_429"] == 12
