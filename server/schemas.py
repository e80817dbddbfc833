"""Request and response models. Bounds live here; no torch.

The request models are built from the server's limits (`request_models(limits)`), so
the OpenAPI schema publishes the real bounds and pydantic rejects what breaks them
with a 422 that names the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_IMAGES_PER_REQUEST = 4
MAX_GUIDANCE = 20.0
DEFAULT_STEPS = 20  # lowered to the server's max_steps when that is smaller


@dataclass(frozen=True)
class Limits:
    max_pixels: int
    max_frames: int
    max_steps: int
    max_prompt_chars: int
    quant_names: tuple[str, ...]


#: Strict JSON types: `"128"`, `128.0` and `true` are not integers and `false` is not a
#: number (lax pydantic would coerce them, hiding client bugs); an integer is still a
#: valid number for float fields. NaN and infinities are refused by `allow_inf_nan`.
STRICT_REQUEST = ConfigDict(extra="forbid", strict=True)


class GenerationRequestBase(BaseModel):
    model_config = STRICT_REQUEST

    if TYPE_CHECKING:  # fields of every request model (``request_models``); not fields here
        width: int | None
        height: int | None

    def check_size(self, max_pixels: int) -> None:
        """The pixel budget; each side's multiple of 8 is a field constraint (`multipleOf`)."""
        if (self.width is not None and self.height is not None
                and self.width * self.height > max_pixels):
            raise ValueError(
                f"width x height = {self.width * self.height} exceeds the limit of "
                f"{max_pixels} pixels"
            )


def request_models(limits: Limits) -> tuple[type[BaseModel], type[BaseModel]]:
    """(ImageRequest, VideoRequest) with these limits."""
    quant_type = Literal[limits.quant_names] if limits.quant_names else str

    class ImageRequest(GenerationRequestBase):
        prompt: str = Field(min_length=1, max_length=limits.max_prompt_chars)
        negative_prompt: str = Field(default="", max_length=limits.max_prompt_chars)
        width: int | None = Field(
            default=None, ge=8, le=limits.max_pixels // 8, multiple_of=8
        )
        height: int | None = Field(
            default=None, ge=8, le=limits.max_pixels // 8, multiple_of=8
        )
        num_inference_steps: int = Field(
            default=min(DEFAULT_STEPS, limits.max_steps), ge=1, le=limits.max_steps
        )
        guidance_scale: float = Field(default=4.5, ge=0.0, le=MAX_GUIDANCE, allow_inf_nan=False)
        seed: int | None = Field(default=None, ge=0, le=2**63 - 1 - MAX_IMAGES_PER_REQUEST)
        num_images: int = Field(default=1, ge=1, le=MAX_IMAGES_PER_REQUEST)
        output_format: Literal["png", "jpeg", "webp"] = "png"
        quant: quant_type | None = None  # type: ignore[valid-type]

        @model_validator(mode="after")
        def _size(self):
            self.check_size(limits.max_pixels)
            return self

    class VideoRequest(GenerationRequestBase):
        prompt: str = Field(min_length=1, max_length=limits.max_prompt_chars)
        negative_prompt: str = Field(default="", max_length=limits.max_prompt_chars)
        width: int | None = Field(
            default=None, ge=8, le=limits.max_pixels // 8, multiple_of=8
        )
        height: int | None = Field(
            default=None, ge=8, le=limits.max_pixels // 8, multiple_of=8
        )
        num_frames: int | None = Field(default=None, ge=1, le=limits.max_frames)
        fps: int = Field(default=8, ge=1, le=60)
        num_inference_steps: int = Field(
            default=min(DEFAULT_STEPS, limits.max_steps), ge=1, le=limits.max_steps
        )
        guidance_scale: float = Field(default=4.5, ge=0.0, le=MAX_GUIDANCE, allow_inf_nan=False)
        seed: int | None = Field(default=None, ge=0, le=2**63 - 1 - MAX_IMAGES_PER_REQUEST)
        num_videos: int = Field(default=1, ge=1, le=MAX_IMAGES_PER_REQUEST)
        output_format: Literal["mp4", "gif", "webp"] = "mp4"
        quant: quant_type | None = None  # type: ignore[valid-type]

        @model_validator(mode="after")
        def _size(self):
            self.check_size(limits.max_pixels)
            return self

    return ImageRequest, VideoRequest


class Timings(BaseModel):
    queue_s: float
    text_encode_s: float
    denoise_s: float
    vae_decode_s: float
    encode_s: float
    total_s: float


class ImageItem(BaseModel):
    b64: str
    seed: int


class ImageResponse(BaseModel):
    images: list[ImageItem]
    model: str
    quant: str
    width: int
    height: int
    format: str
    timings: Timings


class VideoItem(BaseModel):
    b64: str
    seed: int
    num_frames: int
    fps: int
    format: str


class VideoResponse(BaseModel):
    videos: list[VideoItem]
    model: str
    quant: str
    width: int
    height: int
    timings: Timings


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail
