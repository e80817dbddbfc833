"""TRDQ_HOST_MALLOC: glibc's thresholds raised once, bad values refused, the command too."""

from __future__ import annotations

import subprocess
import sys

import pytest

from trdq.runtime import host_memory


def test_reuse_applies_on_glibc_and_system_leaves_it():
    libc = host_memory._glibc()
    if libc is None:
        pytest.skip("not glibc: nothing to configure")
    # a subprocess: the thresholds are process-wide and this one keeps them
    code = (
        "from trdq.runtime.host_memory import configure_host_malloc as c;"
        "print(c('system'), c('reuse'), c('reuse'), c('system'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "True", "True"]


def test_unknown_mode_is_refused(monkeypatch):
    with pytest.raises(ValueError, match="TRDQ_HOST_MALLOC"):
        host_memory.configure_host_malloc("jemalloc")
    monkeypatch.setenv("TRDQ_HOST_MALLOC", "nope")
    with pytest.raises(ValueError, match="reuse"):
        host_memory.configure_host_malloc()


def test_trdq_command_refuses_a_bad_value_with_a_message():
    out = subprocess.run(
        [sys.executable, "-m", "trdq.cli", "quantize", "--help"],
        env={"TRDQ_HOST_MALLOC": "bogus", "PATH": ""}, capture_output=True, text=True, check=False,
    )
    assert out.returncode == 2
    assert "invalid setting: TRDQ_HOST_MALLOC" in out.stderr


def test_server_setting_validates():
    from pydantic import ValidationError

    from server.settings import Settings

    assert Settings(host_malloc="system").host_malloc == "system"
    with pytest.raises(ValidationError):
        Settings(host_malloc="bogus")
