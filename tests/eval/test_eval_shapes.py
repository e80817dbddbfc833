import numpy as np
import pytest

from trdq.data import PALETTE, all_captions, parse_caption, render_image, render_video
from trdq.eval.perturb import degrade
from trdq.eval.segment import nearest_shape_color
from trdq.eval.shapes import evaluate, predict_image, predict_video, score, summarize

CLEAN = {"noise_std": 0.0, "blur_sigma": 0.0}
# "Mild" degradation: generated frames are noisier and softer than rendered ones.
NOISY = {"noise_std": 8.0, "blur_sigma": 0.8}
# Well past what a decent generator produces; the evaluator should still mostly hold.
HARSH = {"noise_std": 20.0, "blur_sigma": 1.5}


def _image_scores(n: int, size: int, seed: int, degradation: dict) -> list[dict[str, bool]]:
    rng = np.random.default_rng(seed)
    captions = all_captions("image")
    scores = []
    for index in rng.choice(len(captions), n, replace=False):
        image = render_image(captions[index], size, rng=rng)
        scores.append(evaluate(degrade(image, rng, **degradation), captions[index]))
    return scores


def _video_scores(n: int, seed: int, degradation: dict) -> list[dict[str, bool]]:
    rng = np.random.default_rng(seed)
    captions = all_captions("video")
    scores = []
    for index in rng.choice(len(captions), n, replace=False):
        video = render_video(captions[index], 16, 64, rng=rng)
        scores.append(evaluate(degrade(video, rng, **degradation), captions[index]))
    return scores


@pytest.mark.parametrize("degradation", [CLEAN, NOISY], ids=["clean", "noisy"])
@pytest.mark.parametrize("size", [128, 64])
def test_image_accuracy(size, degradation):
    accuracy, per_attribute = summarize(
        _image_scores(150, size, seed=size, degradation=degradation)
    )
    assert set(per_attribute) == {"color", "shape", "size", "position", "background"}
    assert min(per_attribute.values()) >= 0.99, per_attribute
    assert accuracy >= 0.98


@pytest.mark.parametrize("degradation", [CLEAN, NOISY], ids=["clean", "noisy"])
def test_video_accuracy(degradation):
    accuracy, per_attribute = summarize(_video_scores(60, seed=7, degradation=degradation))
    assert set(per_attribute) == {"color", "shape", "size", "background", "direction", "speed"}
    assert min(per_attribute.values()) >= 0.99, per_attribute
    assert accuracy >= 0.98


@pytest.mark.parametrize("size", [128, 64])
def test_image_accuracy_under_harsh_degradation(size):
    _, per_attribute = summarize(_image_scores(100, size, seed=size + 1, degradation=HARSH))
    assert min(per_attribute.values()) >= 0.97, per_attribute


def test_see_through_colour_is_attributed_to_the_shape():
    red = np.array(PALETTE["red"], dtype=np.float32)
    blue = np.array(PALETTE["blue"], dtype=np.float32)
    half_blue_over_red = 0.5 * red + 0.5 * blue  # looks purple, but is a blurred blue shape
    assert nearest_shape_color(half_blue_over_red, red, "red") == "blue"
    purple = np.array(PALETTE["purple"], dtype=np.float32)
    assert nearest_shape_color(purple, red, "red") == "purple"


def test_prediction_of_a_known_image():
    text = "a large orange triangle at the bottom right on a purple background"
    prediction = predict_image(render_image(text))
    assert (prediction.shape, prediction.color, prediction.size) == ("triangle", "orange", "large")
    assert (prediction.position, prediction.background) == ("bottom right", "purple")
    assert score(prediction, text) == dict.fromkeys(
        ["color", "shape", "size", "position", "background"], True
    )


def test_prediction_of_a_known_video():
    text = "a small green cross moving up quickly on a white background"
    prediction = predict_video(render_video(text))
    assert (prediction.direction, prediction.speed) == ("up", "quickly")
    assert all(score(prediction, text).values())


def test_only_named_attributes_are_scored():
    image = render_image("a small blue circle at the top on a white background")
    assert score(predict_image(image), "a blue circle") == {"color": True, "shape": True}
    assert score(predict_image(image), parse_caption("a red square")) == {
        "color": False,
        "shape": False,
    }


def test_empty_frame_finds_only_the_background():
    blank = np.full((64, 64, 3), PALETTE["green"], dtype=np.uint8)
    prediction = predict_image(blank)
    assert prediction.shape is None and prediction.background == "green"
    video_prediction = predict_video(np.stack([blank] * 4))
    assert video_prediction.direction is None and video_prediction.background == "green"
    assert score(prediction, "a red circle on a green background") == {
        "color": False,
        "shape": False,
        "background": True,
    }


def test_random_pixels_are_not_a_shape():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(128, 128, 3)).astype(np.uint8)
    assert predict_image(noise).shape is None
    assert predict_video(rng.integers(0, 256, size=(8, 64, 64, 3)).astype(np.uint8)).shape is None


def test_summarize():
    accuracy, per_attribute = summarize(
        [{"color": True, "shape": True}, {"color": False, "shape": True, "speed": True}]
    )
    assert accuracy == 0.5
    assert per_attribute == {"color": 0.5, "shape": 1.0, "speed": 1.0}
    assert summarize([]) == (0.0, {})


def test_bad_input_shape():
    with pytest.raises(ValueError):
        evaluate(np.zeros((4, 4)), "a red circle")
