"""The embedded models complete partial captions from the prompt's seed before encoding
(``trdq.pipeline.served_prompts``), and the README's examples then come out right."""

from __future__ import annotations

import pytest

from trdq.data.grammar import parse_caption
from trdq.eval.shapes import evaluate
from trdq.pipeline import GenerationRequest, generate, load_pipeline, served_prompts
from trdq.testing.tiny import tiny_pixart_pipeline


@pytest.fixture(scope="module")
def image_pipe():
    return load_pipeline("tiny-shapes-t2i")


def test_partial_captions_are_completed_from_the_seed(image_pipe):
    served = served_prompts(image_pipe, ["a red circle", "a red circle", "a red circle"],
                            [0, 0, 1])
    caption = parse_caption(served[0])
    assert caption.is_complete and caption.color == "red" and caption.shape == "circle"
    assert served[0] == served[1]  # the seed decides
    full = "a small red circle at the top on a green background"
    assert served_prompts(image_pipe, [full, "hello", "a circle moving up"], [5, 5, 5]) == [
        full, "hello", "a circle moving up"]  # full, outside the grammar, motion for images


def test_the_video_model_completes_motion_but_keeps_a_position_as_written():
    video = load_pipeline("tiny-shapes-t2v")
    moving, placed = served_prompts(video, ["a blue square", "a red circle at the top"], [0, 0])
    assert parse_caption(moving).is_video and parse_caption(moving).is_complete
    assert placed == "a red circle at the top"


def test_other_pipelines_get_their_prompts_as_written():
    pipe = tiny_pixart_pipeline()
    assert served_prompts(pipe, ["a red circle"], [0]) == ["a red circle"]


def _right_for_seeds(pipe, prompt: str, seeds: range) -> int:
    size = int(pipe.transformer.config.sample_size) * int(pipe.vae_scale_factor)
    samples = generate(pipe, GenerationRequest([prompt] * len(seeds), list(seeds), size, size,
                                               20, 4.5))
    return sum(all(evaluate(s, prompt).values()) for s in samples)


@pytest.mark.parametrize("prompt", ["a red circle",
                                    "a small red circle at the top left on a white background"])
def test_readme_image_examples_are_right_for_seeds_0_to_9(image_pipe, prompt):
    assert _right_for_seeds(image_pipe, prompt, range(10)) == 10


@pytest.mark.slow  # ~30 s of video sampling on 2 cores
def test_readme_video_example_is_right_for_seeds_0_to_9():
    right = _right_for_seeds(load_pipeline("tiny-shapes-t2v"), "a blue square moving right",
                             range(10))
    assert right == 10
