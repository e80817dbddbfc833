"""Two-shape scenes (trdq.data.scene, trdq.eval.scene) on the CPU: the grammar round-trips,
completion keeps the shapes two cells apart and unlike the background, and every rendered
scene reads back right, while a wrong caption reads wrong."""

from __future__ import annotations

import numpy as np
import pytest

from trdq.data.grammar import POSITIONS, CaptionError, parse_caption
from trdq.data.scene import Scene, far_apart, parse_scene, render_scene
from trdq.eval.scene import evaluate_scene
from trdq.zoo.tokenizer import vocabulary_words


def test_text_round_trips_and_the_tokenizer_knows_every_word():
    text = "a small red circle at the top left and a blue square at the bottom right " \
           "on a white background"
    scene = parse_scene(text)
    assert scene.text == text and scene.is_complete is False  # sizes/colours partly unnamed
    assert scene.background == "white" and scene.second.shape == "square"
    assert parse_scene("A red circle and a blue cross.").text == "a red circle and a blue cross"
    assert set(text.split()) <= set(vocabulary_words())


@pytest.mark.parametrize("text", [
    "a red circle",  # one shape
    "a red circle on a white background and a blue square",  # background not at the end
    "a red circle at the top left and a blue square at the top",  # neighbours
    "a white circle and a blue square on a white background",  # colour = background
    "a red circle moving left and a blue square",  # motion
])
def test_what_a_scene_cannot_be(text):
    with pytest.raises(CaptionError):
        parse_scene(text)


def test_far_apart_is_two_cells_in_rows_or_columns():
    assert far_apart("top left", "top right") and far_apart("left", "bottom right")
    assert not far_apart("center", "top left") and not far_apart("top", "top right")
    assert all(any(far_apart(p, q) for q in POSITIONS) for p in POSITIONS if p != "center")


def test_completion_fills_valid_scenes():
    rng = np.random.default_rng(0)
    partial = Scene(parse_caption("a circle at the right"), parse_caption("a red square"))
    unnamed = Scene(parse_caption("a cross"), parse_caption("a circle"))
    for _ in range(50):
        for full in (partial.complete(rng), unnamed.complete(rng)):
            assert full.is_complete
            assert far_apart(full.first.position, full.second.position)
            assert full.background not in (full.first.color, full.second.color)
        assert partial.complete(rng).first.position == "right"
    fixed = Scene(parse_caption("a cross"), parse_caption("a circle at the top")).complete()
    assert fixed.first.position == "bottom left"  # the first position two cells away
    with pytest.raises(CaptionError, match="center"):
        Scene(parse_caption("a cross at the center"), parse_caption("a circle"))


SHAPES = ("circle", "square", "triangle", "cross")


def test_rendered_scenes_read_back_and_wrong_captions_do_not():
    rng = np.random.default_rng(1)
    wrong_reads = checked = 0
    for i in range(12):
        scene = Scene(parse_caption(f"a {SHAPES[i % 4]}"), parse_caption(f"a {SHAPES[3 - i % 4]}"))
        full = scene.complete(rng)
        image = render_scene(full, 96, rng=rng)
        scores = evaluate_scene(image, full)
        assert all(scores.values()), (full.text, scores)
        # the first shape in a colour neither shape has (so no order of the two matches it)
        other = next(c for c in ("red", "blue", "green", "yellow")
                     if c not in (full.first.color, full.second.color, full.background))
        wrong = Scene(full.first.replace(color=other), full.second, full.background)
        wrong_reads += not all(evaluate_scene(image, wrong).values())
        checked += 1
    assert wrong_reads == checked
