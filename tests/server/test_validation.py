"""Every invalid field gets a 422 whose message names it."""

import pytest

BAD_IMAGE_FIELDS = [
    ("prompt", {"prompt": ""}),
    ("prompt", {"prompt": "x" * 1001}),
    ("width", {"width": 100}),
    ("height", {"height": 0}),
    ("width", {"width": 4096, "height": 4096}),
    ("num_inference_steps", {"num_inference_steps": 0}),
    ("num_inference_steps", {"num_inference_steps": 1}),  # PixArt + multistep solver
    ("num_inference_steps", {"num_inference_steps": 101}),
    ("guidance_scale", {"guidance_scale": 20.5}),
    ("guidance_scale", {"guidance_scale": -1}),
    ("num_images", {"num_images": 5}),
    ("output_format", {"output_format": "bmp"}),
    ("seed", {"seed": -1}),
    ("quant", {"quant": "w2a2"}),
    ("unexpected", {"unexpected": 1}),
]


@pytest.mark.parametrize("field,change", BAD_IMAGE_FIELDS)
def test_bad_image_field_is_named_in_a_422(client, field, change):
    body = {"prompt": "a red circle", **change}
    reply = client.post("/generate/image", json=body)
    assert reply.status_code == 422, reply.text
    error = reply.json()["error"]
    assert error["type"] == "invalid_request"
    assert field in error["message"]


@pytest.mark.parametrize("field,change", [
    ("num_frames", {"num_frames": 0}),
    ("num_frames", {"num_frames": 17}),
    ("fps", {"fps": 0}),
    ("output_format", {"output_format": "avi"}),
])
def test_bad_video_field_is_named_in_a_422(client, field, change):
    reply = client.post("/generate/video", json={"prompt": "a blue square", **change})
    assert reply.status_code == 422
    assert field in reply.json()["error"]["message"]


def test_missing_prompt_and_wrong_types_are_422(client):
    assert "prompt" in client.post("/generate/image", json={}).json()["error"]["message"]
    reply = client.post("/generate/image", json={"prompt": "x", "width": "wide"})
    assert reply.status_code == 422 and "width" in reply.json()["error"]["message"]


def test_malformed_json_is_a_4xx_json_error(client):
    reply = client.post(
        "/generate/image", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert 400 <= reply.status_code < 500
    assert "error" in reply.json()


def test_unknown_route_is_json_404(client):
    reply = client.get("/nope")
    assert reply.status_code == 404
    assert reply.json()["error"]["type"] == "not_found"
