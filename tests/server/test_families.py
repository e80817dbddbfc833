"""Flux (image) and Wan2.1 (video) local folders served by /generate/image and /video."""

import base64
import io

import imageio.v3 as iio
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from server.app import create_app
from tests.helpers.serving import make_settings_with_video
from trdq.testing.tiny_families import tiny_flux_pipeline, tiny_wan_pipeline


@pytest.fixture(scope="module")
def families_client(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    tiny_flux_pipeline().save_pretrained(root / "flux")
    tiny_wan_pipeline().save_pretrained(root / "wan")
    settings = make_settings_with_video(root, model=str(root / "flux"), video_model=str(root / "wan"),
                             warmup=False)
    with TestClient(create_app(settings)) as client:
        yield client


def test_flux_folder_serves_images(families_client):
    reply = families_client.post("/generate/image", json={
        "prompt": "a red circle", "width": 32, "height": 48, "num_inference_steps": 1,
        "guidance_scale": 3.5, "num_images": 2,
    })
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert len(body["images"]) == 2
    image = Image.open(io.BytesIO(base64.b64decode(body["images"][0]["b64"])))
    assert image.size == (32, 48)


def test_wan_folder_serves_4k_plus_1_frame_videos(families_client):
    reply = families_client.post("/generate/video", json={
        "prompt": "a blue square moving left", "width": 32, "height": 32, "num_frames": 5,
        "num_inference_steps": 2, "output_format": "gif",
    })
    assert reply.status_code == 200, reply.text
    video = reply.json()["videos"][0]
    assert video["num_frames"] == 5
    frames = iio.imread(base64.b64decode(video["b64"]), extension=".gif", index=None)
    assert frames.shape[0] == 5 and frames.shape[1:3] == (32, 32)


def test_wan_frame_counts_are_4k_plus_1(families_client):
    reply = families_client.post("/generate/video", json={
        "prompt": "a red circle", "width": 32, "height": 32, "num_frames": 6,
        "num_inference_steps": 1,
    })
    assert reply.status_code == 422
    assert "1 + 4k frames" in reply.json()["error"]["message"]
    # no num_frames: the longest 4k + 1 under TRDQ_MAX_FRAMES (16 in these settings)
    reply = families_client.post("/generate/video", json={
        "prompt": "a red circle", "width": 32, "height": 32, "num_inference_steps": 1,
    })
    assert reply.status_code == 200, reply.text
    assert reply.json()["videos"][0]["num_frames"] == 13
