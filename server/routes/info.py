"""GET /info: what this server serves and how it is quantized."""

from __future__ import annotations

from fastapi import APIRouter, Request

from server.routes.openai_images import COMPRESSIBLE_FORMATS, IGNORED_OPENAI_PARAMS

router = APIRouter(tags=["info"])


@router.get("/info", summary="Models, quantization config, calibration id, backend, weight bytes")
async def info(request: Request) -> dict:
    engine = request.app.state.engine
    settings = engine.settings
    models = []
    if engine.models is not None:
        for model in engine.models.all():
            models.append({
                "name": model.name, "task": model.task, "quant": model.quant,
                "default_width": model.default_width, "default_height": model.default_height,
                "max_frames": model.max_frames, "min_steps": model.min_steps,
                "size_multiple": model.size_multiple, **model.info,
            })
    return {
        "ready": engine.ready,
        "version": request.app.version,
        "default_quant": settings.quant_names[0],
        "device": str(engine.device),
        "devices": [str(worker.device) for worker in engine.workers],
        "worker_mode": engine.worker_mode,
        "workers": [
            {"device": worker.name, "state": worker.state, "pid": worker.pid,
             "restarts": worker.restarts}
            for worker in engine.workers
        ],
        "startup_seconds": engine.startup_seconds,
        "kernels": engine.kernels,
        "limits": {
            "max_pixels": settings.max_pixels, "max_frames": settings.max_frames,
            "max_steps": settings.max_steps, "max_prompt_chars": settings.max_prompt_chars,
            "max_queue": settings.max_queue, "max_batch": settings.max_batch,
        },
        "models": models,
        "openai_images": {
            "ignored_params": list(IGNORED_OPENAI_PARAMS),
            "output_compression_formats": list(COMPRESSIBLE_FORMATS),
        },
    }
