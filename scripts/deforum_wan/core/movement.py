"""Turn Deforum camera schedules into camera-movement words for Wan prompts.

Wan cannot read Deforum's camera curves; it only understands words in the prompt.
This module integrates the per-frame camera values of a frame range and describes
the motion the way a cinematographer would ("slow pan left, then a gentle dolly
in, sustained"), in English or Chinese.

Values are per-frame increments
-------------------------------
Deforum warps the previous frame by the schedule value of the current frame, so
every camera schedule is an *increment*: translation_x/y/z are pixels (2D) or
scene units (3D) per frame, rotation_3d_x/y/z and angle are degrees per frame,
and zoom is a scale factor per frame that compounds (1.0 = no zoom). Over a range
we sum the increments (log-zoom for zoom, i.e. the product of the factors). A
constant translation_z of 1.75 is therefore a steady dolly in, never "static";
reading increments as positions would see a flat curve and call it still.

Which schedules count (``animation.py: anim_frame_warp``)
--------------------------------------------------------
* "2D": ``anim_frame_warp_2d`` reads only angle, zoom, translation_x and
  translation_y (plus transform_center, which moves the pivot, not the camera).
* "3D": ``anim_frame_warp_3d`` reads only translation_x/y/z and
  rotation_3d_x/y/z; zoom and angle are never looked at in 3D.
* "Video Input" and "Interpolation": the frames come from the input video or
  from interpolated prompts; the UI hides the motion schedules, so the camera is
  described as static. So is "None", Deforum's mode without any camera motion.

Sign conventions (read from Deforum's warp code, ``scripts/deforum_helpers``)
----------------------------------------------------------------------------
2D: ``anim_frame_warp_2d`` builds ``getRotationMatrix2D(center, angle, zoom) @
[[1, 0, tx], [0, 1, ty]]`` and hands it to ``cv2.warpPerspective`` without
WARP_INVERSE_MAP, so the matrix maps old pixel positions to new ones: a source
pixel ``p`` lands at ``rotate_scale(p + (tx, ty))``. Image y points down.

* translation_x > 0: the picture slides right, so the view moves LEFT -> truck left.
* translation_y > 0: the picture slides down, so the view moves UP -> pedestal up.
* angle > 0: OpenCV rotates the picture counter-clockwise on screen, which is
  what a camera rolled CLOCKWISE sees -> roll clockwise.
* zoom > 1: the picture is magnified about the centre -> zoom in.

3D: ``anim_frame_warp_3d`` passes ``T = [-tx, +ty, -tz] / 200`` and ``R =
euler_angles_to_matrix(radians([rx, ry, rz]), "XYZ")`` to a PyTorch3D camera
(``X_cam = X_world @ R + T``) and ``transform_image_3d`` moves each pixel by the
difference between its projection through that camera and through the identity
camera (``grid_sample`` at ``coords - offset``), with grid x pointing right and
grid y pointing down. Working the transform through for one point at a time:

* translation_x > 0: camera centre is ``-T``, i.e. +x (right); the picture
  slides left -> truck RIGHT. (Note: the opposite of 2D, as in Deforum.)
* translation_y > 0: ``T_y > 0`` moves every point down on screen; the camera
  went up -> pedestal up.
* translation_z > 0: ``T_z < 0`` brings the scene closer, points spread away
  from the centre -> dolly IN (forward).
* rotation_3d_x > 0: the centre point gets ``y_cam = sin(rx) > 0`` and slides
  down on screen -> the camera tilts UP.
* rotation_3d_y > 0: the centre point gets ``x_cam = -sin(ry)`` and slides left
  -> the camera pans RIGHT.
* rotation_3d_z > 0: a point right of centre moves up and a point above centre
  moves left, a counter-clockwise turn of the picture -> roll CLOCKWISE
  (same sense as a positive 2D angle).

Camera Shakify (Forge Deforum fork) is taken as a whole-range "handheld shake"
when ``shake_name`` is set (not "None"/"") and ``shake_intensity > 0`` in a mode
that moves the camera; its strength is ``shake_intensity * sqrt(shake_speed)``.

Intensity levels
----------------
Speeds are measured per SECOND (per-frame increment x fps), so a motion gets the
same word at 15 and at 60 fps. Each motion's magnitude is compared with the
table below; values are where each level starts, anything below the first
column is "no motion". Thresholds are divided by ``sensitivity`` (default 1.0):
raising it describes smaller motions and makes words stronger, lowering it
hides more.

==================  =====  ======  ========  ====  =========  ======================
motion              subtle gentle  moderate  fast  very fast  unit
==================  =====  ======  ========  ====  =========  ======================
pan / tilt / roll   0.5    3       10        30    90         degrees per second
3D translations     1      5       15        40    100        Deforum units/second
2D truck/pedestal   2      10      30        90    250        pixels per second
zoom                0.005  0.07    0.2       0.5   1.2        ln(scale) per second
handheld shake      0.05   0.4     0.9       1.8   3.5        intensity*sqrt(speed)
==================  =====  ======  ========  ====  =========  ======================

2D pixels are not divided by the frame size (no width/height reaches this
module); the table assumes a typical 512-1024 px Deforum frame. With these,
Deforum's default 3D translation_z (1.75/frame at 15 fps = 26 units/s) is a
"moderate dolly in", and its default 2D zoom ``1.0025+0.002*sin(...)`` (about
+3.8 %/s at 15 fps, at most +6.7 %/s) is a "subtle zoom in".

Phases and duration
-------------------
A range is split where the set or direction of active motions changes; changes
that last less than max(3 frames, 0.25 s) count as flicker and are folded into
their neighbours. Each phase is worded from its net motion (an axis with no
net travel but a mean unsigned speed above the first threshold reads as "pan
left and right", "dolly in and out", ...); phases read in order joined by
"then", and at most four phases are kept (flicker tolerance is doubled until
they fit). Motions within one phase are strongest first, joined by "with a".
The duration word is the share of frames in moving phases (a shake moves them
all): below 40 % "brief", below 85 % "extended", otherwise "sustained".
"""
from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .camera_words import LEVEL_WORDS, LEVELS, MOTION_WORDS, PHRASES, SHAKE_LEVEL_WORDS

MODE_2D = "2D"
MODE_3D = "3D"
ANIMATION_MODES = (MODE_2D, MODE_3D, "Video Input", "Interpolation", "None")

SCHEDULE_KEYS = (
    "translation_x",
    "translation_y",
    "translation_z",
    "rotation_3d_x",
    "rotation_3d_y",
    "rotation_3d_z",
    "angle",
    "zoom",
)

LANGUAGES = ("en", "zh")

NO_MOTION = "none"
DURATIONS = ("brief", "extended", "sustained")

ROTATION_THRESHOLDS = (0.5, 3.0, 10.0, 30.0, 90.0)  # degrees / s
TRANSLATION_3D_THRESHOLDS = (1.0, 5.0, 15.0, 40.0, 100.0)  # Deforum 3D units / s
TRANSLATION_2D_THRESHOLDS = (2.0, 10.0, 30.0, 90.0, 250.0)  # pixels / s
ZOOM_THRESHOLDS = (0.005, 0.07, 0.2, 0.5, 1.2)  # ln(scale) / s
SHAKE_THRESHOLDS = (0.05, 0.4, 0.9, 1.8, 3.5)  # shake_intensity * sqrt(shake_speed)

BRIEF_BELOW = 0.40  # share of frames in motion
EXTENDED_BELOW = 0.85

MIN_PHASE_FRAMES = 3
MIN_PHASE_SECONDS = 0.25
MAX_PHASES = 4

# Relative slack so float rounding of per-frame values (e.g. v/4 * 60 vs v * 15)
# cannot flip a level exactly at a threshold.
_TOLERANCE = 1e-9


@dataclass(frozen=True)
class _Axis:
    """One camera move: which schedule drives it, which sign means which word."""

    motion: str  # "pan", "tilt", ...
    schedule: str
    sign: float  # multiplies the schedule so that > 0 means `positive`
    positive: str  # direction word for > 0 after `sign`
    negative: str
    thresholds: tuple[float, ...]


_MODE_AXES: dict[str, tuple[_Axis, ...]] = {
    MODE_2D: (
        _Axis("truck", "translation_x", -1.0, "right", "left", TRANSLATION_2D_THRESHOLDS),
        _Axis("pedestal", "translation_y", 1.0, "up", "down", TRANSLATION_2D_THRESHOLDS),
        _Axis("roll", "angle", 1.0, "clockwise", "counter-clockwise", ROTATION_THRESHOLDS),
        _Axis("zoom", "zoom", 1.0, "in", "out", ZOOM_THRESHOLDS),
    ),
    MODE_3D: (
        _Axis("dolly", "translation_z", 1.0, "in", "out", TRANSLATION_3D_THRESHOLDS),
        _Axis("pan", "rotation_3d_y", 1.0, "right", "left", ROTATION_THRESHOLDS),
        _Axis("tilt", "rotation_3d_x", 1.0, "up", "down", ROTATION_THRESHOLDS),
        _Axis("truck", "translation_x", 1.0, "right", "left", TRANSLATION_3D_THRESHOLDS),
        _Axis("pedestal", "translation_y", 1.0, "up", "down", TRANSLATION_3D_THRESHOLDS),
        _Axis("roll", "rotation_3d_z", 1.0, "clockwise", "counter-clockwise", ROTATION_THRESHOLDS),
    ),
}


def _as_schedule(name: str, value: object) -> np.ndarray:
    arr = np.array(value, dtype=np.float64)  # always a private copy
    if arr.ndim != 1:
        raise ValueError(f"schedule {name!r} must be a 1-D per-frame array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"schedule {name!r} contains NaN or infinite values")
    arr.setflags(write=False)
    return arr


def _canonical_mode(mode: str) -> str:
    for known in ANIMATION_MODES:
        if isinstance(mode, str) and mode.strip().lower() == known.lower():
            return known
    raise ValueError(f"unknown animation_mode {mode!r}; expected one of {ANIMATION_MODES}")


@dataclass(frozen=True, eq=False)
class CameraPath:
    """Per-frame Deforum camera values for a whole animation.

    Arrays are copied and made read-only, so a path can be shared between clips.
    """

    animation_mode: str
    translation_x: np.ndarray
    translation_y: np.ndarray
    translation_z: np.ndarray
    rotation_3d_x: np.ndarray
    rotation_3d_y: np.ndarray
    rotation_3d_z: np.ndarray
    angle: np.ndarray
    zoom: np.ndarray
    shake_name: str = "None"
    shake_intensity: float = 0.0
    shake_speed: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "animation_mode", _canonical_mode(self.animation_mode))
        lengths = set()
        for key in SCHEDULE_KEYS:
            arr = _as_schedule(key, getattr(self, key))
            object.__setattr__(self, key, arr)
            lengths.add(arr.shape[0])
        if len(lengths) != 1:
            raise ValueError(f"all schedules must have the same length, got lengths {sorted(lengths)}")
        if lengths.pop() < 1:
            raise ValueError("schedules must cover at least one frame")
        if np.any(self.zoom <= 0):
            raise ValueError("zoom factors must be > 0 (1.0 = no zoom)")
        for name in ("shake_intensity", "shake_speed"):
            value = float(getattr(self, name))
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
            object.__setattr__(self, name, value)
        object.__setattr__(self, "shake_name", "None" if self.shake_name is None else str(self.shake_name))

    @property
    def max_frames(self) -> int:
        """Number of frames the schedules cover."""
        return int(self.zoom.shape[0])

    @property
    def has_shake(self) -> bool:
        """Whether Camera Shakify is on and can move this mode's camera."""
        return (
            self.animation_mode in _MODE_AXES
            and self.shake_name.strip() not in ("", "None")
            and self.shake_intensity > 0
            and self.shake_speed > 0
        )

    @classmethod
    def from_schedules(
        cls,
        schedules: Mapping[str, np.ndarray],
        animation_mode: str,
        *,
        shake_name: str = "None",
        shake_intensity: float = 0.0,
        shake_speed: float = 1.0,
        max_frames: int | None = None,
    ) -> CameraPath:
        """Build a path from parsed schedules; keys not given mean "no motion".

        Missing keys default to zeros (zoom to ones) so callers can pass only the
        schedules a settings file sets; keys other than the camera ones are ignored.
        A scalar value is repeated over all frames.
        """
        given = {k: np.asarray(schedules[k], dtype=np.float64) for k in SCHEDULE_KEYS if k in schedules}
        if max_frames is None:
            lengths = {v.shape[0] for v in given.values() if v.ndim == 1}
            if not lengths:
                raise ValueError("max_frames is needed when no per-frame schedule array is given")
            if len(lengths) > 1:
                raise ValueError(f"schedules have different lengths {sorted(lengths)}")
            max_frames = lengths.pop()
        max_frames = operator.index(max_frames)
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        arrays = {}
        for key in SCHEDULE_KEYS:
            if key not in given:
                arrays[key] = np.full(max_frames, 1.0 if key == "zoom" else 0.0)
                continue
            value = given[key]
            if value.ndim == 0:
                value = np.full(max_frames, float(value))
            elif value.ndim != 1 or value.shape[0] != max_frames:
                raise ValueError(f"schedule {key!r} has shape {value.shape}, expected ({max_frames},)")
            arrays[key] = value
        return cls(
            animation_mode=animation_mode,
            shake_name=shake_name,
            shake_intensity=shake_intensity,
            shake_speed=shake_speed,
            **arrays,
        )


@dataclass(frozen=True)
class MovementDescription:
    """Camera motion of one frame range, in words for a prompt.

    ``intensity`` is one of LEVELS (or "none") and ``duration`` one of DURATIONS
    (or "none"), in English whatever the language, so code can branch on them;
    ``phrases`` and ``text`` are in ``language``.
    """

    phrases: tuple[str, ...]
    intensity: str
    duration: str
    text: str
    language: str
    static: bool


def _levels(speed: np.ndarray, thresholds: tuple[float, ...], sensitivity: float) -> np.ndarray:
    """Level index per value: -1 = no motion, 0 = subtle ... len-1 = strongest."""
    edges = np.asarray(thresholds, dtype=np.float64) / sensitivity
    return np.searchsorted(edges, np.abs(speed) * (1.0 + _TOLERANCE), side="right") - 1


def _runs(codes: np.ndarray) -> list[tuple[int, int]]:
    cuts = np.flatnonzero(np.diff(codes)) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [codes.shape[0]]])
    return list(zip(starts.tolist(), ends.tolist()))


def _fold_flicker(runs: list[tuple[int, int]], min_len: int) -> list[list[int]]:
    """Fold runs shorter than min_len into their neighbours.

    A stretch of short runs that together last min_len or more stays a phase of
    its own (it is worded from its net motion later); a shorter stretch is split
    between the phases on either side.
    """
    phases: list[list[int]] = []
    pending: list[int] | None = None
    for start, end in runs:
        if end - start < min_len:
            pending = [start, end] if pending is None else [pending[0], end]
            continue
        if pending is not None:
            if pending[1] - pending[0] >= min_len:
                phases.append(pending)
            elif phases:
                mid = (pending[0] + pending[1] + 1) // 2
                phases[-1][1] = mid
                start = mid
            else:
                start = pending[0]
            pending = None
        phases.append([start, end])
    if pending is not None:
        if pending[1] - pending[0] >= min_len or not phases:
            phases.append(pending)
        else:
            phases[-1][1] = pending[1]
    return phases


def _phases(
    speeds: np.ndarray, thresholds: np.ndarray, min_len: int
) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray]:
    """Split frames into phases with a constant set of motion directions.

    Returns (start, end) per phase, the mean signed per-second speed of each
    axis per phase (shape phases x axes) and the mean unsigned speed, which
    tells a back-and-forth move apart from a still camera.
    """
    n_axes, n = speeds.shape
    signs = np.sign(speeds) * (np.abs(speeds) * (1.0 + _TOLERANCE) >= thresholds[:, None])
    codes = ((signs + 1) * (3 ** np.arange(n_axes))[:, None]).sum(axis=0) if n_axes else np.zeros(n)
    runs = _runs(codes)
    window = min_len
    while True:
        bounds = _fold_flicker(runs, window)
        starts = np.array([b[0] for b in bounds])
        lengths = np.array([b[1] - b[0] for b in bounds])
        means = np.add.reduceat(speeds, starts, axis=1).T / lengths[:, None] if n_axes else np.zeros((len(bounds), 0))
        labels = np.sign(means) * (np.abs(means) * (1.0 + _TOLERANCE) >= thresholds[None, :])
        merged: list[list[int]] = []
        previous = None
        for (start, end), label in zip(bounds, labels.tolist()):
            if merged and label == previous:
                merged[-1][1] = end
            else:
                merged.append([start, end])
            previous = label
        if len(merged) <= MAX_PHASES or window >= n:
            break
        window *= 2
    starts = np.array([m[0] for m in merged])
    lengths = np.array([m[1] - m[0] for m in merged])
    if n_axes:
        means = np.add.reduceat(speeds, starts, axis=1).T / lengths[:, None]
        swings = np.add.reduceat(np.abs(speeds), starts, axis=1).T / lengths[:, None]
    else:
        means = swings = np.zeros((len(merged), 0))
    return [(m[0], m[1]) for m in merged], means, swings


def _check_range(path: CameraPath, start: int, end: int) -> tuple[int, int]:
    try:
        start, end = operator.index(start), operator.index(end)
    except TypeError:
        raise ValueError(f"start and end must be integers, got {start!r} and {end!r}") from None
    n = path.max_frames
    if not 0 <= start < end <= n:
        raise ValueError(
            f"frame range [{start}, {end}) is invalid: need 0 <= start < end <= max_frames ({n})"
        )
    return start, end


def describe_movement(
    path: CameraPath,
    start: int,
    end: int,
    fps: float,
    *,
    sensitivity: float = 1.0,
    language: str = "en",
) -> MovementDescription:
    """Describe the camera motion of frames [start, end) in prompt words.

    Wan only follows camera moves named in the prompt, so the schedules are
    integrated per phase and turned into cinematographer's words; see the module
    docstring for signs, level thresholds and how phases are found.
    """
    if language not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}; expected one of {LANGUAGES}")
    fps = float(fps)
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a finite number > 0, got {fps}")
    sensitivity = float(sensitivity)
    if not math.isfinite(sensitivity) or sensitivity <= 0:
        raise ValueError(f"sensitivity must be a finite number > 0, got {sensitivity}")
    start, end = _check_range(path, start, end)

    words = PHRASES[language]
    axes = _MODE_AXES.get(path.animation_mode, ())
    n = end - start
    if axes:
        rows = []
        for axis in axes:
            values = getattr(path, axis.schedule)[start:end]
            if axis.schedule == "zoom":
                values = np.log(values)
            rows.append(values * (axis.sign * fps))
        speeds = np.vstack(rows)
    else:
        speeds = np.zeros((0, n))
    still = np.array([axis.thresholds[0] for axis in axes], dtype=np.float64) / sensitivity
    min_len = max(MIN_PHASE_FRAMES, int(math.ceil(MIN_PHASE_SECONDS * fps)))
    bounds, means, swings = _phases(speeds, still, min_len)

    phrases: list[str] = []
    top_level = -1
    moving_frames = 0
    for (p_start, p_end), mean, swing in zip(bounds, means, swings):
        parts = []
        for i, axis in enumerate(axes):
            level = int(_levels(mean[i : i + 1], axis.thresholds, sensitivity)[0])
            if level >= 0:
                direction = axis.positive if mean[i] > 0 else axis.negative
            else:
                # No net travel, but the camera keeps moving: it swings to and fro.
                level = int(_levels(swing[i : i + 1], axis.thresholds, sensitivity)[0])
                direction = "both"
            if level < 0:
                continue
            parts.append((-level, i, level, MOTION_WORDS[language][(axis.motion, direction)]))
        if not parts:
            phrases.append(words["hold"])
            continue
        moving_frames += p_end - p_start
        parts.sort()
        top_level = max(top_level, parts[0][2])
        joiner = words["together"]
        phrases.append(
            joiner.join(_join_level(language, LEVEL_WORDS[language][lvl], word) for _, _, lvl, word in parts)
        )

    shake_phrase = None
    if path.has_shake:
        strength = path.shake_intensity * math.sqrt(path.shake_speed)
        level = int(_levels(np.array([strength]), SHAKE_THRESHOLDS, sensitivity)[0])
        if level >= 0:
            shake_phrase = _join_level(language, SHAKE_LEVEL_WORDS[language][level], words["shake"])
            top_level = max(top_level, level)
            moving_frames = n

    if top_level < 0:
        return MovementDescription(
            phrases=(words["static"],),
            intensity=NO_MOTION,
            duration=NO_MOTION,
            text=words["static"],
            language=language,
            static=True,
        )

    share = moving_frames / n
    duration = DURATIONS[0] if share < BRIEF_BELOW else DURATIONS[1] if share < EXTENDED_BELOW else DURATIONS[2]
    if all(p == words["hold"] for p in phrases):
        phrases = []  # only the shake moves; "static hold" would contradict it
    text = words["then"].join(phrases)
    if shake_phrase is not None:
        text = f"{text}{words['with']}{shake_phrase}" if text else shake_phrase
        phrases.append(shake_phrase)
    text = f"{text}{words['sep']}{words[duration]}"
    return MovementDescription(
        phrases=tuple(phrases),
        intensity=LEVELS[top_level],
        duration=duration,
        text=text,
        language=language,
        static=False,
    )


def _join_level(language: str, level_word: str, motion_word: str) -> str:
    return f"{level_word} {motion_word}" if language == "en" else f"{level_word}{motion_word}"
