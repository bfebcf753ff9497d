"""demo/world.py: deterministic scenes whose captions and answers follow from the scene alone."""

import numpy as np
import pytest

from demo import world


def test_same_seed_same_scene_and_pixels():
    a, b = world.sample_scene(np.random.default_rng(5)), world.sample_scene(np.random.default_rng(5))
    assert a == b
    assert np.array_equal(np.asarray(world.render(a)), np.asarray(world.render(b)))


def test_font_has_every_letter_of_every_word():
    assert all(len(glyph) == 35 for glyph in world.FONT.values())
    assert {c for w in world.WORDS for c in w} <= set(world.FONT)


@pytest.mark.parametrize("seed", range(40))
def test_answers_follow_from_the_scene(seed):
    rng = np.random.default_rng(seed)
    scene = world.sample_scene(rng)
    assert 1 <= len(scene.shapes) <= 5 and len({s.cell for s in scene.shapes}) == len(scene.shapes)
    if scene.word:  # the bottom row is the word's
        assert all(s.cell < 6 for s in scene.shapes)
    qa = dict(world.questions(scene, rng))
    assert qa["How many shapes are there?"] == str(len(scene.shapes))
    assert qa["What color is the background?"] == scene.background
    for kind in world.SHAPES:
        matching = [s for s in scene.shapes if s.kind == kind]
        assert qa[f"How many {kind}s are there?"] == str(len(matching))
        if len(matching) == 1:
            assert qa[f"What color is the {kind}?"] == matching[0].color
            assert qa[f"Where is the {kind}?"] == world.CELLS[matching[0].cell]
        else:  # ambiguous: never asked
            assert f"What color is the {kind}?" not in qa
    assert qa["What word is written in the image?"] == (scene.word.lower() if scene.word else "none")
    text = world.caption(scene)
    assert text.endswith(".") and scene.background in text
    assert all(s.color in text and s.kind in text for s in scene.shapes)


def test_shape_pixels_land_in_their_cell():
    scene = world.Scene(384, 384, "white", (world.Shape("square", "red", "large", 0),
                                            world.Shape("circle", "blue", "small", 8)), None, ((0, 0), (0, 0)))
    px = np.asarray(world.render(scene))
    assert tuple(px[64, 64]) == world.COLORS["red"] and tuple(px[320, 320]) == world.COLORS["blue"]
    assert tuple(px[192, 192]) == world.BACKGROUNDS["white"]
    assert world.caption(scene) == "A red square and a blue circle on a white background."


def test_clip_moves_in_its_direction():
    clip = world.Clip((256, 256), "black", "square", "green", "right", 5)
    frames = world.render_clip(clip)
    assert frames.shape == (5, 256, 256, 3)
    xs = [np.nonzero((f == world.COLORS["green"]).all(-1))[1].mean() for f in frames]
    assert all(b > a for a, b in zip(xs, xs[1:], strict=False))
    assert world.clip_caption(clip) == "A green square moves right on a black background."
