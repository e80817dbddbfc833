"""POST /generate/image and POST /generate/video.

Routes validate (pydantic, from the limits), hand a JobSpec to the engine, and shape
the reply: JSON with base64 media by default, raw bytes when the client asks for a
media type in Accept (server.negotiation; 406 for a type not served).
"""


import asyncio
import base64
import secrets
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from server import media
from server.engine.jobs import JobSpec
from server.errors import InvalidRequestError, NotAcceptableError
from server.negotiation import negotiate
from server.schemas import ErrorResponse, ImageResponse, VideoResponse

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse}
    for code in (401, 404, 406, 413, 422, 429, 500, 503, 504)
}


def make_seeds(seed: int | None, count: int) -> tuple[int, ...]:
    base = secrets.randbelow(2**31) if seed is None else seed
    return tuple(base + i for i in range(count))


def timings_of(output, encode_s: float, started: float) -> dict:
    t = output.timings
    return {
        "queue_s": round(t.queue_s, 4), "text_encode_s": round(t.text_encode_s, 4),
        "denoise_s": round(t.denoise_s, 4), "vae_decode_s": round(t.vae_decode_s, 4),
        "encode_s": round(encode_s, 4), "total_s": round(time.perf_counter() - started, 4),
    }


def check_steps(served, steps: int) -> None:
    if steps < served.min_steps:
        raise InvalidRequestError(
            f"num_inference_steps: {served.name} needs at least {served.min_steps} steps"
        )


def check_size(engine, served, width: int, height: int) -> None:
    """The model's constraints, and the pixel limit for sizes filled in from its defaults."""
    if width * height > engine.settings.max_pixels:
        raise InvalidRequestError(
            f"width x height: {width}x{height} exceeds the limit of "
            f"{engine.settings.max_pixels} pixels; ask for a smaller size"
        )
    multiple = engine.size_multiple(served)
    for name, value in (("width", width), ("height", height)):
        if value % multiple:
            raise InvalidRequestError(
                f"{name}: {served.name} needs a multiple of {multiple}, got {value}"
            )


def image_spec(engine, body) -> JobSpec:
    """An image request body -> the engine's JobSpec (model defaults filled in)."""
    served = engine.served_model("image", body.quant)
    check_steps(served, body.num_inference_steps)
    width, height = body.width or served.default_width, body.height or served.default_height
    check_size(engine, served, width, height)
    return JobSpec(
        task="image", quant=served.quant, prompt=body.prompt,
        negative_prompt=body.negative_prompt, width=width, height=height,
        num_inference_steps=body.num_inference_steps, guidance_scale=body.guidance_scale,
        seeds=make_seeds(body.seed, body.num_images),
    )


def video_spec(engine, body) -> JobSpec:
    """A video request body -> the engine's JobSpec (model defaults filled in)."""
    served = engine.served_model("video", body.quant)
    check_steps(served, body.num_inference_steps)
    step = served.frame_step
    num_frames = body.num_frames
    if num_frames is None:  # the longest the model and the limit allow, 1 + k * step
        longest = min(served.max_frames, engine.settings.max_frames)
        num_frames = longest - (longest - 1) % step
    if num_frames > served.max_frames:
        raise InvalidRequestError(
            f"num_frames: {served.name} generates at most {served.max_frames} frames"
        )
    if (num_frames - 1) % step:
        raise InvalidRequestError(
            f"num_frames: {served.name} generates 1 + {step}k frames (1, {1 + step}, "
            f"{1 + 2 * step}, ...), got {num_frames}"
        )
    width, height = body.width or served.default_width, body.height or served.default_height
    check_size(engine, served, width, height)
    return JobSpec(
        task="video", quant=served.quant, prompt=body.prompt,
        negative_prompt=body.negative_prompt, width=width, height=height,
        num_inference_steps=body.num_inference_steps, guidance_scale=body.guidance_scale,
        seeds=make_seeds(body.seed, body.num_videos), num_frames=num_frames,
    )


async def encode_output(engine, output, fmt: str, fps: int | None = None,
                        quality: int | None = None) -> tuple[list, float]:
    """Encode every image or video of an output off the event loop; (blobs, seconds).

    `quality` applies to images only (see media.encode_image)."""
    started = time.perf_counter()
    if fps is None:
        encoded = await asyncio.to_thread(
            lambda: [media.encode_image(pixels, fmt, quality) for pixels in output.pixels]
        )
    else:
        encoded = await asyncio.to_thread(
            lambda: [media.encode_video(frames, fmt, fps) for frames in output.pixels]
        )
    encode_s = time.perf_counter() - started
    engine.metrics.stage_duration.labels(
        model=output.model, quant=output.quant, stage="encode"
    ).observe(encode_s)
    return encoded, encode_s


def media_headers(output) -> dict:
    return {"X-TRDQ-Model": output.model, "X-TRDQ-Quant": output.quant,
            "X-TRDQ-Seed": str(output.seeds[0]), "X-TRDQ-Device": output.device}


def image_payload(output, spec: JobSpec, encoded: list, fmt: str, timings: dict) -> dict:
    return {
        "images": [
            {"b64": base64.b64encode(data).decode(), "seed": seed}
            for data, seed in zip(encoded, output.seeds)
        ],
        "model": output.model, "quant": output.quant,
        "width": spec.width, "height": spec.height, "format": fmt, "timings": timings,
    }


def video_payload(output, spec: JobSpec, encoded: list, fmt: str, fps: int | None,
                  timings: dict) -> dict:
    return {
        "videos": [
            {"b64": base64.b64encode(data).decode(), "seed": seed,
             "num_frames": spec.num_frames, "fps": fps, "format": fmt}
            for data, seed in zip(encoded, output.seeds)
        ],
        "model": output.model, "quant": output.quant,
        "width": spec.width, "height": spec.height, "timings": timings,
    }


def make_router(image_model, video_model) -> APIRouter:
    router = APIRouter(tags=["generate"])

    @router.post(
        "/generate/image", response_model=ImageResponse, responses=ERROR_RESPONSES,
        summary="Generate images from a prompt",
    )
    async def generate_image(body: image_model, request: Request):
        started = time.perf_counter()
        engine = request.app.state.engine
        raw = negotiate(request.headers.get("accept"), media.IMAGE_FORMATS, body.output_format)
        if raw is not None and body.num_images != 1:
            raise NotAcceptableError("raw image bytes need num_images=1; ask for JSON instead")
        spec = image_spec(engine, body)
        output = await engine.submit(spec)
        fmt = raw or body.output_format
        encoded, encode_s = await encode_output(engine, output, fmt)
        headers = media_headers(output)
        if raw is not None:
            return Response(encoded[0], media_type=media.IMAGE_FORMATS[fmt], headers=headers)
        return JSONResponse(
            image_payload(output, spec, encoded, fmt, timings_of(output, encode_s, started)),
            headers=headers,
        )

    @router.post(
        "/generate/video", response_model=VideoResponse, responses=ERROR_RESPONSES,
        summary="Generate videos from a prompt",
    )
    async def generate_video(body: video_model, request: Request):
        started = time.perf_counter()
        engine = request.app.state.engine
        raw = negotiate(request.headers.get("accept"), media.VIDEO_FORMATS, body.output_format)
        if raw is not None and body.num_videos != 1:
            raise NotAcceptableError("raw video bytes need num_videos=1; ask for JSON instead")
        spec = video_spec(engine, body)
        output = await engine.submit(spec)
        fmt = raw or body.output_format
        encoded, encode_s = await encode_output(engine, output, fmt, body.fps)
        headers = media_headers(output)
        if raw is not None:
            return Response(encoded[0], media_type=media.VIDEO_FORMATS[fmt], headers=headers)
        return JSONResponse(
            video_payload(output, spec, encoded, fmt, body.fps,
                          timings_of(output, encode_s, started)),
            headers=headers,
        )

    return router
