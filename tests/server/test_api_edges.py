"""The edges clients hit (issue 27): OpenAI parameters, Accept, the bearer scheme, strict
JSON types, the published schema, undecodable bodies, OPTIONS and 405.

Most checks happen before any route runs, so they use an app without its lifespan (no
model loaded: a body that passes validation gets 503); the OpenAI ones generate."""

from __future__ import annotations

import base64
import io

import openai
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from server.app import create_app
from server.errors import NotAcceptableError
from server.media import IMAGE_FORMATS, VIDEO_FORMATS
from server.negotiation import negotiate
from tests.helpers.serving import make_settings_with_video

KEY = "k3y-for-edges"
SMALL = {"size": "32x32", "num_inference_steps": 2, "seed": 3}
JOB_ID = "0123456789abcdef01234567"


@pytest.fixture(scope="module")
def bare(tmp_path_factory) -> TestClient:
    """The app without its lifespan: validation and routing only."""
    return TestClient(create_app(make_settings_with_video(tmp_path_factory.mktemp("bare"))))


# 1. OpenAI parameters that clients send

def test_openai_parameters_are_accepted_and_the_ignored_ones_named(client):
    body = {"prompt": "a red circle", **SMALL, "quality": "hd", "style": "vivid",
            "background": "opaque", "moderation": "low", "user": "u-1",
            "output_format": "jpeg", "output_compression": 20}
    reply = client.post("/v1/images/generations", json=body)
    assert reply.status_code == 200, reply.text
    ignored = reply.headers["x-trdq-ignored-params"].split(", ")
    assert ignored == ["quality", "style", "background", "moderation", "user"]
    info = client.get("/info").json()["openai_images"]
    assert set(ignored) <= set(info["ignored_params"])
    assert info["output_compression_formats"] == ["jpeg", "webp"]


def test_a_completed_caption_comes_back_as_revised_prompt(client):
    """The embedded model draws the attributes a caption leaves out from each image's seed;
    OpenAI's `revised_prompt` says which it drew (a full caption comes back without one)."""
    from trdq.data.grammar import parse_caption

    reply = client.post("/v1/images/generations",
                        json={"prompt": "a red circle", **SMALL, "n": 2})
    assert reply.status_code == 200, reply.text
    revised = [item["revised_prompt"] for item in reply.json()["data"]]
    assert all(parse_caption(text).is_complete for text in revised)
    assert all(parse_caption(text).color == "red" for text in revised)
    full = "a small red circle at the top left on a white background"
    reply = client.post("/v1/images/generations", json={"prompt": full, **SMALL})
    assert "revised_prompt" not in reply.json()["data"][0]


def test_the_official_openai_client_sends_its_parameters_unrefused(client):
    """The openai package's own request for the parameters it types, TestClient as transport."""
    openai_client = openai.OpenAI(base_url="http://testserver/v1", api_key="unused",
                                  http_client=client, max_retries=0)
    raw = openai_client.images.with_raw_response.generate(
        prompt="a red circle", size="32x32", n=1, response_format="b64_json",
        quality="high", style="natural", background="auto", moderation="auto", user="u-2",
        output_format="webp", output_compression=60,
        extra_body={"num_inference_steps": 2, "seed": 3},
    )
    assert raw.headers["x-trdq-ignored-params"] == "quality, style, background, moderation, user"
    result = raw.parse()
    assert len(result.data) == 1 and result.output_format == "webp"
    with pytest.raises(openai.UnprocessableEntityError):
        openai_client.images.generate(prompt="x", extra_body={"not_an_openai_field": 1})


def test_output_compression_sets_the_jpeg_and_webp_quality(client):
    sizes = {}
    for fmt in ("jpeg", "webp"):
        for compression in (5, 100):
            reply = client.post("/v1/images/generations", json={
                "prompt": "a red circle", **SMALL, "output_format": fmt,
                "output_compression": compression})
            assert reply.status_code == 200, reply.text
            assert "x-trdq-ignored-params" not in reply.headers
            blob = reply.json()["data"][0]["b64_json"]
            sizes[fmt, compression] = len(blob)
            Image.open(io.BytesIO(base64.b64decode(blob))).verify()
    assert sizes["jpeg", 5] < sizes["jpeg", 100]
    assert sizes["webp", 5] < sizes["webp", 100]
    png = client.post("/v1/images/generations", json={
        "prompt": "a red circle", **SMALL, "output_compression": 50})
    assert png.headers["x-trdq-ignored-params"] == "output_compression"  # PNG is lossless


def test_unknown_non_openai_fields_are_still_422(bare):
    for field in ("cache_dir", "qualty", "steps"):
        reply = bare.post("/v1/images/generations", json={"prompt": "x", field: 1})
        assert reply.status_code == 422, field
        assert field in reply.json()["error"]["message"]
    reply = bare.post("/v1/images/generations",
                      json={"prompt": "x", "output_compression": 101})
    assert reply.status_code == 422 and "output_compression" in reply.text


# 2. Accept

@pytest.mark.parametrize("accept,expected", [
    (None, None), ("", None), ("*/*", None), ("application/json", None),
    ("application/*", None),
    ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", None),
    ("image/png", "png"), ("image/webp", "webp"), ("IMAGE/JPEG", "jpeg"),
    ("image/avif,image/png;q=0.5", "png"),
    ("image/png;q=0.2, application/json;q=0.9", None),
    ("image/png;q=0, application/json", None),
    ("image/*", "png"),
    ("text/html,application/xhtml+xml,image/avif,image/webp,*/*;q=0.8", "webp"),
])
def test_accept_negotiation(accept, expected):
    assert negotiate(accept, IMAGE_FORMATS, "png") == expected


@pytest.mark.parametrize("accept", ["image/avif", "video/mp4", "text/html",
                                    "image/png;q=0", "application/xml, text/*"])
def test_unsupported_accept_is_406_naming_what_is_served(accept):
    with pytest.raises(NotAcceptableError) as error:
        negotiate(accept, IMAGE_FORMATS, "png")
    assert "image/png" in error.value.message and "application/json" in error.value.message


def test_video_wildcards_pick_a_video_format():
    assert negotiate("video/*", VIDEO_FORMATS, "mp4") == "mp4"
    assert negotiate("image/*", VIDEO_FORMATS, "mp4") == "gif"
    assert negotiate("image/*", VIDEO_FORMATS, "webp") == "webp"


@pytest.mark.parametrize("path,accept", [
    ("/generate/image", "image/avif"), ("/generate/image", "video/mp4"),
    ("/generate/video", "video/webm"), ("/generate/video", "image/png"),
])
def test_routes_answer_406_for_an_unsupported_accept(client, path, accept):
    reply = client.post(path, json={"prompt": "x"}, headers={"accept": accept})
    assert reply.status_code == 406, reply.text
    error = reply.json()["error"]
    assert error["type"] == "not_acceptable" and "supported" in error["message"]


# 3. The bearer scheme is case-insensitive

@pytest.mark.parametrize("authorization", [
    f"Bearer {KEY}", f"bearer {KEY}", f"BEARER {KEY}", f"bEaReR  {KEY}"])
def test_the_bearer_scheme_is_case_insensitive(tmp_path, authorization):
    app = TestClient(create_app(make_settings_with_video(tmp_path, api_key=KEY)))
    reply = app.post("/generate/image", json={"prompt": "x"},
                     headers={"authorization": authorization})
    assert reply.status_code == 503  # past the guard; no model in an app without lifespan


def test_wrong_schemes_and_keys_stay_401(tmp_path):
    app = TestClient(create_app(make_settings_with_video(tmp_path, api_key=KEY)))
    for authorization in (f"Basic {KEY}", f"bearer {KEY}x", f"bearer{KEY}", "bearer ", KEY):
        reply = app.post("/generate/image", json={"prompt": "x"},
                         headers={"authorization": authorization})
        assert reply.status_code == 401, authorization


# 4. Schema, strict types, messages, methods

def test_schema_says_sides_are_multiples_of_8(bare):
    schemas = bare.get("/openapi.json").json()["components"]["schemas"]
    for name in ("ImageRequest", "VideoRequest"):
        for side in ("width", "height"):
            variants = schemas[name]["properties"][side]["anyOf"]
            integer = next(v for v in variants if v.get("type") == "integer")
            assert integer["multipleOf"] == 8, (name, side)


@pytest.mark.parametrize("field,value", [
    ("guidance_scale", False), ("guidance_scale", "4.5"), ("width", "128"), ("width", 128.0),
    ("width", True), ("num_inference_steps", 2.0), ("seed", "7"), ("num_images", 1.5),
    ("prompt", 5),
])
def test_strict_types_are_422_naming_the_field(bare, field, value):
    reply = bare.post("/generate/image", json={"prompt": "x", field: value})
    assert reply.status_code == 422, (field, value)
    assert reply.json()["error"]["message"].startswith(f"{field}: must be")


@pytest.mark.parametrize("change", [{"guidance_scale": 4.5}, {"guidance_scale": 4},
                                    {"width": 128, "height": 64}, {"seed": 0}])
def test_well_typed_values_pass(bare, change):
    assert bare.post("/generate/image", json={"prompt": "x", **change}).status_code == 503


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_a_non_finite_guidance_must_be_finite(bare, literal):
    reply = bare.post("/generate/image", content=f'{{"prompt":"x","guidance_scale":{literal}}}',
                      headers={"content-type": "application/json"})
    assert reply.status_code == 422
    assert reply.json()["error"]["message"] == "guidance_scale: must be a finite number"


def test_a_non_json_body_says_so(bare):
    for path in ("/generate/image", "/v1/images/generations", "/jobs/video"):
        reply = bare.post(path, content=b"{not json",
                          headers={"content-type": "application/json"})
        assert reply.status_code == 422
        error = reply.json()["error"]
        assert error["type"] == "invalid_request"
        assert error["message"].startswith("body is not valid JSON"), error["message"]


def test_options_lists_every_method_of_a_path(bare):
    reply = bare.options(f"/jobs/{JOB_ID}")
    assert reply.status_code == 204
    assert set(reply.headers["allow"].split(", ")) == {"DELETE", "GET", "OPTIONS"}
    assert "POST" in bare.options("/generate/image").headers["allow"]


def test_wrong_methods_are_405_with_allow(bare):
    for path in ("/jobs/image", "/jobs/video"):
        reply = bare.get(path)
        assert reply.status_code == 405, path
        assert reply.json()["error"]["type"] == "method_not_allowed"
        assert reply.headers["allow"] == "OPTIONS, POST"
    reply = bare.put(f"/jobs/{JOB_ID}")
    assert reply.status_code == 405
    assert set(reply.headers["allow"].split(", ")) == {"DELETE", "GET", "OPTIONS"}
    assert bare.get("/jobs/not-an-id").status_code == 422  # a malformed id, not a method
    assert bare.get(f"/jobs/{JOB_ID}").status_code == 404


# 5. The playground is served without the key (it asks for it)

def test_the_playground_page_and_assets_need_no_key(tmp_path):
    app = TestClient(create_app(make_settings_with_video(tmp_path, api_key=KEY)))
    page = app.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="api-key"' in page.text and "http" not in page.text.split("<body>")[1]  # no CDN
    for asset, media_type in (("playground.js", "javascript"), ("playground.css", "text/css")):
        reply = app.get(f"/playground/{asset}")
        assert reply.status_code == 200 and media_type in reply.headers["content-type"]
    assert app.get("/playground/missing.js").status_code == 404
    assert app.get("/playground/..%2F..%2Fsettings.py").status_code == 404
    assert app.get("/info").status_code == 401  # the API itself still needs the key
    assert "/" not in app.get("/openapi.json", headers={
        "authorization": f"Bearer {KEY}"}).json()["paths"]
