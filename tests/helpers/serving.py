"""Helpers shared by the server's tests (tests/server, tests/serving, tests/tools): app
settings on the zoo models, a live uvicorn, concurrent posts, waits and metric reads."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import uvicorn

from server.app import create_app
from server.settings import Settings

#: Cheap generations: the zoo image model at a small size, few steps.
FAST = {"num_inference_steps": 2, "width": 32, "height": 32}


def make_settings(tmp_path, **overrides) -> Settings:
    """The image model only, no warm-up: the cheapest app."""
    values = {"quant": "fp", "cache_dir": tmp_path / "cache", "video_model": "none",
              "warmup": False, "max_queue": 8}
    values.update(overrides)
    return Settings(**values)


def make_settings_with_video(tmp_path, **overrides) -> Settings:
    """Both zoo models (and the default warm-up), videos of up to 16 frames."""
    values = {"quant": "fp", "cache_dir": tmp_path / "cache", "max_queue": 8, "max_frames": 16}
    values.update(overrides)
    return Settings(**values)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def live_server(settings: Settings):
    """The app behind a real uvicorn on a loopback port, in a thread: (base_url, app)."""
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not (server.started and app.state.engine.ready):
            assert thread.is_alive(), "uvicorn stopped during start-up"
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.05)
        yield base, app
    finally:
        server.should_exit = True
        thread.join(timeout=60)


def post_concurrently(client, path: str, bodies: list[dict]) -> list:
    """POST every body at once, each from its own thread; replies in the bodies' order."""
    replies: list = [None] * len(bodies)

    def send(index: int) -> None:
        replies[index] = client.post(path, json=bodies[index])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return replies


def wait_until(predicate, timeout_s: float = 60.0, interval_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(interval_s)


def metric_value(text: str, name: str, **labels) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total
