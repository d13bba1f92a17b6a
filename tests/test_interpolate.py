"""Motion-compensated in-betweens (ffmpeg minterpolate): one moving object stays one object."""
from __future__ import annotations

import math
import stat
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from deforum_wan.renderer import interpolate
from deforum_wan.renderer.frames import resample
from deforum_wan.renderer.interpolate import InterpolationError, ffmpeg_available, motion_resample

needs_ffmpeg = pytest.mark.skipif(not ffmpeg_available(), reason="imageio-ffmpeg's ffmpeg is not available")

HEIGHT, WIDTH, WAN_FRAMES = 96, 128, 13
SIDE, START, VELOCITY = 16, (8, 16), (6, 3)  # the square: side, top-left at frame 0, pixels per Wan frame (x, y)
BACKGROUND, LOW, HIGH = 20, 45, 150  # the square's texture is 170..255: above HIGH; the background below LOW


def _square_frames() -> np.ndarray:
    """A textured bright square moving over a dark background, whole pixels per Wan frame."""
    texture = np.random.default_rng(1).integers(170, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    frames = np.full((WAN_FRAMES, HEIGHT, WIDTH, 3), BACKGROUND, np.uint8)
    for k in range(WAN_FRAMES):
        x, y = START[0] + VELOCITY[0] * k, START[1] + VELOCITY[1] * k
        frames[k, y:y + SIDE, x:x + SIDE] = texture
    return frames


def _sources(native: int, fps: int, count: int) -> list[tuple[int, int, float]]:
    """The clip plan's mapping: output frame i sits at Wan position i * native / fps."""
    out = []
    for i in range(count):
        position = Fraction(i * native, fps)
        lo = math.floor(position)
        w = round(float(position - lo), 6)
        out.append((lo, lo + 1 if w else lo, w))
    return out


def _square_problems(frame: np.ndarray, position: float) -> list[str]:
    """Why `frame` does not show one whole square where it belongs at `position` (empty: it does).

    A crossfade shows two half-bright squares: few bright pixels, many in-between ones,
    and a centroid pulled towards the faint copy.
    """
    value = frame.astype(int).max(axis=-1)
    bright, stray = value >= HIGH, (value > LOW) & (value < HIGH)
    area = SIDE * SIDE
    problems = []
    if not 0.8 * area <= bright.sum() <= 1.2 * area:
        problems.append(f"bright area {bright.sum()} is not one square ({area})")
    if stray.sum() > 0.45 * area:
        problems.append(f"{stray.sum()} half-bright pixels (a ghost)")
    ys, xs = np.nonzero(bright)
    if len(xs):
        want_x = START[0] + VELOCITY[0] * position + (SIDE - 1) / 2
        want_y = START[1] + VELOCITY[1] * position + (SIDE - 1) / 2
        off = math.hypot(xs.mean() - want_x, ys.mean() - want_y)
        if off > 1.5:
            problems.append(f"centroid {off:.2f} px from the square's place")
    return problems


@needs_ffmpeg
@pytest.mark.parametrize("fps", [60, 24])
def test_moving_square_is_drawn_once_where_it_belongs(fps):
    frames = _square_frames()
    sources = _sources(16, fps, (WAN_FRAMES - 1) * fps // 16)
    assert sum(1 for _, _, w in sources if w) >= 8
    out = motion_resample(frames, sources)
    assert out.shape == (len(sources), HEIGHT, WIDTH, 3) and out.dtype == np.uint8
    for i, (frame, (lo, _hi, w)) in enumerate(zip(out, sources)):
        assert _square_problems(frame, lo + w) == [], f"output frame {i} at Wan position {lo + w:.3f}"
    # The check can fail: the crossfade it replaces shows two half-transparent squares.
    blended = resample(frames, sources)
    failing = [i for i, (lo, _hi, w) in enumerate(sources) if _square_problems(blended[i], lo + w)]
    assert len(failing) >= len(sources) // 3


@needs_ffmpeg
def test_whole_positions_are_the_frames_themselves_at_odd_sizes():
    frames = np.random.default_rng(0).integers(0, 256, (6, 37, 53, 3), dtype=np.uint8)
    sources = [(0, 0, 0.0), (0, 1, 0.4), (1, 1, 0.0), (2, 3, 0.0), (3, 4, 0.75), (4, 4, 0.0), (5, 5, 0.0)]
    out = motion_resample(frames, sources)
    assert out.shape == (len(sources), 37, 53, 3) and out.dtype == np.uint8
    for i, (lo, _hi, w) in enumerate(sources):
        if w == 0:
            assert np.array_equal(out[i], frames[lo]), f"output {i} is not Wan frame {lo}"


@needs_ffmpeg
def test_a_still_scene_keeps_its_colours_between_frames():
    still = np.random.default_rng(2).integers(0, 256, (1, 41, 67, 3), dtype=np.uint8)
    frames = np.repeat(still, 4, axis=0)
    out = motion_resample(frames, _sources(16, 60, 12))
    assert np.abs(out.astype(int) - still.astype(int)).max() <= 2  # yuv444p: no chroma loss, rounding only


@needs_ffmpeg
@pytest.mark.parametrize("native, fps", [(16, 60), (16, 24), (1600, 2997)])  # the last: 16 -> 29.97 fps
def test_in_betweens_sit_at_their_fraction(monkeypatch, native, fps):
    # Flat frames, black and white in turn, have no motion: an in-between is then ffmpeg's own mix at its
    # fraction, so its grey level shows where it sits. 1/64 of a Wan frame is 4 grey levels. Scene-change
    # detection is off: it would take black to white for a cut and show the nearer frame instead.
    monkeypatch.setattr(interpolate, "FILTER", interpolate.FILTER.replace("scd=fdiff", "scd=none"))
    frames = np.zeros((9, 24, 40, 3), np.uint8)
    frames[1::2] = 255
    planned = _sources(native, fps, 8 * fps // native)
    uneven = [(0, 1, 0.1), (0, 1, 0.37), (3, 4, 0.61), (6, 7, 0.93), (7, 8, 0.5)]  # the fallback grid
    for sources in (planned, uneven):
        out = motion_resample(frames, sources)
        for frame, (lo, _hi, w) in zip(out, sources):
            level = w * 255 if lo % 2 == 0 else (1 - w) * 255
            grey = frame.mean()
            assert abs(grey - level) <= 255 / 64, f"position {lo + w} shows grey {grey:.1f}, not {level:.1f}"


@needs_ffmpeg
def test_only_the_needed_frames_are_fed(monkeypatch):
    fed = []
    run = interpolate._run_ffmpeg
    monkeypatch.setattr(interpolate, "_run_ffmpeg", lambda frames, *rest: fed.append(len(frames)) or run(frames, *rest))
    frames = _square_frames()
    motion_resample(frames, [(5, 5, 0.0), (5, 6, 0.5), (6, 7, 0.25), (9, 9, 0.0)])
    assert fed == [3]  # Wan frames 5, 6 and 7
    fed.clear()
    motion_resample(frames, [(0, 0, 0.0), (3, 3, 0.0)])
    assert fed == []  # nothing between frames: ffmpeg is not started


def test_the_grid_puts_every_position_on_a_frame_ffmpeg_computes():
    # 16 -> 60 fps: the clip's own spacing, 4/15 of a Wan frame, so no frame is computed in vain.
    positions = [lo + w for lo, _hi, w in _sources(16, 60, 45) if w]
    origin, step = interpolate._grid(positions, 0)
    assert step == Fraction(4, 15) and origin <= 0
    # Uneven positions fall back to a finer grid; every one still sits within 1/128 of a Wan frame.
    for positions in ([0.1, 0.37, 2.9], [0.5], [1.6, 3.2, 4.8], [i * 16 / 29.97 for i in range(1, 150)]):
        positions = [round(p, 6) for p in positions if round(p, 6) % 1]
        origin, step = interpolate._grid(positions, math.floor(min(positions)))
        assert origin <= math.floor(min(positions))
        for p in positions:
            assert abs(float(origin + round((p - origin) / step) * step) - p) <= interpolate.GRID_TOLERANCE + 1e-9


def test_sources_are_checked():
    frames = np.zeros((3, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="hi == lo \\+ 1"):
        motion_resample(frames, [(0, 2, 0.5)])
    with pytest.raises(ValueError, match="outside"):
        motion_resample(frames, [(3, 3, 0.0)])
    with pytest.raises(ValueError, match="uint8"):
        motion_resample(frames.astype(np.float32), [(0, 0, 0.0)])


def test_missing_ffmpeg_is_a_clear_error(monkeypatch, tmp_path):
    missing = str(tmp_path / "no-ffmpeg")
    monkeypatch.setattr(interpolate, "ffmpeg_exe", lambda: missing)
    assert not ffmpeg_available()
    frames = _square_frames()
    assert motion_resample(frames, [(2, 2, 0.0)]).shape == (1, HEIGHT, WIDTH, 3)  # no in-between: no ffmpeg
    with pytest.raises(InterpolationError, match="cannot start ffmpeg.*no-ffmpeg"):
        motion_resample(frames, [(2, 3, 0.5)])


def _fake_ffmpeg(tmp_path: Path, body: str) -> str:
    script = tmp_path / "ffmpeg"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


@pytest.mark.skipif(sys.platform == "win32", reason="shell-script stand-ins for ffmpeg")
@pytest.mark.parametrize("body, message", [
    ("echo \"No such filter: 'minterpolate'\" >&2; exit 1", "exited with code 1.*No such filter"),
    ("cat > /dev/null; head -c 1000 /dev/zero", "ended inside a frame"),
    ("cat > /dev/null; echo 'all done' >&2", "made no frame.*all done"),
])
def test_ffmpeg_failures_are_interpolation_errors(monkeypatch, tmp_path, body, message):
    monkeypatch.setattr(interpolate, "ffmpeg_exe", lambda: _fake_ffmpeg(tmp_path, body))
    with pytest.raises(InterpolationError, match=f"(?s){message}"):
        motion_resample(_square_frames(), [(2, 3, 0.5)])
