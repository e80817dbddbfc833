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


def test_split_prompts_mix_in_scenes_of_the_splits_shapes():
    from trdq.data.scene import parse_prompt
    from trdq.data.split import heldout_captions, split_prompts

    plain = heldout_captions(8, seed=3)
    prompts = split_prompts("heldout", 8, seed=3, scenes=0.25)
    kinds = [type(parse_prompt(p)).__name__ for p in prompts]
    assert kinds == ["Scene", "Caption", "Caption", "Caption"] * 2
    first = parse_prompt(prompts[0])
    assert (first.first.shape, first.second.shape) == (plain[0].shape, plain[1].shape)
    assert prompts[1] == plain[1].text
    with pytest.raises(ValueError, match="images only"):
        split_prompts("heldout", 4, kind="video", scenes=0.5)


def test_the_report_scores_scenes_under_the_grammars_columns():
    """Rendered prompts as the 'model': every prompt right, scenes a kind of their own."""
    from trdq.data.render import render_image
    from trdq.data.scene import parse_prompt
    from trdq.data.split import split_prompts
    from trdq.eval.report import caption_kind, run_quality

    prompts = split_prompts("heldout", 8, seed=5, partial=0.25, scenes=0.25)

    def renderer(texts, seeds):
        out = []
        for text, seed in zip(texts, seeds):
            rng = np.random.default_rng(seed)
            prompt = parse_prompt(text)
            out.append(render_scene(prompt, 96, rng=rng) if isinstance(prompt, Scene)
                       else render_image(prompt, 96, rng=rng))
        return out

    report = run_quality("rendered", {"fp": renderer}, prompts)
    row = report.results[0]
    assert row.accuracy == 1.0 and row.accuracy_by_kind["scene"] == 1.0
    assert set(row.per_attribute) <= {"color", "shape", "size", "position", "background"}
    assert caption_kind("a red circle and a blue square") == "scene"


def test_training_scenes_pair_training_combinations():
    """``build_set(scenes=...)``: some samples are scenes whose two shapes are each a
    training combination (same background, two cells apart); their texts parse as scenes;
    without scenes a seed gives the set it gave before."""
    from trdq.data.split import train_captions
    from trdq.tools.zoo_training.data import build_set

    train = {c.text for c in train_captions("image")}
    plain = build_set("image", 32, 1, seed=0, limit=24)
    assert build_set("image", 32, 1, seed=0, limit=24, scenes=0.0).texts == plain.texts
    mixed = build_set("image", 32, 1, seed=0, limit=24, scenes=0.5)
    scenes = [row for row in mixed.texts if " and " in row[0]]
    assert 4 <= len(scenes) <= 20 and mixed.pixels.shape == (24, 32, 32, 3)
    for row in scenes:
        full = parse_scene(row[0])
        assert full.is_complete and all(parse_scene(t) for t in row[1:])
        for shape in (full.first, full.second):
            assert shape.replace(background=full.background).text in train
    with pytest.raises(ValueError, match="images only"):
        build_set("video", 16, 1, seed=0, limit=2, scenes=0.5)
