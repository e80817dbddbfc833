"""Body limits (declared and chunked), auth on probes/metrics, CORS off by default,
and no request value reaching the filesystem. The guard runs before any route, so most
of these need no loaded model (TestClient without the lifespan)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from server.app import create_app
from tests.helpers.serving import make_settings

KEY = "k3y-that-must-never-be-logged"


def _client(tmp_path, **overrides) -> TestClient:
    return TestClient(create_app(make_settings(tmp_path, **overrides)))  # no lifespan


def _chunks(total: int, size: int = 1024):
    sent = 0
    while sent < total:
        yield b" " * min(size, total - sent)
        sent += size


def test_a_chunked_body_over_the_limit_is_413(tmp_path):
    client = _client(tmp_path, max_body_bytes=4096)
    reply = client.post("/generate/image", content=_chunks(10_000),
                        headers={"content-type": "application/json"})
    assert reply.status_code == 413
    assert reply.json()["error"]["type"] == "payload_too_large"
    declared = client.post("/generate/image", content=b"x" * 5000,
                           headers={"content-type": "application/json"})
    assert declared.status_code == 413
    # A chunked body under the limit reaches the route (503: no models loaded here).
    small = client.post("/generate/image", content=iter([b'{"prompt": "x"}']),
                        headers={"content-type": "application/json"})
    assert small.status_code == 503


def test_probes_and_metrics_are_open_unless_configured(tmp_path):
    client = _client(tmp_path, api_key=KEY)
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert client.get("/info").status_code == 401
    closed = _client(tmp_path, api_key=KEY, auth_probes=True, auth_metrics=True)
    for path in ("/healthz", "/readyz", "/metrics"):
        reply = closed.get(path)
        assert reply.status_code == 401 and reply.headers["www-authenticate"] == "Bearer"
        assert KEY not in reply.text
    assert closed.get("/healthz", headers={"authorization": f"Bearer {KEY}"}).status_code == 200
    metrics_only = _client(tmp_path, api_key=KEY, auth_metrics=True)
    assert metrics_only.get("/healthz").status_code == 200
    assert metrics_only.get("/metrics").status_code == 401


def test_wrong_keys_are_refused(tmp_path):
    client = _client(tmp_path, api_key=KEY)
    for header in ({}, {"authorization": "Bearer nope"}, {"authorization": KEY},
                   {"authorization": f"bearer {KEY}x"}, {"authorization": f"Basic {KEY}"}):
        reply = client.post("/jobs/image", json={"prompt": "x"}, headers=header)
        assert reply.status_code == 401, header


def test_cors_is_off_by_default_and_on_when_configured(tmp_path):
    origin = {"origin": "https://app.example"}
    plain = _client(tmp_path)
    assert "access-control-allow-origin" not in plain.get("/healthz", headers=origin).headers
    preflight = plain.options("/generate/image", headers={
        **origin, "access-control-request-method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers

    cors = _client(tmp_path, cors_origins="https://app.example", api_key=KEY)
    preflight = cors.options("/generate/image", headers={
        **origin, "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,content-type"})
    assert preflight.status_code == 200  # answered before auth: preflights carry no key
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    other = cors.get("/healthz", headers={"origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_no_request_value_names_a_file_or_model(tmp_path):
    client = _client(tmp_path)
    for body in ({"prompt": "x", "quant": "../../etc/passwd"},
                 {"prompt": "x", "model": "/etc/passwd"},
                 {"prompt": "x", "cache_dir": "/tmp"}):
        assert client.post("/generate/image", json=body).status_code == 422
    schema = client.get("/openapi.json").json()
    fields = schema["components"]["schemas"]["ImageRequest"]["properties"]
    assert not {"model", "path", "file", "cache_dir"} & set(fields)
