"""End-to-end generation through the app: formats, sizes, seeds, raw bytes."""

import base64
import io

import imageio.v3 as iio
import pytest
from PIL import Image

FAST = {"num_inference_steps": 2}


def _decode_image(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


@pytest.mark.parametrize("fmt,pil_format", [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_image_size_and_format_match_the_request(client, fmt, pil_format):
    reply = client.post("/generate/image", json={
        "prompt": "a red circle", "width": 96, "height": 64, "output_format": fmt, **FAST,
    })
    assert reply.status_code == 200, reply.text
    body = reply.json()
    image = _decode_image(body["images"][0]["b64"])
    assert image.format == pil_format
    assert image.size == (96, 64)
    assert body["model"] == "tiny-shapes-t2i" and body["quant"] == "fp"
    assert set(body["timings"]) >= {"queue_s", "denoise_s", "vae_decode_s", "total_s"}


def test_num_images_returns_one_seed_each(client):
    reply = client.post("/generate/image", json={
        "prompt": "a red circle", "num_images": 2, "seed": 41, **FAST,
    })
    assert reply.status_code == 200
    assert [item["seed"] for item in reply.json()["images"]] == [41, 42]


def test_same_seed_gives_identical_bytes(client):
    request = {"prompt": "a green square", "seed": 1234, **FAST}
    first = client.post("/generate/image", json=request).json()["images"][0]["b64"]
    second = client.post("/generate/image", json=request).json()["images"][0]["b64"]
    third = client.post("/generate/image", json={**request, "seed": 1235}).json()
    assert first == second
    assert third["images"][0]["b64"] != first


def test_accept_header_returns_raw_image_bytes(client):
    reply = client.post(
        "/generate/image", json={"prompt": "a red circle", **FAST},
        headers={"accept": "image/webp"},
    )
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "image/webp"
    assert reply.headers["x-trdq-quant"] == "fp"
    assert Image.open(io.BytesIO(reply.content)).format == "WEBP"


def test_raw_bytes_with_several_images_is_not_acceptable(client):
    reply = client.post(
        "/generate/image", json={"prompt": "a red circle", "num_images": 2, **FAST},
        headers={"accept": "image/png"},
    )
    assert reply.status_code == 406
    assert reply.json()["error"]["type"] == "not_acceptable"


def test_mp4_decodes_to_the_requested_frames_and_size(client):
    reply = client.post("/generate/video", json={
        "prompt": "a blue square moving right", "num_frames": 5, "width": 48, "height": 32,
        **FAST,
    })
    assert reply.status_code == 200, reply.text
    video = reply.json()["videos"][0]
    assert video["num_frames"] == 5 and video["format"] == "mp4"
    frames = iio.imread(base64.b64decode(video["b64"]), extension=".mp4")
    assert frames.shape == (5, 32, 48, 3)


def test_mp4_is_h264_yuv420p(client):
    reply = client.post(
        "/generate/video", json={"prompt": "a blue square", "num_frames": 3, **FAST},
        headers={"accept": "video/mp4"},
    )
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "video/mp4"
    meta = iio.immeta(reply.content, extension=".mp4", plugin="FFMPEG")
    assert meta["codec"] == "h264"
    assert "yuv420p" in meta.get("pix_fmt", "yuv420p")


@pytest.mark.parametrize("fmt", ["gif", "webp"])
def test_animated_formats_hold_all_frames(client, fmt):
    reply = client.post("/generate/video", json={
        "prompt": "a blue square", "num_frames": 4, "output_format": fmt, **FAST,
    })
    assert reply.status_code == 200
    data = base64.b64decode(reply.json()["videos"][0]["b64"])
    image = Image.open(io.BytesIO(data))
    assert image.n_frames == 4
    assert image.size == (64, 64)


def test_default_video_has_the_models_frame_count(client):
    reply = client.post("/generate/video", json={"prompt": "a blue square", **FAST})
    assert reply.status_code == 200
    assert reply.json()["videos"][0]["num_frames"] == 16
