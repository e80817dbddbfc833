"""The in-process app the server's tests share."""

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from tests.helpers.serving import make_settings_with_video


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = make_settings_with_video(tmp_path_factory.mktemp("server"))
    with TestClient(create_app(settings)) as test_client:
        yield test_client
