"""POST /v1/images/generations, compatible with the OpenAI Images API.

The official `openai` client works against this server unchanged
(`OpenAI(base_url="http://host:port/v1", api_key=TRDQ_API_KEY or "unused")`).
Supported: prompt, model (when given, the served image model's name; 422 otherwise),
n, size "WxH" or "auto", response_format b64_json, output_format png|jpeg|webp, and
output_compression (0-100: the JPEG quality, or lossy WebP at that quality). Accepted and
ignored, because clients send them and this server has nothing they could change:
quality, style, background (images are always opaque), moderation, user,
safety_identifier; a reply names those a request set in `X-TRDQ-Ignored-Params`, and
/info lists them. Extensions (pass them with the client's `extra_body`): negative_prompt,
seed, num_inference_steps, guidance_scale, quant. `response_format="url"` is refused with
a 422 that says why: the server keeps no files to link to. Any other field is a 422.
"""

# No `from __future__ import annotations`: FastAPI must see the body models built at run time.

import base64
import time
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, model_validator

from server.engine.jobs import JobSpec
from server.errors import InvalidRequestError, ModelUnavailableError
from server.routes.generate import (
    ERROR_RESPONSES,
    check_size,
    check_steps,
    encode_output,
    make_seeds,
    media_headers,
)
from server.schemas import (
    DEFAULT_STEPS,
    MAX_GUIDANCE,
    MAX_IMAGES_PER_REQUEST,
    STRICT_REQUEST,
    Limits,
)
from trdq.data.grammar import complete_text

SIZE_PATTERN = r"^(auto|[1-9][0-9]{0,4}x[1-9][0-9]{0,4})$"
#: OpenAI parameters accepted and ignored. Their values are not checked against OpenAI's
#: current lists (`quality` gains values between client releases): nothing reads them.
IGNORED_OPENAI_PARAMS = ("quality", "style", "background", "moderation", "user",
                         "safety_identifier")
#: output_compression is applied to these formats only (PNG is lossless).
COMPRESSIBLE_FORMATS = ("jpeg", "webp")
IGNORED_HEADER = "X-TRDQ-Ignored-Params"


def ignored_params(body) -> list[str]:
    """The OpenAI parameters this request set that had no effect on its reply."""
    given = body.model_fields_set
    ignored = [name for name in IGNORED_OPENAI_PARAMS if name in given]
    if "output_compression" in given and body.output_format not in COMPRESSIBLE_FORMATS:
        ignored.append("output_compression")
    return ignored


class OpenAIImage(BaseModel):
    b64_json: str
    revised_prompt: str | None = None


class OpenAIImagesResponse(BaseModel):
    created: int
    data: list[OpenAIImage]
    size: str
    output_format: str


def request_model(limits: Limits, model_name: str | None) -> type[BaseModel]:
    model_type = Literal[model_name] if model_name else str
    quant_type = Literal[limits.quant_names] if limits.quant_names else str

    class OpenAIImagesRequest(BaseModel):
        model_config = STRICT_REQUEST

        prompt: str = Field(min_length=1, max_length=limits.max_prompt_chars)
        model: model_type | None = Field(  # type: ignore[valid-type]
            default=None, description="The served image model; other names are refused"
        )
        n: int = Field(default=1, ge=1, le=MAX_IMAGES_PER_REQUEST)
        size: str = Field(default="auto", pattern=SIZE_PATTERN,
                          description='"WxH" (multiples of 8) or "auto" (the model default)')
        response_format: Literal["b64_json", "url"] = "b64_json"
        output_format: Literal["png", "jpeg", "webp"] = "png"
        output_compression: int | None = Field(
            default=None, ge=0, le=100,
            description="JPEG quality, or lossy WebP at this quality; PNG ignores it",
        )
        # Accepted and ignored (IGNORED_OPENAI_PARAMS).
        quality: str | None = Field(default=None, max_length=32)
        style: str | None = Field(default=None, max_length=32)
        background: str | None = Field(default=None, max_length=32)
        moderation: str | None = Field(default=None, max_length=32)
        user: str | None = Field(default=None, max_length=256)
        safety_identifier: str | None = Field(default=None, max_length=256)
        # Extensions beyond the OpenAI API.
        negative_prompt: str = Field(default="", max_length=limits.max_prompt_chars)
        seed: int | None = Field(default=None, ge=0, le=2**63 - 1 - MAX_IMAGES_PER_REQUEST)
        num_inference_steps: int = Field(
            default=min(DEFAULT_STEPS, limits.max_steps), ge=1, le=limits.max_steps
        )
        guidance_scale: float = Field(default=4.5, ge=0.0, le=MAX_GUIDANCE, allow_inf_nan=False)
        quant: quant_type | None = None  # type: ignore[valid-type]

        @model_validator(mode="after")
        def _size(self):
            if self.size != "auto":
                width, height = (int(part) for part in self.size.split("x"))
                if width % 8 or height % 8:
                    raise ValueError(f"size: {self.size} is not a multiple of 8 on both sides")
                if width * height > limits.max_pixels:
                    raise ValueError(
                        f"size: {self.size} exceeds the limit of {limits.max_pixels} pixels"
                    )
            return self

    return OpenAIImagesRequest


def make_router(limits: Limits, model_name: str | None) -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["openai"])
    body_model: Any = request_model(limits, model_name)  # built from the limits at run time

    @router.post("/images/generations", response_model=OpenAIImagesResponse,
                 responses=ERROR_RESPONSES, summary="OpenAI-compatible image generation")
    async def images_generations(body: body_model, request: Request):
        engine = request.app.state.engine
        if body.response_format == "url":
            raise InvalidRequestError(
                "response_format: 'url' is not supported (this server stores no files); "
                "use 'b64_json'"
            )
        served = engine.served_model("image", body.quant)
        if body.model is not None and body.model != served.name:
            raise ModelUnavailableError(
                f"model: this server serves {served.name!r}, not {body.model!r}"
            )
        check_steps(served, body.num_inference_steps)
        if body.size == "auto":
            width, height = served.default_width, served.default_height
        else:
            width, height = (int(part) for part in body.size.split("x"))
        check_size(engine, served, width, height)
        spec = JobSpec(
            task="image", quant=served.quant, prompt=body.prompt,
            negative_prompt=body.negative_prompt, width=width, height=height,
            num_inference_steps=body.num_inference_steps, guidance_scale=body.guidance_scale,
            seeds=make_seeds(body.seed, body.n),
        )
        output = await engine.submit(spec)
        compression = (body.output_compression
                       if body.output_format in COMPRESSIBLE_FORMATS else None)
        encoded, _ = await encode_output(engine, output, body.output_format,
                                         quality=compression)
        headers = media_headers(output)
        ignored = ignored_params(body)
        if ignored:
            headers[IGNORED_HEADER] = ", ".join(ignored)
        # OpenAI's revised_prompt: the caption an embedded model completed from the seed
        revised = [complete_text(body.prompt, seed, video=False) if served.completes_captions
                   else body.prompt for seed in spec.seeds]
        return JSONResponse({
            "created": int(time.time()),
            "data": [{"b64_json": base64.b64encode(blob).decode(),
                      **({"revised_prompt": text} if text != body.prompt else {})}
                     for blob, text in zip(encoded, revised)],
            "size": f"{width}x{height}",
            "output_format": body.output_format,
        }, headers=headers)

    return router
