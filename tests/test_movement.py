"""Camera words must match what Deforum would render, whatever the fps."""

from __future__ import annotations


import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deforum_wan.core.movement import (
    LEVELS,
    SCHEDULE_KEYS,
    CameraPath,
    MovementDescription,
    describe_movement,
)

FRAMES = 120


def make_path(mode: str = "3D", n: int = FRAMES, **schedules) -> CameraPath:
    """A path with the given schedules; scalars are repeated over every frame."""
    shake = {k: schedules.pop(k) for k in ("shake_name", "shake_intensity", "shake_speed") if k in schedules}
    arrays = {k: np.broadcast_to(np.asarray(v, dtype=float), (n,)) for k, v in schedules.items()}
    return CameraPath.from_schedules(arrays, mode, max_frames=n, **shake)


def level(desc: MovementDescription) -> int:
    """Intensity as an ordered number: -1 for a still camera."""
    return -1 if desc.static else LEVELS.index(desc.intensity)


def deforum_default_zoom(n: int, period: float = 30.0) -> np.ndarray:
    t = np.arange(n)
    return 1.0025 + 0.002 * np.sin(1.25 * 3.14 * t / period)


# --- integration of increments --------------------------------------------------


def test_constant_translation_z_is_a_steady_dolly_in_not_a_static_camera():
    desc = describe_movement(make_path("3D", translation_z=1.75), 0, 81, 15)
    assert not desc.static
    assert desc.phrases == ("moderate dolly in",)
    assert desc.text == "moderate dolly in, sustained"
    assert desc.duration == "sustained"


def test_deforum_default_3d_dolly_is_clearly_noticeable_at_wan_fps():
    desc = describe_movement(make_path("3D", translation_z=1.75), 0, 81, 16)
    assert level(desc) >= LEVELS.index("moderate")


@pytest.mark.parametrize("period", [30.0, 120.0])  # A1111 and Forge defaults
@pytest.mark.parametrize("start,end", [(0, FRAMES), (0, 24), (10, 40), (30, 90), (100, 120)])
def test_deforum_default_2d_zoom_is_a_subtle_zoom_in(period, start, end):
    path = make_path("2D", zoom=deforum_default_zoom(FRAMES, period))
    desc = describe_movement(path, start, end, 15)
    assert desc.phrases == ("subtle zoom in",)
    assert desc.intensity == "subtle"


def test_zoom_compounds_like_a_product():
    # x1.2 then /1.2 per frame returns to the same framing: no net zoom in (adding
    # the factors would see +0.2 - 0.167 per pair and call it a zoom in), but the
    # camera keeps going in and out.
    zoom = np.where(np.arange(FRAMES) % 2 == 0, 1.2, 1 / 1.2)
    desc = describe_movement(make_path("2D", zoom=zoom), 0, 96, 16)
    assert len(desc.phrases) == 1
    assert desc.phrases[0].endswith(" zoom in and out")


# --- directions -------------------------------------------------------------------

DIRECTIONS = [
    # mode, schedule, positive value, word for positive, word for negative
    ("3D", "rotation_3d_y", 0.5, "pan right", "pan left"),
    ("3D", "rotation_3d_x", 0.5, "tilt up", "tilt down"),
    ("3D", "rotation_3d_z", 0.5, "roll clockwise", "roll counter-clockwise"),
    ("2D", "angle", 0.5, "roll clockwise", "roll counter-clockwise"),
    ("3D", "translation_x", 2.0, "truck right", "truck left"),
    ("2D", "translation_x", 2.0, "truck left", "truck right"),  # 2D moves the picture, not the camera
    ("3D", "translation_y", 2.0, "pedestal up", "pedestal down"),
    ("2D", "translation_y", 2.0, "pedestal up", "pedestal down"),
    ("3D", "translation_z", 2.0, "dolly in", "dolly out"),
    ("2D", "zoom", 1.01, "zoom in", "zoom out"),
]


def _negated(key: str, value: float) -> float:
    return 1.0 / value if key == "zoom" else -value


@pytest.mark.parametrize("mode,key,value,pos_word,neg_word", DIRECTIONS)
def test_opposite_values_give_opposite_words(mode, key, value, pos_word, neg_word):
    pos = describe_movement(make_path(mode, **{key: value}), 0, 81, 15)
    neg = describe_movement(make_path(mode, **{key: _negated(key, value)}), 0, 81, 15)
    assert len(pos.phrases) == len(neg.phrases) == 1
    assert pos.phrases[0].endswith(" " + pos_word)
    assert neg.phrases[0].endswith(" " + neg_word)
    assert pos.intensity == neg.intensity


# --- static camera and modes -------------------------------------------------------


@pytest.mark.parametrize("mode", ["2D", "3D", "Video Input", "Interpolation"])
def test_all_zero_schedules_read_static_camera(mode):
    desc = describe_movement(make_path(mode), 0, FRAMES, 15)
    assert desc.static
    assert desc.text == "static camera"
    assert desc.phrases == ("static camera",)
    assert desc.intensity == "none" and desc.duration == "none"


@pytest.mark.parametrize("mode", ["Video Input", "Interpolation", "None"])
def test_modes_without_a_camera_ignore_every_schedule(mode):
    busy = {k: 3.0 for k in SCHEDULE_KEYS if k != "zoom"}
    path = make_path(mode, zoom=1.05, shake_name="INVESTIGATION", shake_intensity=2.0, **busy)
    assert describe_movement(path, 0, 60, 15).static


def test_3d_ignores_zoom_and_angle_like_deforum():
    path = make_path("3D", zoom=1.05, angle=5.0)
    assert describe_movement(path, 0, 60, 15).static


def test_2d_ignores_translation_z_and_3d_rotations_like_deforum():
    path = make_path("2D", translation_z=10.0, rotation_3d_x=2.0, rotation_3d_y=2.0, rotation_3d_z=2.0)
    assert describe_movement(path, 0, 60, 15).static


def test_mode_names_are_matched_without_case():
    assert make_path("3d").animation_mode == "3D"
    assert make_path("video input").animation_mode == "Video Input"


# --- intensity ------------------------------------------------------------------

PER_SECOND = [
    # mode, schedule, per-second speed (log-speed for zoom)
    ("3D", "rotation_3d_y", 6.0),
    ("3D", "rotation_3d_x", -20.0),
    ("2D", "angle", 45.0),
    ("3D", "translation_z", 26.25),
    ("3D", "translation_x", -60.0),
    ("2D", "translation_y", 15.0),
    ("2D", "zoom", 0.3),
]


def _per_frame(key: str, per_second: float, fps: float) -> float:
    return float(np.exp(per_second / fps)) if key == "zoom" else per_second / fps


@pytest.mark.parametrize("mode,key,per_second", PER_SECOND)
def test_same_motion_per_second_reads_the_same_at_15_and_60_fps(mode, key, per_second):
    slow = describe_movement(make_path(mode, n=240, **{key: _per_frame(key, per_second, 15)}), 0, 60, 15)
    fast = describe_movement(make_path(mode, n=240, **{key: _per_frame(key, per_second, 60)}), 0, 240, 60)
    assert not slow.static
    assert slow.intensity == fast.intensity
    assert slow.text == fast.text


@settings(max_examples=60, deadline=None)
@given(
    key=st.sampled_from(["rotation_3d_y", "translation_z", "translation_x"]),
    per_second=st.floats(0.01, 500.0),
    fps_pair=st.sampled_from([(15, 60), (8, 24), (16, 30), (12, 15)]),
)
def test_intensity_word_does_not_depend_on_fps(key, per_second, fps_pair):
    a, b = fps_pair
    desc_a = describe_movement(make_path("3D", **{key: per_second / a}), 0, 60, a)
    desc_b = describe_movement(make_path("3D", **{key: per_second / b}), 0, 60, b)
    assert desc_a.intensity == desc_b.intensity


def test_levels_rise_with_speed_for_pans():
    words = [
        describe_movement(make_path("3D", rotation_3d_y=deg_per_s / 15), 0, 60, 15).intensity
        for deg_per_s in (0.1, 1.0, 5.0, 15.0, 45.0, 180.0)
    ]
    assert words == ["none", "subtle", "gentle", "moderate", "fast", "very fast"]


@settings(max_examples=100, deadline=None)
@given(
    axis=st.sampled_from(PER_SECOND),
    speed=st.floats(0.0, 300.0),
    factor=st.floats(1.0, 50.0),
    sign=st.sampled_from([1.0, -1.0]),
    fps=st.sampled_from([8.0, 15.0, 16.0, 24.0, 60.0]),
)
def test_faster_motion_never_reads_weaker(axis, speed, factor, sign, fps):
    mode, key, _ = axis
    if key == "zoom":
        speed = speed / 100.0  # keep exp(speed/fps) sensible for log-zoom
    base = describe_movement(make_path(mode, **{key: _per_frame(key, sign * speed, fps)}), 0, 60, fps)
    quicker = describe_movement(make_path(mode, **{key: _per_frame(key, sign * speed * factor, fps)}), 0, 60, fps)
    assert level(quicker) >= level(base)


# --- sensitivity ------------------------------------------------------------------


def test_higher_sensitivity_reveals_a_motion_the_default_hides():
    path = make_path("3D", rotation_3d_y=0.02)  # 0.3 degrees per second at 15 fps
    assert describe_movement(path, 0, 60, 15).static
    revealed = describe_movement(path, 0, 60, 15, sensitivity=4.0)
    assert revealed.phrases == ("subtle pan right",)


def test_lower_sensitivity_hides_more():
    path = make_path("3D", translation_z=1.75)
    assert not describe_movement(path, 0, 60, 15).static
    assert describe_movement(path, 0, 60, 15, sensitivity=0.02).static


@settings(max_examples=60, deadline=None)
@given(speed=st.floats(0.01, 200.0), low=st.floats(0.05, 5.0), ratio=st.floats(1.0, 20.0))
def test_raising_sensitivity_never_weakens_a_word(speed, low, ratio):
    path = make_path("3D", rotation_3d_x=speed / 15)
    less = describe_movement(path, 0, 60, 15, sensitivity=low)
    more = describe_movement(path, 0, 60, 15, sensitivity=low * ratio)
    assert level(more) >= level(less)


# --- phases and duration ---------------------------------------------------------


def _pan_then_dolly(n: int = FRAMES, switch: int = 40) -> CameraPath:
    t = np.arange(n)
    return make_path(
        "3D",
        n=n,
        rotation_3d_y=np.where(t < switch, -0.5, 0.0),
        translation_z=np.where(t >= switch, 1.75, 0.0),
    )


def test_pan_then_dolly_reads_in_order_with_then():
    desc = describe_movement(_pan_then_dolly(), 0, 81, 15)
    assert desc.phrases == ("gentle pan left", "moderate dolly in")
    assert desc.text == "gentle pan left, then a moderate dolly in, sustained"
    assert desc.intensity == "moderate"


def test_a_range_sees_only_its_own_phases():
    path = _pan_then_dolly()
    assert describe_movement(path, 0, 40, 15).phrases == ("gentle pan left",)
    assert describe_movement(path, 40, 120, 15).phrases == ("moderate dolly in",)


def test_a_one_frame_flicker_is_not_a_phase():
    pan = np.full(FRAMES, -0.5)
    pan[30] = 0.5
    pan[50] = 0.0
    desc = describe_movement(make_path("3D", rotation_3d_y=pan), 0, 81, 15)
    assert desc.phrases == ("gentle pan left",)


def test_simultaneous_moves_share_a_phase_strongest_first():
    desc = describe_movement(make_path("3D", rotation_3d_y=0.3, translation_z=3.0), 0, 60, 15)
    assert desc.phrases == ("fast dolly in with a gentle pan right",)


def test_back_and_forth_pan_is_not_static():
    pan = 1.5 * np.sin(2 * np.pi * np.arange(FRAMES) / 16)
    desc = describe_movement(make_path("3D", rotation_3d_y=pan), 0, 96, 16)
    assert not desc.static
    assert "pan left and right" in desc.text


@pytest.mark.parametrize("moving,expected", [(15, "brief"), (45, "extended"), (80, "sustained")])
def test_duration_follows_the_share_of_the_range_in_motion(moving, expected):
    pan = np.where(np.arange(FRAMES) < moving, 1.0, 0.0)
    desc = describe_movement(make_path("3D", rotation_3d_y=pan), 0, 80, 15)
    assert desc.duration == expected
    assert desc.text.endswith(", " + expected)
    if moving < 80:
        assert desc.phrases == ("moderate pan right", "static hold")


# --- shake ----------------------------------------------------------------------


def test_camera_shakify_reads_as_handheld_shake():
    path = make_path("3D", shake_name="INVESTIGATION", shake_intensity=1.0)
    desc = describe_movement(path, 0, 81, 15)
    assert not desc.static
    assert desc.phrases == ("moderate handheld shake",)
    assert desc.text == "moderate handheld shake, sustained"


def test_shake_is_added_after_the_moves():
    path = make_path("3D", translation_z=1.75, shake_name="HANDYCAM_RUN", shake_intensity=0.2)
    desc = describe_movement(path, 0, 81, 15)
    assert desc.text == "moderate dolly in, with subtle handheld shake, sustained"


@pytest.mark.parametrize("name,intensity", [("None", 1.0), ("", 1.0), ("INVESTIGATION", 0.0)])
def test_shake_off_means_no_shake(name, intensity):
    path = make_path("3D", shake_name=name, shake_intensity=intensity)
    assert describe_movement(path, 0, 60, 15).static


def test_stronger_and_faster_shake_reads_stronger():
    def shake_level(intensity: float, speed: float = 1.0) -> int:
        path = make_path("3D", shake_name="INVESTIGATION", shake_intensity=intensity, shake_speed=speed)
        return level(describe_movement(path, 0, 60, 15))

    assert shake_level(0.3) < shake_level(1.0) < shake_level(3.0)
    assert shake_level(1.0, speed=4.0) > shake_level(1.0, speed=1.0)


# --- Chinese ----------------------------------------------------------------------


def test_chinese_static_camera():
    desc = describe_movement(make_path("3D"), 0, 60, 15, language="zh")
    assert desc.text == "镜头静止"
    assert desc.language == "zh" and desc.static


def test_chinese_pan_then_dolly():
    desc = describe_movement(_pan_then_dolly(), 0, 81, 15, language="zh")
    assert desc.phrases == ("缓慢向左摇镜", "中速向前推进")
    assert desc.text == "缓慢向左摇镜，然后中速向前推进，贯穿全程"
    # programmatic fields stay comparable across languages
    assert desc.intensity == describe_movement(_pan_then_dolly(), 0, 81, 15).intensity == "moderate"


def test_chinese_zoom_and_shake():
    path = make_path("2D", zoom=deforum_default_zoom(FRAMES), shake_name="INVESTIGATION", shake_intensity=1.0)
    desc = describe_movement(path, 0, 81, 15, language="zh")
    assert desc.text == "轻微变焦推近，伴随中等手持抖动，贯穿全程"


def test_chinese_opposite_directions():
    out = describe_movement(make_path("3D", translation_z=-1.75), 0, 60, 15, language="zh")
    assert "向后拉远" in out.text and "推进" not in out.text


# --- inputs -----------------------------------------------------------------------


def test_from_schedules_defaults_and_infers_length():
    path = CameraPath.from_schedules({"translation_z": np.full(50, 1.0), "strength": np.zeros(50)}, "3D")
    assert path.max_frames == 50
    assert np.all(path.zoom == 1.0) and np.all(path.rotation_3d_y == 0.0)


def test_path_does_not_follow_later_edits_of_the_caller_array():
    tz = np.full(60, 1.75)
    path = CameraPath.from_schedules({"translation_z": tz}, "3D")
    tz[:] = 0.0
    assert not describe_movement(path, 0, 60, 15).static
    with pytest.raises(ValueError):
        path.translation_z[0] = 1.0  # read-only


@pytest.mark.parametrize(
    "start,end",
    [(-1, 10), (0, FRAMES + 1), (10, 10), (20, 10), (FRAMES, FRAMES + 1)],
)
def test_bad_ranges_are_rejected_with_the_range_in_the_message(start, end):
    with pytest.raises(ValueError, match=r"frame range .* max_frames \(120\)"):
        describe_movement(make_path(), start, end, 15)


@pytest.mark.parametrize("fps", [0, -15, float("nan"), float("inf")])
def test_bad_fps_is_rejected(fps):
    with pytest.raises(ValueError, match="fps"):
        describe_movement(make_path(), 0, 10, fps)


@pytest.mark.parametrize("sensitivity", [0, -1.0, float("nan")])
def test_bad_sensitivity_is_rejected(sensitivity):
    with pytest.raises(ValueError, match="sensitivity"):
        describe_movement(make_path(), 0, 10, 15, sensitivity=sensitivity)


def test_unknown_language_is_named():
    with pytest.raises(ValueError, match="'fr'"):
        describe_movement(make_path(), 0, 10, 15, language="fr")


def test_non_integer_frames_are_rejected():
    with pytest.raises(ValueError, match="integers"):
        describe_movement(make_path(), 0.5, 10, 15)


def test_bad_paths_are_rejected():
    with pytest.raises(ValueError, match="animation_mode"):
        make_path("4D")
    with pytest.raises(ValueError, match="zoom"):
        make_path("2D", zoom=0.0)
    with pytest.raises(ValueError, match="translation_z"):
        CameraPath.from_schedules({"translation_z": np.zeros(10)}, "3D", max_frames=12)
    with pytest.raises(ValueError, match="different lengths"):
        CameraPath.from_schedules({"translation_z": np.zeros(10), "zoom": np.ones(11)}, "3D")
    with pytest.raises(ValueError, match="NaN"):
        CameraPath.from_schedules({"angle": np.array([0.0, np.nan])}, "2D")
    with pytest.raises(ValueError, match="max_frames"):
        CameraPath.from_schedules({}, "2D")


# --- speed ------------------------------------------------------------------------


def test_ten_thousand_frame_path_reads_as_a_few_phases():
    n = 10_000
    rng = np.random.default_rng(7)
    t = np.arange(n)
    schedules = {
        "translation_z": 1.75 + rng.normal(0, 0.5, n),
        "rotation_3d_y": np.where((t // 700) % 2 == 0, 0.5, -0.5),
        "rotation_3d_x": 0.3 * np.sin(t / 40),
        "translation_x": rng.normal(0, 3, n),
    }
    path = CameraPath.from_schedules(schedules, "3D", shake_name="INVESTIGATION", shake_intensity=0.5)
    for start in range(0, n - 81, 500):
        assert describe_movement(path, start, start + 81, 16).text
    whole = describe_movement(path, 0, n, 16)
    assert not whole.static and len(whole.phrases) <= 5  # at most four phases plus the shake
