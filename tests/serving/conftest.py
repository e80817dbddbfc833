"""Serving tests: the shared helpers live in tests/helpers/serving.py."""

from __future__ import annotations

import httpx
import pytest


@pytest.fixture
def http() -> httpx.Client:
    with httpx.Client(timeout=120) as client:
        yield client
