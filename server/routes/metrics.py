"""GET /metrics in the Prometheus text format."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter(tags=["health"])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    engine = request.app.state.engine
    engine.metrics.queue_depth.set(engine.queue_depth())
    return Response(generate_latest(engine.metrics.registry), media_type=CONTENT_TYPE_LATEST)
