import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import Settings


def make_settings(tmp_path, **overrides) -> Settings:
    values = {"quant": "fp", "cache_dir": tmp_path / "cache", "max_queue": 8, "max_frames": 16}
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = make_settings(tmp_path_factory.mktemp("server"))
    with TestClient(create_app(settings)) as test_client:
        yield test_client
