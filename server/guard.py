"""The request guard: a pure ASGI middleware in front of every route.

It does what must happen before (or around) route code, for every request:
- body size: a declared Content-Length over the limit is refused at once (413); a body
  without one (chunked) is read up to the limit and refused as soon as it passes it;
- auth: the optional bearer key, compared in constant time; probes and /metrics are
  open unless the settings close them, the playground page always (it asks for the key).
  The key is never logged or echoed;
- client disconnect: Starlette does not cancel a handler whose client went away, so the
  guard watches the connection and cancels the handler task; the engine then drops the
  queued job or stops the running one at its next denoising step.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time

from server.errors import error_body
from server.metrics import Metrics
from server.settings import Settings

logger = logging.getLogger(__name__)

PROBE_PATHS = frozenset({"/healthz", "/readyz"})
METRICS_PATHS = frozenset({"/metrics"})
#: Status recorded for requests whose client went away (nginx's convention).
CLIENT_CLOSED_STATUS = 499


#: The playground page and its assets hold no data and no secret; the page asks for the
#: key and sends it with every API call it makes.
PLAYGROUND_PATHS = frozenset({"/"})
PLAYGROUND_ASSETS_PREFIX = "/playground/"


def bearer_token(authorization: bytes) -> bytes:
    """The credentials of an `Authorization: Bearer <token>` header, b"" for any other.

    The scheme is case-insensitive (RFC 7235 2.1: `bearer`, `BEARER`), and one or more
    spaces may separate it from the token."""
    scheme, _, token = authorization.partition(b" ")
    if scheme.lower() != b"bearer":
        return b""
    return token.strip(b" ")


def open_paths(settings: Settings) -> frozenset[str]:
    """Paths that do not need the API key."""
    paths: set[str] = set(PLAYGROUND_PATHS)
    if not settings.auth_probes:
        paths |= PROBE_PATHS
    if not settings.auth_metrics:
        paths |= METRICS_PATHS
    return frozenset(paths)


class RequestGuard:
    def __init__(self, app, settings: Settings, metrics: Metrics) -> None:
        self.app = app
        self.max_body = settings.max_body_bytes
        self.open_paths = open_paths(settings)
        self.expected_key = (
            None if settings.api_key is None else settings.api_key.get_secret_value().encode()
        )
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body:
            await self._refuse(send, 413, "payload_too_large", self._too_large(), started)
            return
        if self.expected_key is not None and not self._is_open(scope["path"]):
            given = bearer_token(headers.get(b"authorization", b""))
            if not hmac.compare_digest(given, self.expected_key):
                await self._refuse(
                    send, 401, "unauthorized",
                    "missing or wrong API key (Authorization: Bearer ...)", started,
                    extra_headers=[(b"www-authenticate", b"Bearer")],
                )
                return
        body, disconnected = await self._read_body(receive)
        if body is None:
            if disconnected:
                return
            await self._refuse(send, 413, "payload_too_large", self._too_large(), started)
            return
        await self._run(scope, receive, send, body, started)

    def _is_open(self, path: str) -> bool:
        return path in self.open_paths or path.startswith(PLAYGROUND_ASSETS_PREFIX)

    def _too_large(self) -> str:
        return f"request body over {self.max_body} bytes"

    async def _read_body(self, receive) -> tuple[bytes | None, bool]:
        """The whole body, or (None, disconnected) when it is too large or the client left."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None, True
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None, False
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), False

    async def _run(self, scope, receive, send, body: bytes, started: float) -> None:
        client_gone = asyncio.Event()
        response_done = False
        body_given = False

        async def replay_receive():
            nonlocal body_given
            if not body_given:
                body_given = True
                return {"type": "http.request", "body": body, "more_body": False}
            await client_gone.wait()
            return {"type": "http.disconnect"}

        async def tracking_send(message) -> None:
            nonlocal response_done
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                response_done = True
            await send(message)

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    client_gone.set()
                    return

        handler = asyncio.ensure_future(self.app(scope, replay_receive, tracking_send))
        watcher = asyncio.ensure_future(watch())
        try:
            await asyncio.wait({handler, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not handler.done() and not response_done:
                # The client went away before its reply: stop the work done on its behalf.
                handler.cancel()
                route = scope.get("route")
                self.metrics.request_duration.labels(
                    endpoint=getattr(route, "path", "unmatched"),
                    status=str(CLIENT_CLOSED_STATUS),
                ).observe(time.perf_counter() - started)
                self.metrics.errors.labels(type="client_closed").inc()
                logger.info("client closed %s %s; handler cancelled",
                            scope.get("method"), scope.get("path"))
            try:
                await handler
            except asyncio.CancelledError:
                if not client_gone.is_set():
                    raise  # the server itself is being cancelled
        finally:
            watcher.cancel()
            if not handler.done():
                handler.cancel()

    async def _refuse(self, send, status: int, error_type: str, message: str, started: float,
                      extra_headers: list | None = None) -> None:
        payload = json.dumps(error_body(error_type, message)).encode()
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(payload)).encode())] + (extra_headers or [])
        if status == 413:
            headers.append((b"connection", b"close"))  # the rest of the body is not read
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
        self.metrics.request_duration.labels(endpoint="unmatched", status=str(status)).observe(
            time.perf_counter() - started
        )
        self.metrics.errors.labels(type=error_type).inc()
