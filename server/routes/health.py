"""Liveness, readiness, and the model/quantization description."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Models loaded, quantized and warmed")
async def readyz(request: Request):
    engine = request.app.state.engine
    if not engine.accepting:
        return JSONResponse(
            {"error": {"type": "shutting_down", "message": "draining before shutdown"}},
            status_code=503,
        )
    if not engine.ready:
        return JSONResponse(
            {"error": {"type": "not_ready", "message": "models are loading"}}, status_code=503
        )
    if not engine.serving:  # every worker process is restarting
        states = ", ".join(f"{worker.name}: {worker.state}" for worker in engine.workers)
        return JSONResponse(
            {"error": {"type": "not_ready", "message": f"no worker is serving ({states})"}},
            status_code=503,
        )
    return {"status": "ready"}
