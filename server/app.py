"""The application factory: `create_app(settings)` builds everything, no globals.

Start-up (the lifespan) loads the pipelines, quantizes them from the calibration cache
and warms them on the engine's worker thread; /readyz turns 200 only after that.
"""

from __future__ import annotations

import hmac
import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from server.engine import GenerationEngine
from server.errors import error_body, install_error_handlers
from server.metrics import Metrics
from server.routes import generate, health, info
from server.routes import metrics as metrics_route
from server.schemas import Limits, request_models
from server.settings import Settings

logger = logging.getLogger(__name__)

VERSION = "0.1.0"
#: Paths that never need the API key (probes and scraping).
OPEN_PATHS = {"/healthz", "/readyz", "/metrics"}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    engine = GenerationEngine(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await engine.start()
        try:
            yield
        finally:
            await engine.stop()

    app = FastAPI(
        title="trdq-server",
        version=VERSION,
        description="Text-to-image and text-to-video with TR-DQ quantized diffusion transformers.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    install_error_handlers(app, on_error=lambda kind: metrics.errors.labels(type=kind).inc())

    limits = Limits(
        max_pixels=settings.max_pixels, max_frames=settings.max_frames,
        max_steps=settings.max_steps, max_prompt_chars=settings.max_prompt_chars,
        quant_names=tuple(settings.quant_names),
    )
    image_model, video_model = request_models(limits)
    app.include_router(generate.make_router(image_model, video_model))
    app.include_router(health.router)
    app.include_router(info.router)
    app.include_router(metrics_route.router)

    @app.middleware("http")
    async def guard_and_measure(request: Request, call_next):
        started = time.perf_counter()
        response = _reject_early(request, settings)
        if response is None:
            response = await call_next(request)
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "unmatched")
        metrics.request_duration.labels(
            endpoint=endpoint, status=str(response.status_code)
        ).observe(time.perf_counter() - started)
        if response.status_code >= 400 and response.status_code in (401, 413):
            metrics.errors.labels(type=_EARLY_ERROR_TYPES[response.status_code]).inc()
        return response

    return app


_EARLY_ERROR_TYPES = {401: "unauthorized", 413: "payload_too_large"}


def _reject_early(request: Request, settings: Settings) -> JSONResponse | None:
    """Auth and body-size checks that run before any route code."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > settings.max_body_bytes:
        return JSONResponse(
            error_body("payload_too_large", f"request body over {settings.max_body_bytes} bytes"),
            413,
        )
    if settings.api_key is not None and request.url.path not in OPEN_PATHS:
        expected = f"Bearer {settings.api_key.get_secret_value()}".encode()
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return JSONResponse(
                error_body("unauthorized", "missing or wrong API key (Authorization: Bearer ...)"),
                401, headers={"WWW-Authenticate": "Bearer"},
            )
    return None
