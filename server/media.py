"""Encode generated frames (uint8 numpy arrays) as images and videos. No torch here."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

IMAGE_FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
VIDEO_FORMATS = {"mp4": "video/mp4", "gif": "image/gif", "webp": "image/webp"}


DEFAULT_JPEG_QUALITY = 95


def encode_image(pixels: np.ndarray, fmt: str, quality: int | None = None) -> bytes:
    """[H, W, 3] uint8 -> PNG/JPEG/WebP bytes.

    `quality` (0-100) sets JPEG quality and makes WebP lossy at that quality; PNG is
    lossless and ignores it. Without it WebP is lossless, so seeds reproduce bytes."""
    buffer = io.BytesIO()
    image = Image.fromarray(pixels, mode="RGB") if pixels.ndim == 3 else Image.fromarray(pixels)
    if fmt == "png":
        image.save(buffer, format="PNG")
    elif fmt == "jpeg":
        image.save(buffer, format="JPEG",
                   quality=DEFAULT_JPEG_QUALITY if quality is None else quality)
    elif fmt == "webp":
        if quality is None:
            image.save(buffer, format="WEBP", lossless=True)
        else:
            image.save(buffer, format="WEBP", quality=quality)
    else:
        raise ValueError(f"unsupported image format {fmt!r}")
    return buffer.getvalue()


def encode_video(frames: np.ndarray, fmt: str, fps: int) -> bytes:
    """[F, H, W, 3] uint8 -> MP4 (H.264, yuv420p) / GIF / animated WebP bytes."""
    if fmt == "mp4":
        return _encode_mp4(frames, fps)
    images = [Image.fromarray(frame) for frame in frames]
    buffer = io.BytesIO()
    duration_ms = max(1, round(1000 / fps))
    if fmt == "gif":
        images[0].save(
            buffer, format="GIF", save_all=True, append_images=images[1:],
            duration=duration_ms, loop=0,
        )
    elif fmt == "webp":
        images[0].save(
            buffer, format="WEBP", save_all=True, append_images=images[1:],
            duration=duration_ms, loop=0, lossless=True,
        )
    else:
        raise ValueError(f"unsupported video format {fmt!r}")
    return buffer.getvalue()


def _encode_mp4(frames: np.ndarray, fps: int) -> bytes:
    """H.264 in yuv420p so browsers play it. yuv420p needs even sides: pad by one pixel."""
    import imageio.v3 as iio

    height, width = frames.shape[1:3]
    pad_h, pad_w = height % 2, width % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return iio.imwrite(
        "<bytes>",
        frames,
        extension=".mp4",
        plugin="FFMPEG",  # imageio-ffmpeg's bundled ffmpeg (libx264)
        fps=fps,
        codec="libx264",
        pixelformat="yuv420p",
        macro_block_size=1,
        output_params=["-movflags", "+faststart"],
    )
