import numpy as np
import pytest

from trdq.data import PALETTE, Caption, parse_caption, render_image, render_video
from trdq.data.render import coverage, layout


def _centroid(frame: np.ndarray, background: str) -> np.ndarray:
    weight = np.abs(frame.astype(float) - PALETTE[background]).sum(-1)
    ys, xs = np.nonzero(weight > 0)
    w = weight[ys, xs]
    return np.array([(xs * w).sum(), (ys * w).sum()]) / w.sum()


@pytest.mark.parametrize("size", [(128, 128), (64, 64), (48, 96), (200, 120)])
def test_image_shape_dtype_and_colours(size):
    height, width = size
    image = render_image("a large blue square at the center on a yellow background", height, width)
    assert image.shape == (height, width, 3) and image.dtype == np.uint8
    assert tuple(image[0, 0]) == PALETTE["yellow"]
    assert tuple(image[height // 2, width // 2]) == PALETTE["blue"]


def test_render_is_deterministic_and_anti_aliased():
    text = "a medium green circle at the top left on a black background"
    a, b = render_image(text), render_image(text)
    np.testing.assert_array_equal(a, b)
    values = {tuple(p) for p in a.reshape(-1, 3)}
    assert len(values) > 5  # edge pixels blend the two colours
    jittered = [render_image(text, rng=np.random.default_rng(s)) for s in (0, 0, 1)]
    np.testing.assert_array_equal(jittered[0], jittered[1])
    assert not np.array_equal(jittered[0], jittered[2])


def test_partial_caption_uses_documented_defaults():
    np.testing.assert_array_equal(
        render_image("a red circle"),
        render_image("a medium red circle at the center on a white background"),
    )
    np.testing.assert_array_equal(
        render_video("a red circle", num_frames=4),
        render_video("a medium red circle moving right slowly on a white background", 4),
    )


def test_position_puts_the_shape_in_its_cell():
    image = render_image("a small red cross at the bottom left on a white background", 90)
    x, y = _centroid(image, "white") / 90
    assert x < 1 / 3 and y > 2 / 3


def test_coverage_area_matches_geometry():
    side = 0.3 * 100
    for shape, fill in (
        ("square", 1.0),
        ("circle", np.pi / 4),
        ("triangle", 0.5),
        ("cross", 5 / 9),
    ):
        alpha = coverage(shape, 100, 100, (0.5, 0.5), 0.3)
        assert alpha.sum() == pytest.approx(fill * side**2, rel=0.01)


@pytest.mark.parametrize(
    ("direction", "axis", "sign"), [("right", 0, 1), ("left", 0, -1), ("up", 1, -1), ("down", 1, 1)]
)
def test_video_moves_along_direction(direction, axis, sign):
    video = render_video(f"a large white triangle moving {direction} quickly", 16, 64)
    assert video.shape == (16, 64, 64, 3) and video.dtype == np.uint8
    track = np.array([_centroid(frame, "black") for frame in video])
    steps = np.diff(track[:, axis]) * sign
    assert (steps > 0).all()
    assert abs(track[-1, 1 - axis] - track[0, 1 - axis]) < 0.5
    # The shape stays inside the frame: the border keeps the background colour.
    assert (video[:, 0, :] == 0).all() and (video[:, :, -1] == 0).all()


def test_speed_sets_travel():
    slow = layout(parse_caption("a circle moving left slowly").complete(), 16).centers
    quick = layout(parse_caption("a circle moving left quickly").complete(), 16).centers
    assert abs(quick[-1, 0] - quick[0, 0]) == pytest.approx(2 * abs(slow[-1, 0] - slow[0, 0]))


def test_kind_mismatch_is_refused():
    with pytest.raises(ValueError):
        render_image("a red circle moving left")
    with pytest.raises(ValueError):
        render_video(Caption(shape="circle", position="top"))
