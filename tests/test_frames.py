"""Resampling onto the output timeline and colour matching, on plain arrays."""
from __future__ import annotations

import numpy as np

from deforum_wan.renderer.frames import fit_image, match_colors, resample


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
