import numpy as np
import pytest

from trdq.data import (
    COLORS,
    Caption,
    CaptionError,
    all_captions,
    format_caption,
    parse_caption,
    vocabulary,
)


def test_full_captions_round_trip():
    for kind in ("image", "video"):
        for caption in all_captions(kind):
            assert parse_caption(caption.text) == caption


@pytest.mark.parametrize(
    "text",
    [
        "a red circle",
        "a circle",
        "a large triangle",
        "a cross at the bottom right",
        "a green square on a black background",
        "a blue square moving right quickly on a black background",
        "a small purple cross moving up",
        "an orange circle at the top on a white background",
    ],
)
def test_partial_captions_round_trip(text):
    assert parse_caption(text).text == text


def test_examples_parse_to_attributes():
    caption = parse_caption("a small red circle at the top left on a white background")
    assert caption == Caption(
        shape="circle", color="red", size="small", position="top left", background="white"
    )
    video = parse_caption("a blue square moving right quickly on a black background")
    assert video.is_video and video.direction == "right" and video.speed == "quickly"
    assert video.specified() == {
        "color": "blue",
        "shape": "square",
        "direction": "right",
        "speed": "quickly",
        "background": "black",
    }


def test_parse_is_lenient_about_case_spaces_and_article():
    assert parse_caption("  A Red  Circle. ") == Caption(shape="circle", color="red")
    assert parse_caption("a orange circle") == Caption(shape="circle", color="orange")
    assert format_caption(Caption(shape="circle", color="orange")) == "an orange circle"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a red",
        "a pink circle",
        "a red circle on a red background",
        "a red circle at the top moving left",
        "a circle red",
        "the red circle",
        "a red circle at the middle",
    ],
)
def test_bad_captions_raise(text):
    with pytest.raises(CaptionError):
        parse_caption(text)


def test_caption_validates_fields():
    with pytest.raises(CaptionError):
        Caption(shape="hexagon")
    with pytest.raises(CaptionError):
        Caption(shape="circle", speed="quickly")
    with pytest.raises(ValueError):  # CaptionError is a ValueError
        Caption(shape="circle", color="red", background="red")


def test_vocabulary_covers_every_caption_word():
    vocab = vocabulary()
    assert vocab == sorted(set(vocab))
    assert all(word == word.lower() and " " not in word for word in vocab)
    words = set()
    for kind in ("image", "video"):
        for caption in all_captions(kind):
            words.update(caption.text.split())
    words.update(["an", "orange", "circle"])
    assert words <= set(vocab)
    assert set(vocab) <= words


def test_complete_defaults_and_sampling():
    full = parse_caption("a red circle").complete()
    assert full.text == "a medium red circle at the center on a white background"
    # The default background is never the shape colour.
    assert parse_caption("a white circle").complete().background == "black"
    assert parse_caption("a circle moving up").complete().text == (
        "a medium red circle moving up slowly on a white background"
    )
    assert parse_caption("a circle").complete(video=True).direction == "right"
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    sampled = [Caption(shape="cross").complete(rng_a) for _ in range(50)]
    assert sampled == [Caption(shape="cross").complete(rng_b) for _ in range(50)]
    assert all(c.background != c.color for c in sampled)
    assert len({c.color for c in sampled}) > 4
    assert all(c.color in COLORS and c.position is not None for c in sampled)


def test_complete_never_paints_the_shape_in_a_given_background():
    on_yellow = parse_caption("a circle on a yellow background")
    rng = np.random.default_rng(0)
    colors = {on_yellow.complete(rng, video=True).color for _ in range(200)}
    assert "yellow" not in colors and len(colors) == len(COLORS) - 1
    assert parse_caption("a circle on a red background").complete().color != "red"
