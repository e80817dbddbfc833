"""The application factory: `create_app(settings)` builds everything, no globals.

Start-up (the lifespan) loads the pipelines, quantizes them from the calibration cache
and warms them on the engine's worker thread; /readyz turns 200 only after that.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware

from server.engine import GenerationEngine
from server.errors import MethodsByPath, install_error_handlers
from server.guard import RequestGuard
from server.metrics import Metrics
from server.routes import generate, health, info, jobs, openai_images, playground
from server.routes import metrics as metrics_route
from server.schemas import Limits, request_models
from server.settings import Settings

logger = logging.getLogger(__name__)

VERSION = "0.1.0"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    engine = GenerationEngine(settings, metrics)
    job_store = jobs.JobStore(
        engine, job_timeout_s=settings.job_timeout_s, ttl_s=settings.job_ttl_s,
        max_jobs=settings.max_jobs,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await engine.start()
        try:
            yield
        finally:
            await job_store.close()
            await engine.stop()

    app = FastAPI(
        title="trdq-server",
        version=VERSION,
        description="Text-to-image and text-to-video with TR-DQ quantized diffusion transformers.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.jobs = job_store
    install_error_handlers(app, on_error=lambda kind: metrics.errors.labels(type=kind).inc())

    limits = Limits(
        max_pixels=settings.max_pixels, max_frames=settings.max_frames,
        max_steps=settings.max_steps, max_prompt_chars=settings.max_prompt_chars,
        quant_names=tuple(settings.quant_names),
    )
    image_model, video_model = request_models(limits)
    routers = [
        generate.make_router(image_model, video_model),
        jobs.make_router(image_model, video_model),
        openai_images.make_router(limits, settings.image_model),
        health.router, info.router, metrics_route.router, playground.router,
    ]
    for router in routers:
        app.include_router(router)
    app.mount(playground.ASSETS_PATH, playground.assets(), name="playground")
    app.state.methods_by_path = MethodsByPath(
        [*app.routes, *(route for router in routers for route in router.routes)]
    )

    @app.middleware("http")
    async def measure(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "unmatched")
        metrics.request_duration.labels(
            endpoint=endpoint, status=str(response.status_code)
        ).observe(time.perf_counter() - started)
        return response

    # Outermost last: CORS (answers preflights) > guard (size, auth, disconnect) > routes.
    app.add_middleware(RequestGuard, settings=settings, metrics=metrics)
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Accept"],
            expose_headers=["Location", "Retry-After", "X-TRDQ-Model", "X-TRDQ-Quant",
                            "X-TRDQ-Seed", "X-TRDQ-Device", "X-TRDQ-Ignored-Params"],
        )
    return app
