"""Resampling onto the output timeline and colour matching, on plain arrays."""
from __future__ import annotations

import numpy as np
import pytest

from deforum_wan.renderer import frames as frames_module
from deforum_wan.renderer.frames import (
    SPACES, ColorReference, color_space, fit_image, from_space, hsv_to_rgb, lab_to_rgb, match_colors,
    match_to_reference, resample, rgb_to_hsv, rgb_to_lab, to_space,
)


def test_resample_picks_and_blends():
    frames = np.stack([np.full((2, 2, 3), v, np.uint8) for v in (0, 100, 200)])
    out = resample(frames, [(0, 0, 0.0), (0, 1, 0.25), (1, 2, 0.5), (2, 2, 0.0)])
    assert [int(f[0, 0, 0]) for f in out] == [0, 25, 150, 200]


def test_match_colors_removes_drift_measured_on_the_overlap():
    rng = np.random.default_rng(0)
    previous_tail = rng.integers(60, 120, (2, 8, 8, 3)).astype(np.uint8)
    drifted = np.clip(previous_tail.astype(int) * 1.2 + 30, 0, 255).astype(np.uint8)  # the model's colour shift
    new_content = np.full((3, 8, 8, 3), 50, np.uint8)
    clip = np.concatenate([drifted, new_content])
    fixed = match_colors(clip, overlap=2, reference=previous_tail)
    # The overlap frames look like the previous clip again ...
    assert np.abs(fixed[:2].astype(int) - previous_tail.astype(int)).mean() < 1.5
    # ... and the same correction reaches the new frames: 50 -> (50 - 30) / 1.2 ~ 17.
    assert abs(int(fixed[4, 0, 0, 0]) - 17) <= 2
    assert match_colors(clip, overlap=0, reference=previous_tail) is clip


def test_fit_image_covers_and_centres():
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, 50:150] = 255  # a white centre band
    out = fit_image(image, 64, 64)
    assert out.shape == (64, 64, 3)
    assert out[32, 32].min() == 255  # the centre survives the crop


# --- colour spaces ---------------------------------------------------------------

def _colour_grid(step: int = 3) -> np.ndarray:
    levels = np.unique(np.r_[np.arange(0, 256, step), 1, 254, 255])
    r, g, b = np.meshgrid(levels, levels, levels, indexing="ij")
    return np.stack([r, g, b], axis=-1).reshape(-1, 3).astype(np.uint8)


@pytest.mark.parametrize("space", SPACES)
def test_colour_spaces_round_trip_within_one_level(space):
    rgb = _colour_grid()
    values = to_space(rgb, space)
    assert values.dtype == np.float32
    assert np.abs(from_space(values, space).astype(int) - rgb).max() <= 1
    # Frame stacks keep their shape; float RGB input converts like uint8.
    stack = rgb[:4 * 6 * 5].reshape(4, 6, 5, 3)
    assert to_space(stack, space).shape == stack.shape
    np.testing.assert_allclose(to_space(stack.astype(np.float32), space), to_space(stack, space), atol=1e-3)


def test_lab_and_hsv_of_known_colours():
    lab = rgb_to_lab(np.array([[255, 255, 255], [255, 0, 0], [0, 0, 0], [128, 128, 128]], np.uint8))
    np.testing.assert_allclose(lab[0], (100.0, 0.0, 0.0), atol=0.01)
    np.testing.assert_allclose(lab[1], (53.24, 80.09, 67.20), atol=0.05)
    np.testing.assert_allclose(lab[2], (0.0, 0.0, 0.0), atol=0.01)
    assert abs(lab[3, 1]) < 0.01 and abs(lab[3, 2]) < 0.01  # greys have no colour
    np.testing.assert_allclose(lab_to_rgb(lab[:2]), [[255, 255, 255], [255, 0, 0]], atol=0.05)

    hsv = rgb_to_hsv(np.array([[255, 0, 0], [0, 0, 255], [255, 0, 128], [128, 128, 128]], np.uint8))
    np.testing.assert_allclose(hsv[:2], [[0.0, 1.0, 1.0], [2 / 3, 1.0, 1.0]], atol=1e-6)
    assert 0.9 < hsv[2, 0] < 1.0  # a red on the far side of the wrap
    np.testing.assert_allclose(hsv[3], [0.0, 0.0, 128 / 255], atol=1e-6)
    np.testing.assert_allclose(hsv_to_rgb(np.array([[1.0, 1.0, 1.0], [-1 / 3, 1.0, 1.0]])), [[255, 0, 0], [0, 0, 255]],
                               atol=1e-3)  # hue wraps


# --- Deforum's color_coherence ---------------------------------------------------

@pytest.mark.parametrize("value, space", [
    ("None", None), (None, None), ("RGB", "RGB"), ("HSV", "HSV"), ("LAB", "LAB"), (" lab ", "LAB"),
    ("Match Frame 0 RGB", "RGB"), ("Match Frame 0 HSV", "HSV"), ("Match Frame 0 LAB", "LAB"),
    ("match frame 0  lab", "LAB"), ("Image", "LAB"), ("Video Input", "LAB"),
])
def test_color_space_reads_deforum_spellings(value, space):
    assert color_space(value) == space


@pytest.mark.parametrize("junk", ["", "YUV", "Match Frame 1 RGB", "RGBA", 3])
def test_color_space_rejects_junk_naming_the_setting(junk):
    with pytest.raises(ValueError, match="color_coherence"):
        color_space(junk)


def test_bad_space_and_strength_are_refused():
    frame = np.zeros((2, 2, 3), np.uint8)
    with pytest.raises(ValueError, match="colour space"):
        ColorReference.from_frames(frame, "YUV")
    with pytest.raises(ValueError, match="strength"):
        match_to_reference(frame, ColorReference.from_frames(frame, "RGB"), strength=1.5)


# --- matching to a fixed reference -----------------------------------------------

def _scene(h: int = 36, w: int = 48) -> np.ndarray:
    """A colourful test picture: gradients, reds either side of hue 0, and a grey patch."""
    y, x = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    image = np.stack([50 + 160 * x, 40 + 150 * y, 70 + 120 * (1 - x) * (1 - y)], axis=-1)
    image[4:14, 6:20] = (205, 35, 55)  # red, hue just below 1
    image[20:30, 26:40] = (200, 60, 30)  # red-orange, hue just above 0
    image[6:16, 30:44] = (128, 128, 128)
    return image


BLUE = np.array([-0.7, -0.3, 1.4])  # the "model's" colour drift per frame, in RGB levels


def _model(start: np.ndarray, rng: np.random.Generator, frames: int = 8) -> np.ndarray:
    """A clip continuing from `start`, each frame a little bluer, flatter, noisier and moved."""
    out, x = [], start.astype(np.float64)
    for _ in range(frames):
        mean = x.mean(axis=(0, 1))
        x = mean + 0.985 * (x - mean) + BLUE + rng.normal(0, 1.0, x.shape)
        out.append(np.clip(np.rint(np.roll(x, 1, axis=1)), 0, 255).astype(np.uint8))
        x = out[-1].astype(np.float64)
    return np.stack(out)


def _render(correct, clips: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Chain `clips` clips, each starting from the last frame of the (corrected) one before."""
    rng = np.random.default_rng(seed)
    first = clip = _model(_scene(), rng)
    for _ in range(clips - 1):
        clip = correct(_model(clip[-1], rng), clip)
    return first, clip


def _mean(frames: np.ndarray) -> np.ndarray:
    return frames.reshape(-1, 3).astype(np.float64).mean(axis=0)


@pytest.mark.parametrize("space", SPACES)
def test_anchoring_to_a_fixed_reference_stops_drift_that_chained_matching_compounds(space):
    reference = ColorReference.from_frames(_model(_scene(), np.random.default_rng(0)), space)  # the first clip
    first, last = _render(lambda clip, previous: match_to_reference(clip, reference))
    anchored = np.abs(_mean(last) - _mean(first))
    assert anchored.max() <= 6.0, anchored

    # The same render left alone, and matched clip to clip (overlap: the first frame
    # re-renders the previous clip's last one), ends far off: bluer every clip.
    _, untouched = _render(lambda clip, previous: clip)
    first, chained_last = _render(lambda clip, previous: match_colors(clip, 1, previous[-1:]))
    chained = _mean(chained_last) - _mean(first)
    assert np.abs(_mean(untouched) - _mean(first)).max() > 50
    assert np.abs(chained).max() > 50, chained
    assert chained[2] > 50 and chained[0] < -30  # towards blue, away from red


@pytest.mark.parametrize("space", SPACES)
def test_a_clip_that_matches_the_reference_is_left_nearly_alone(space):
    rng = np.random.default_rng(1)
    clip = _model(_scene(), rng)
    same = match_to_reference(clip, ColorReference.from_frames(clip, space))
    assert same.dtype == np.uint8 and same.shape == clip.shape
    assert np.abs(same.astype(int) - clip).mean() < 0.1
    # Another stretch of the same scene (its own noise, moved) changes little too.
    later = _model(clip[-1], np.random.default_rng(2), frames=4)
    reference = ColorReference.from_frames(np.clip(later.astype(int) - BLUE * 4, 0, 255).astype(np.uint8), space)
    assert np.abs(match_to_reference(later, reference).astype(int) - later).mean() < 6


@pytest.mark.parametrize("space", SPACES)
def test_strength_blends_between_original_and_matched(space):
    clip = _model(_scene(), np.random.default_rng(3), frames=3)
    warm = np.clip(clip.astype(int) + (30, 10, -30), 0, 255).astype(np.uint8)
    reference = ColorReference.from_frames(warm, space)
    assert match_to_reference(clip, reference, strength=0.0) is clip
    full, half = (match_to_reference(clip, reference, strength=s) for s in (1.0, 0.5))
    red_shift = [(_mean(f) - _mean(clip))[0] for f in (half, full)]
    assert 20 < red_shift[1] < 40 and 0.3 * red_shift[1] < red_shift[0] < 0.7 * red_shift[1]


def test_hue_is_matched_round_the_circle():
    """Reds just past hue 0 against reds just short of it: a naive match on the 0..1 line
    would send the clip's red to the reference's cyan and its cyan to red."""
    clip = np.zeros((1, 20, 20, 3), np.uint8)
    clip[0, :10] = hsv_to_rgb(np.array([0.02, 0.9, 0.9]))
    clip[0, 10:] = hsv_to_rgb(np.array([0.5, 0.9, 0.9]))
    target = clip.copy()
    target[0, :10] = np.rint(hsv_to_rgb(np.array([0.97, 0.9, 0.9])))
    out = rgb_to_hsv(match_to_reference(clip, ColorReference.from_frames(target, "HSV")))
    hue = out[0, ..., 0]
    assert np.all(np.abs((hue[:10] - 0.97 + 0.5) % 1 - 0.5) < 0.01)  # red went the short way, to the other red
    assert np.all(np.abs(hue[10:] - 0.5) < 0.01)  # cyan stayed cyan
    # A grey reference has no hue to match: hue is left alone, saturation goes.
    grey = ColorReference.from_frames(np.full((4, 4, 3), 100, np.uint8), "HSV")
    assert grey.quantiles[0] is None
    out = match_to_reference(clip, grey)
    assert np.abs(out.astype(int) - 100).max() <= 1


@pytest.mark.parametrize("space", SPACES)
def test_large_clips_through_the_colour_table_match_like_small_ones(space, monkeypatch):
    rng = np.random.default_rng(4)
    clip = np.concatenate([_model(_scene(), rng, frames=2)] * 2)
    reference = ColorReference.from_frames(np.clip(clip.astype(int) + (-20, 15, 5), 0, 255).astype(np.uint8), space)
    direct = match_to_reference(clip, reference)
    monkeypatch.setattr(frames_module, "_TABLE_FROM", 16)  # every clip through the distinct-colour table ...
    monkeypatch.setattr(frames_module, "_BLOCK", 1000)  # ... converted in many blocks
    assert np.array_equal(match_to_reference(clip, reference), direct)
    np.testing.assert_array_equal(to_space(clip.reshape(-1, 3), space), to_space(clip, space).reshape(-1, 3))
    assert ColorReference.from_frames(clip, space).quantiles[1].tolist() == \
        frames_module.ColorReference.from_frames(clip.reshape(-1, 3), space).quantiles[1].tolist()
