import pytest

from trdq.data import (
    COLORS,
    DIRECTIONS,
    POSITIONS,
    SHAPES,
    SIZES,
    Caption,
    all_captions,
    heldout_captions,
    heldout_prompts,
    is_heldout,
    parse_caption,
    split_prompts,
    train_captions,
)


@pytest.mark.parametrize("kind", ["image", "video"])
def test_split_partitions_all_combinations(kind):
    everything = all_captions(kind)
    train, heldout = train_captions(kind), heldout_captions(kind=kind)
    assert len(everything) == len(set(everything))
    assert not set(train) & set(heldout)
    assert set(train) | set(heldout) == set(everything)
    assert 0.07 < len(heldout) / len(everything) < 0.13


def test_combination_counts():
    # colour x background (distinct) x shape x size x (position | direction x speed)
    assert len(all_captions("image")) == 8 * 7 * len(SHAPES) * len(SIZES) * len(POSITIONS)
    assert len(all_captions("video")) == 8 * 7 * len(SHAPES) * len(SIZES) * len(DIRECTIONS) * 2


def test_split_is_pinned():
    # The split must never drift: these are fixed by the hash rule.
    first = [c.text for c in heldout_captions(kind="image")[:2]]
    assert first == PINNED_IMAGE_HELDOUT
    assert len(heldout_captions(kind="image")) == PINNED_COUNTS["image"]
    assert len(heldout_captions(kind="video")) == PINNED_COUNTS["video"]


def test_every_attribute_value_is_trained():
    train = train_captions("image")
    for name, values in (
        ("color", COLORS),
        ("background", COLORS),
        ("shape", SHAPES),
        ("size", SIZES),
        ("position", POSITIONS),
    ):
        assert {getattr(c, name) for c in train} == set(values)


def test_heldout_sample_is_deterministic():
    assert heldout_prompts(20, seed=0) == heldout_prompts(20, seed=0)
    assert heldout_prompts(20, seed=0) != heldout_prompts(20, seed=1)
    assert heldout_prompts(50, seed=2)[:20] == heldout_prompts(20, seed=2)
    assert len(set(heldout_prompts(20, seed=0, kind="video"))) == 20
    assert all(is_heldout(c) for c in heldout_captions(20, seed=5, kind="video"))
    with pytest.raises(ValueError):
        heldout_captions(10**6)
    with pytest.raises(ValueError):
        heldout_captions(3, kind="audio")


def test_split_prompts_draws_from_one_split():
    assert split_prompts("heldout", 20, seed=3, kind="video") == heldout_prompts(20, 3, "video")
    train = split_prompts("train", 40, seed=3, kind="video")
    assert len(set(train)) == 40 and train == split_prompts("train", 40, 3, "video")
    assert not any(is_heldout(parse_caption(t)) for t in train)
    assert split_prompts("train", 60, seed=3, kind="video")[:40] == train
    with pytest.raises(ValueError, match="split"):
        split_prompts("test", 3)


@pytest.mark.parametrize("kind", ["image", "video"])
def test_partial_captions_mix_into_the_sample(kind):
    full = heldout_captions(30, seed=4, kind=kind)
    mixed = heldout_captions(30, seed=4, kind=kind, partial=1 / 3)
    partial = [i for i, c in enumerate(mixed) if not c.is_complete]
    assert partial == list(range(0, 30, 3))  # a third, rounded up, evenly spread
    for i, (f, m) in enumerate(zip(full, mixed)):
        if i in partial:  # a sub-caption of the same held-out combination
            assert m.shape == f.shape and m.specified().items() <= f.specified().items()
        else:
            assert m == f
    assert heldout_captions(12, seed=4, kind=kind, partial=1 / 3) == mixed[:12]
    assert all(c.is_complete for c in heldout_captions(5, seed=4, kind=kind, partial=0))
    assert not any(c.is_complete for c in heldout_captions(5, seed=4, kind=kind, partial=1))
    train = split_prompts("train", 9, seed=4, kind=kind, partial=1 / 3)
    assert sum(not parse_caption(t).is_complete for t in train) == 3
    with pytest.raises(ValueError, match="partial"):
        heldout_captions(3, partial=1.5)


def test_dropping_attributes_keeps_the_grammar():
    import numpy as np

    rng = np.random.default_rng(0)
    video = Caption(shape="circle", color="red", size="small", background="blue",
                    direction="left", speed="slowly")
    for _ in range(50):
        caption = video.drop_attributes(rng)
        assert parse_caption(caption.text) == caption  # e.g. no speed without a direction
        assert caption.shape == "circle"
    assert video.is_complete and not Caption(shape="circle", color="red").is_complete


def test_is_heldout_needs_a_full_caption():
    with pytest.raises(ValueError):
        is_heldout(Caption(shape="circle", color="red"))


PINNED_IMAGE_HELDOUT = [
    "a small red circle at the top on a green background",
    "a medium red circle at the bottom on a green background",
]
PINNED_COUNTS = {"image": 591, "video": 513}
