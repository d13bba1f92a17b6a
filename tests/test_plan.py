"""The clip plan keeps Deforum's timeline exact: frame count, keyframes, seeds, 4n+1 clips."""
from __future__ import annotations

import dataclasses
import json
import re
import math
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from deforum_wan.core.plan import ClipPlan, PlanError, PlanOptions, format_plan, plan_clips, split_segment
from deforum_wan.core.prompts import prompt_keyframes
from deforum_wan.core.schedules import parse_schedule
from deforum_wan.core.settings import load_settings, settings_from_dict
from deforum_wan.core.specs import MODEL_SPECS, spec_for_transformer, trained_size
from deforum_wan.core.timeline import MIN_CLIP_FRAMES, ClipGapError, Segment, SegmentFrames, map_segment, wan_rate

SHARED = Path(__file__).resolve().parents[2] / "shared" / "deforum-settings"
INIT = {"use_init": True, "init_image": "init.png"}  # image-to-video models cannot start a clip from text


def with_init(settings):
    return dataclasses.replace(settings, use_init=True, init_image="init.png")


def deforum_seeds(settings, base: int) -> list[int]:
    """Deforum's render loop, transcribed: diffuse every `cadence` frames, next_seed after each."""
    cadence = max(int(settings.raw.get("diffusion_cadence", 1)), 1)
    seed, internal = base, 0
    by_frame = {}
    frame_idx = 0
    while frame_idx < settings.max_frames:
        if settings.seed_behavior == "schedule":
            seed = int(parse_schedule(settings.seed_schedule, settings.max_frames, base, key="seed_schedule")[frame_idx])
        for f in range(frame_idx, min(frame_idx + cadence, settings.max_frames)):
            by_frame[f] = seed
        b = settings.seed_behavior
        if b == "iter":
            seed += 1 if internal % settings.seed_iter_N == 0 else 0
            internal += 1
        elif b == "ladder":
            seed += 2 if internal == 0 else -1
            internal = 1 if internal == 0 else 0
        elif b == "alternate":
            seed += 1 if internal == 0 else -1
            internal = 1 if internal == 0 else 0
        frame_idx += cadence
    return [by_frame[f] for f in range(settings.max_frames)]


def check_plan(plan: ClipPlan, settings, spec) -> None:
    # Exactly max_frames output frames, contiguous, each supplied once.
    assert plan.clips[0].output_start == 0
    for a, b in zip(plan.clips, plan.clips[1:]):
        assert a.output_end == b.output_start
    assert plan.clips[-1].output_end == settings.max_frames
    assert sum(len(c.sources) for c in plan.clips) == settings.max_frames
    for c in plan.clips:
        assert len(c.sources) == c.output_frames
        assert (c.num_frames - 1) % 4 == 0 and 1 <= c.num_frames <= spec.max_frames
        for lo, hi, w in c.sources:
            assert 0 <= lo <= hi < c.num_frames and 0.0 <= w < 1.0
            assert lo >= c.overlap - 1  # never shows a repeated frame except to blend into the first fresh one
        assert [s[0] + s[2] for s in c.sources] == sorted(s[0] + s[2] for s in c.sources)  # time runs forward
    # Every prompt keyframe lands on its own frame (the first is also held back to frame 0).
    # Prompt segments shorter than min_clip_seconds are merged into one clip, which lists their keys.
    keyframes = prompt_keyframes(settings)
    assert plan.clips[0].prompt_key == keyframes[0].key
    for kf in keyframes:
        if kf is not keyframes[0] and kf.frame >= settings.max_frames:
            continue
        clip = plan.clip_for_frame(kf.frame)
        if clip.merged:
            assert kf.key in clip.merged or clip.prompt_key == kf.key
        else:
            assert clip.prompt_key == kf.key
            if kf is not keyframes[0]:
                assert clip.output_start == kf.frame
    min_frames = round(next(c.value for c in plan.choices if c.name == "min_clip_seconds") * settings.fps)
    if min_frames == 0:
        assert not any(c.merged for c in plan.clips)


prompt_texts = st.text(alphabet="abcdefgh ", min_size=1, max_size=12).filter(lambda s: s.strip())


@st.composite
def random_settings(draw):
    max_frames = draw(st.integers(1, 2000))
    fps = draw(st.one_of(st.integers(1, 120), st.floats(1, 120, allow_nan=False).map(lambda f: round(f, 3))))
    keys = draw(st.sets(st.integers(0, max_frames + 50), min_size=1, max_size=12))
    if all(k >= max_frames for k in keys):
        keys.add(draw(st.integers(0, max_frames - 1)))
    prompts = {str(k): draw(prompt_texts) for k in sorted(keys)}
    data = {
        "prompts": prompts,
        "max_frames": max_frames,
        "fps": fps,
        "seed": draw(st.integers(0, 2**31)),
        "seed_behavior": draw(st.sampled_from(["iter", "fixed", "ladder", "alternate", "schedule"])),
        "seed_iter_N": draw(st.integers(1, 4)),
        "diffusion_cadence": draw(st.integers(1, 6)),
        "animation_mode": draw(st.sampled_from(["2D", "3D"])),
        "W": draw(st.integers(64, 1400)),
        "H": draw(st.integers(64, 1400)),
    }
    return settings_from_dict(data)


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    s=random_settings(),
    kind=st.sampled_from(["t2v", "i2v", "vace", "ti2v-5b", "a14b-t2v"]),
    continuity=st.sampled_from(["auto", "none"]),
    overlap=st.integers(1, 12),
)
def test_plan_properties(s, kind, continuity, overlap):
    spec = MODEL_SPECS[kind]
    if kind == "i2v":
        s = with_init(s)
        if continuity == "none":
            with pytest.raises(PlanError, match="^continuity: none starts every clip from text"):
                plan_clips(s, spec, PlanOptions(continuity=continuity, overlap=overlap))
            return
    plan = plan_clips(s, spec, PlanOptions(continuity=continuity, overlap=overlap))
    check_plan(plan, s, spec)
    expected = deforum_seeds(s, s.seed)
    for c in plan.clips:
        if s.seed_behavior != "schedule" or expected[c.output_start] != -1:
            assert c.seed == expected[c.output_start]
    assert (plan.width, plan.height) == (plan.width // spec.size_multiple * spec.size_multiple,
                                         plan.height // spec.size_multiple * spec.size_multiple)
    assert ClipPlan.from_json(plan.to_json()) == plan


@pytest.mark.parametrize("path", sorted(SHARED.glob("*.txt")), ids=lambda p: p.name)
@pytest.mark.parametrize("kind", ["t2v", "i2v", "vace", "ti2v-5b", "a14b-t2v"])
def test_shared_files_plan(path, kind):
    s = load_settings(path)
    if kind == "i2v":  # no init image in these files: refused at plan time, then planned with one
        with pytest.raises(PlanError, match=r"^init_image: Wan2.1 I2V \(i2v\) cannot start a clip from text"):
            plan_clips(s, MODEL_SPECS[kind], PlanOptions(seed=1234))
        s = with_init(s)
    plan = plan_clips(s, MODEL_SPECS[kind], PlanOptions(seed=1234))
    check_plan(plan, s, MODEL_SPECS[kind])
    text = format_plan(plan)
    assert f"{len(plan.clips)} clips" in text and plan.clips[-1].prompt[:15] in text


def test_a1111_default_clips_follow_prompt_keyframes():
    s = load_settings(SHARED / "a1111-deforum-default.txt")
    plan = plan_clips(s, MODEL_SPECS["t2v"], PlanOptions(seed=5, extra_modes=("i2v",)))
    assert [c.output_start for c in plan.clips] == [0, 30, 60, 90]
    assert [c.mode for c in plan.clips] == ["t2v", "i2v", "i2v", "i2v"]
    assert [c.overlap for c in plan.clips] == [0, 1, 1, 1]
    assert plan.clips[2].prompt == "a beautiful coconut"
    assert plan.clips[2].negative_prompt == "photo, realistic nsfw, nude nsfw, nude"
    assert "dolly in" in plan.clips[0].movement
    # 15 fps is within 10% of Wan's 16: one Wan frame per output frame, no crossfades.
    assert plan.timing == "native"
    assert plan.metrics.needed_frames == 120
    assert all(w == 0.0 and lo == hi for c in plan.clips for lo, hi, w in c.sources)
    assert all(len({lo for lo, _, _ in c.sources}) == c.output_frames for c in plan.clips)
    assert plan.metrics.generated_per_needed <= 1.25


def test_forge_default_at_60fps_merges_short_prompts_and_generates_few_frames():
    s = load_settings(SHARED / "forge-deforum-default.txt")
    cut = plan_clips(s, MODEL_SPECS["vace"], PlanOptions(seed=5, min_clip_seconds=0))
    assert len(cut.clips) == 18 and cut.max_frames == 334 and not any(c.merged for c in cut.clips)
    # Every 0.2-0.5 s prompt is its own clip: 170 Wan frames for a timeline of 90 (5.57 s at 16 fps).
    assert cut.metrics.timeline_frames == 90 and cut.metrics.generated_frames == 170
    plan = plan_clips(s, MODEL_SPECS["vace"], PlanOptions(seed=5))
    assert plan.timing == "interpolate"
    # 5.57 s at Wan's 16 fps, not 334 frames at 60; merged clips waste little on joins and rounding.
    assert plan.metrics.timeline_frames == 90
    assert plan.metrics.generated_per_timeline <= 1.25
    assert len(plan.clips) < 6 and all(c.merged for c in plan.clips)
    merged = [k for c in plan.clips for k in c.merged]
    assert merged == [kf.key for kf in prompt_keyframes(s) if kf.frame < s.max_frames]
    assert "Then" in plan.clips[0].prompt
    assert "merges prompts 0, 12" in format_plan(plan)


def test_16fps_maps_one_to_one():
    s = settings_from_dict({"prompts": {"0": "a"}, "max_frames": 81, "fps": 16})
    plan = plan_clips(s, MODEL_SPECS["t2v"], PlanOptions(seed=1))
    assert len(plan.clips) == 1 and plan.clips[0].num_frames == 81
    assert plan.clips[0].sources == tuple((i, i, 0.0) for i in range(81))


def test_60fps_takes_wall_clock_length():
    s = settings_from_dict({"prompts": {"0": "a"}, "max_frames": 240, "fps": 60})
    plan = plan_clips(s, MODEL_SPECS["t2v"], PlanOptions(seed=1))
    # 4 s -> 64 Wan frames (positions 0..63.75), blended for the in-between output frames.
    assert plan.metrics.needed_frames == 65
    c = plan.clips[0]
    assert c.sources[0] == (0, 0, 0.0) and c.sources[1] == (0, 1, 0.266667)
    assert c.sources[-1][0] == 63


def test_long_segment_is_chained_within_model_limit():
    s = settings_from_dict({"prompts": {"0": "a"}, "max_frames": 400, "fps": 16, **INIT})
    plan = plan_clips(s, MODEL_SPECS["i2v"], PlanOptions(seed=1))
    assert len(plan.clips) == 5
    assert all(c.num_frames <= 81 for c in plan.clips)
    assert [c.mode for c in plan.clips] == ["i2v"] * 5  # the first from the init image
    # Each chained clip's first fresh frame shows right after the previous clip's last (the init image's).
    assert all(c.sources[0][0] == 1 for c in plan.clips)
    assert plan.metrics.generated_frames - plan.metrics.overlap_frames - plan.metrics.surplus_frames == 400


def test_vace_overlap_and_none_continuity():
    s = settings_from_dict({"prompts": {"0": "a", "50": "b"}, "max_frames": 100, "fps": 16})
    vace = plan_clips(s, MODEL_SPECS["vace"], PlanOptions(seed=1, overlap=9))
    assert [c.mode for c in vace.clips] == ["t2v", "vace"] and vace.clips[1].overlap == 9
    none = plan_clips(s, MODEL_SPECS["vace"], PlanOptions(seed=1, continuity="none"))
    assert [c.mode for c in none.clips] == ["t2v", "t2v"] and {c.overlap for c in none.clips} == {0}


def test_t2v_only_model_warns_that_clips_are_independent():
    s = settings_from_dict({"prompts": {"0": "a", "20": "b"}, "max_frames": 40, "fps": 16})
    plan = plan_clips(s, MODEL_SPECS["t2v"], PlanOptions(seed=1))
    assert plan.continuity == "none" and "independent" in plan.warnings[0]


def test_init_image_starts_with_i2v():
    s = settings_from_dict({"prompts": {"0": "a"}, "max_frames": 30, "fps": 16, "use_init": True, "init_image": "x.png"})
    plan = plan_clips(s, MODEL_SPECS["i2v"], PlanOptions(seed=1))
    assert plan.clips[0].mode == "i2v" and plan.clips[0].overlap == 1


def test_size_rounded_with_warning_and_wan_keys_used():
    s = settings_from_dict({"prompts": {"0": "a"}, "W": 1000, "H": 563, "wan_steps": 7, "wan_guidance": 3.5,
                            "wan_exact_size": True})
    plan = plan_clips(s, MODEL_SPECS["ti2v-5b"], PlanOptions(seed=1))
    assert (plan.width, plan.height) == (992, 576)
    assert any("1000x563 rounded to 992x576" in w for w in plan.warnings)
    assert any("992x576 (wan_exact_size) is not a size Wan2.2 TI2V-5B was trained for" in w for w in plan.warnings)
    assert plan.clips[0].steps == 7 and plan.clips[0].guidance == 3.5
    assert plan.clips[0].flow_shift == MODEL_SPECS["ti2v-5b"].default_flow_shift


@pytest.mark.parametrize(
    "options, message",
    [
        (PlanOptions(continuity="vace", seed=1), "continuity: vace needs"),
        (PlanOptions(continuity="sideways", seed=1), "continuity: expected one of"),
        (PlanOptions(steps=0, seed=1), "steps: must be between"),
        (PlanOptions(guidance=float("nan"), seed=1), "guidance"),
        (PlanOptions(sensitivity=-1, seed=1), "sensitivity"),
    ],
)
def test_bad_options_are_named(options, message):
    s = settings_from_dict({"prompts": {"0": "a"}})
    with pytest.raises(PlanError, match=message):
        plan_clips(s, MODEL_SPECS["t2v"], options)


def test_unresolved_random_seed_is_refused():
    with pytest.raises(ValueError, match="seed is -1"):
        plan_clips(settings_from_dict({"prompts": {"0": "a"}, "seed": -1}), MODEL_SPECS["t2v"])


@pytest.mark.parametrize("needed", [1, 4, 5, 80, 81, 82, 160, 161, 500])
@pytest.mark.parametrize("first, overlap", [(0, 1), (1, 1), (0, 5), (5, 5), (2, 2)])
def test_split_segment_covers_need_with_little_surplus(needed, first, overlap):
    counts = split_segment(needed, first, overlap, 81)
    fresh = counts[0] - first + sum(n - overlap for n in counts[1:])
    assert fresh >= needed
    assert fresh - needed < 4 * len(counts) + 5  # only rounding (and the 5-frame minimum) adds surplus
    assert all((n - 1) % 4 == 0 and n <= 81 for n in counts)


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"wan_steps": float("inf")}, "steps: must be between 1 and 200, got inf"),
        ({"wan_steps": 1e400}, "steps: must be between 1 and 200"),
        ({"wan_steps": "Infinity"}, "steps: must be between 1 and 200"),
        ({"wan_steps": 7.5}, "steps: expected a whole number, got 7.5"),
        ({"wan_steps": True}, "steps: expected a number, got True"),
        ({"wan_max_clip_frames": float("inf")}, "max_clip_frames: must be between 5 and 81"),
        ({"wan_max_clip_frames": 1e400}, "max_clip_frames: must be between 5 and 81"),
        ({"wan_max_clip_frames": 10**400}, "max_clip_frames: must be between 5 and 81"),
        ({"wan_guidance": "-Infinity"}, "guidance: must be between 0 and 30"),
        ({"wan_resolution": "100000x100000"}, "wan_resolution: must be between 16 and 4096, got 100000"),
        ({"wan_resolution": "-16x-16"}, "wan_resolution: expected WIDTHxHEIGHT"),
        ({"wan_resolution": "832x"}, "wan_resolution: expected WIDTHxHEIGHT"),
        ({"wan_resolution": 832}, "wan_resolution: expected WIDTHxHEIGHT"),
        ({"W": 8192}, "W: must be between 16 and 4096, got 8192"),
        ({"diffusion_cadence": float("inf")}, "diffusion_cadence: expected a whole number, got inf"),
        ({"diffusion_cadence": "Infinity"}, "diffusion_cadence: expected a whole number"),
        ({"diffusion_cadence": 2.5}, "diffusion_cadence: expected a whole number"),
        ({"seed_behavior": "schedule", "seed_schedule": "0:(1e30)"}, "seed_schedule: the seed at frame 0 is 1e+30"),
    ],
)
def test_bad_numbers_are_errors_naming_the_key_not_tracebacks(extra, message):
    s = settings_from_dict({"prompts": {"0": "a"}, "max_frames": 20, "seed": 1, **extra})
    with pytest.raises(ValueError) as err:
        plan_clips(s, MODEL_SPECS["vace"], PlanOptions(seed=1))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_resolution_sides_and_the_forge_label():
    plain = settings_from_dict({"prompts": {"0": "a"}, "wan_resolution": "864x480"})
    labelled = settings_from_dict({"prompts": {"0": "a"}, "wan_resolution": "864x480 (Landscape)"})
    for s in (plain, labelled):
        plan = plan_clips(s, MODEL_SPECS["t2v"], PlanOptions(seed=1))
        assert (plan.width, plan.height) == (832, 480)  # Forge's 864x480 is Wan's trained 832x480
        plan = plan_clips(s, MODEL_SPECS["t2v"], PlanOptions(seed=1, exact_size=True))
        assert (plan.width, plan.height) == (864, 480)
    with pytest.raises(PlanError, match="width: must be between 16 and 4096"):
        plan_clips(plain, MODEL_SPECS["t2v"], PlanOptions(seed=1, width=5000))


def test_animation_mode_none_is_a_static_camera():
    s = settings_from_dict({"prompts": {"0": "a"}, "max_frames": 30, "animation_mode": "None",
                            "translation_z": "0:(10)", "rotation_3d_y": "0:(3)"})
    plan = plan_clips(s, MODEL_SPECS["vace"], PlanOptions(seed=1))
    assert [c.movement for c in plan.clips] == ["static camera"]


@pytest.mark.parametrize("kind", ["t2v", "i2v", "vace", "ti2v-5b"])
@pytest.mark.parametrize("continuity", ["auto", "none"])
@pytest.mark.parametrize("fps", [6, 8, 15, 24, 60])
@pytest.mark.parametrize("timing", ["interpolate", "nearest", "native"])
def test_small_clips_give_a_plan_for_every_short_timeline(kind, continuity, fps, timing):
    """max_clip_frames 5 with 1..24 frames once gave "internal: clip 1 of segment 0 supplies no output frame".

    (At 6 fps and up, consecutive output frames are at most 4 Wan frames apart: a 5-frame chained clip reaches.)
    """
    spec = MODEL_SPECS[kind]
    if kind == "i2v" and continuity == "none":
        return  # every clip from text: refused (test_image_models_need_an_init_image)
    init = INIT if kind == "i2v" else {}
    for max_frames in range(1, 25):
        for prompts in ({"0": "a"}, {"0": "a", "3": "b"}):
            s = settings_from_dict({"prompts": prompts, "max_frames": max_frames, "fps": fps, "seed": 2, **init})
            plan = plan_clips(s, spec, PlanOptions(seed=2, continuity=continuity, max_clip_frames=5, timing=timing))
            check_plan(plan, s, spec)
            m = plan.metrics
            assert m.generated_frames - m.overlap_frames - m.surplus_frames == m.needed_frames
            assert m.surplus_frames >= 0


def test_clips_too_short_to_reach_the_next_frame_are_refused_by_name():
    s = settings_from_dict({"prompts": {"0": "a"}, "max_frames": 6, "fps": 1, "seed": 2})
    with pytest.raises(PlanError, match=r"^max_clip_frames: at 1 fps output frames are 16 Wan frames apart"):
        plan_clips(with_init(s), MODEL_SPECS["i2v"], PlanOptions(seed=2, max_clip_frames=5))
    # independent clips need no chain: the ones showing nothing are not rendered
    plan = plan_clips(s, MODEL_SPECS["t2v"], PlanOptions(seed=2, max_clip_frames=5))
    check_plan(plan, s, MODEL_SPECS["t2v"])
    assert len(plan.clips) == 6 and plan.metrics.generated_frames == 30


def test_a_million_frames_plan_in_one_pass():
    """The old planner searched every clip for every frame (10^6 frames: 217 s); now one pass."""
    s = settings_from_dict({"prompts": {"0": "a", "500000": "b"}, "max_frames": 1_000_000, "fps": 16, "seed": 1,
                            **INIT})
    plan = plan_clips(s, MODEL_SPECS["i2v"], PlanOptions(seed=1))
    check_plan(plan, s, MODEL_SPECS["i2v"])
    assert plan.metrics.needed_frames == 1_000_000


def test_zoom_at_or_below_zero_is_named_in_2d_and_ignored_where_deforum_ignores_it():
    flat = {"prompts": {"0": "a"}, "max_frames": 20, "seed": 1, "zoom": "0:(1), 10:(0)", "translation_z": "0:(0)"}
    with pytest.raises(PlanError, match=r"^zoom: the zoom factor at frame 10 is 0; it must be above 0"):
        plan_clips(settings_from_dict({**flat, "animation_mode": "2D"}), MODEL_SPECS["t2v"], PlanOptions(seed=1))
    plan = plan_clips(settings_from_dict({**flat, "animation_mode": "3D"}), MODEL_SPECS["t2v"], PlanOptions(seed=1))
    assert [c.movement for c in plan.clips] == ["static camera"]


# ---------------------------------------------------------------- output frames onto Wan frames


def shown_positions(frames: SegmentFrames) -> list[tuple[int, Fraction | float, int, int]]:
    """(output frame, fresh Wan position shown, local frame, clip frames) for every source, in clip order.

    A clip's local frame x is fresh frame (fresh before the clip) + x - overlap: its repeated frames are
    copies of the fresh frames just before it.
    """
    shown = []
    fresh_before = 0
    for c in frames.clips:
        for i, (lo, hi, w) in enumerate(c.sources):
            g_lo, g_hi = fresh_before + lo - c.overlap, fresh_before + hi - c.overlap
            shown.append((c.output_start + i, g_lo + w * (g_hi - g_lo), lo, c.num_frames))
        fresh_before += c.num_frames - c.overlap
    return shown


def test_wan_rate_is_exact():
    assert wan_rate(16, 16) == 1 and wan_rate(16, 60) == Fraction(4, 15) and wan_rate(24, 12) == 2
    assert wan_rate(16, 29.97) == Fraction(1600, 2997)


def test_mapping_16fps_onto_a_16fps_model_is_one_to_one():
    frames = map_segment(Segment(0, 81, wan_rate(16, 16), max_clip=81))
    (clip,) = frames.clips
    assert (clip.num_frames, clip.overlap, clip.output_start, clip.output_end) == (81, 0, 0, 81)
    assert clip.sources == tuple((i, i, 0.0) for i in range(81))
    assert (frames.needed, frames.surplus) == (81, 0)


def test_mapping_60fps_onto_16fps_shows_every_output_frame_once_at_its_time():
    frames = map_segment(Segment(100, 700, wan_rate(16, 60), max_clip=81, overlap=5))
    assert len(frames.clips) > 1
    shown = shown_positions(frames)
    assert [frame for frame, *_ in shown] == list(range(100, 700))  # each output frame once, in order
    for frame, position, _, _ in shown:
        assert position == pytest.approx((frame - 100) * 16 / 60, abs=1e-6)
    # 600 frames at 60 fps are 10 s: 160 Wan intervals at 16 fps, so 161 frames, the last a blend partner.
    assert frames.needed == 161


def test_mapping_without_blend_shows_the_nearest_wan_frame():
    frames = map_segment(Segment(0, 240, wan_rate(16, 60), max_clip=81, blend=False))
    for frame, position, _, _ in shown_positions(frames):
        assert position == math.floor(Fraction(frame * 16, 60) + Fraction(1, 2))
    assert all(w == 0.0 and lo == hi for c in frames.clips for lo, hi, w in c.sources)


def test_mapping_a_chained_boundary_blends_through_the_repeated_frames():
    """A pair whose second frame opens the next clip is shown there, from its copy of the first."""
    frames = map_segment(Segment(0, 600, wan_rate(16, 60), max_clip=81, overlap=5))
    first, second = frames.clips[:2]
    assert second.overlap == 5 and first.output_end == second.output_start == 211
    # output 210 is Wan position 56: the first clip's last frame; output 211 is 56.27, between clips
    assert first.sources[-1] == (first.num_frames - 1, first.num_frames - 1, 0.0)
    assert second.sources[0] == (4, 5, 0.266667)  # local 4 repeats fresh frame 56; local 5 is fresh 57


def test_mapping_a_chained_boundary_at_16fps_starts_on_the_first_fresh_frame():
    frames = map_segment(Segment(0, 200, wan_rate(16, 16), max_clip=81, overlap=5))
    assert [c.overlap for c in frames.clips] == [0, 5, 5]
    for before, after in zip(frames.clips, frames.clips[1:]):
        assert before.output_end == after.output_start
        assert before.sources[-1] == (before.num_frames - 1,) * 2 + (0.0,)
        assert after.sources[0] == (after.overlap, after.overlap, 0.0)


def test_mapping_independent_clips_share_no_blend_pair():
    frames = map_segment(Segment(0, 600, wan_rate(16, 60), max_clip=81))
    first, second = frames.clips
    assert second.overlap == 0
    # output 303 is Wan position 80.8: its partner opens the next clip, so it shows frame 80 alone
    assert first.output_end == 304 and first.sources[-1] == (80, 80, 0.0)
    assert second.sources[0] == (0, 1, pytest.approx(304 * 4 / 15 - 81, abs=1e-6))


@pytest.mark.parametrize("blend, last, needed", [(True, (63, 64, 0.733333), 65), (False, (64, 64, 0.0), 65)])
def test_mapping_the_last_frame(blend, last, needed):
    """Output 239 at 60 fps is Wan position 63.73: blended with 64, or its nearest, 64; both need 65 frames."""
    frames = map_segment(Segment(0, 240, wan_rate(16, 60), max_clip=81, blend=blend))
    (clip,) = frames.clips
    assert clip.output_end == 240 and clip.sources[-1] == last
    assert frames.needed == needed and clip.num_frames == 65 and frames.surplus == 0


def test_mapping_refuses_a_chained_clip_that_shows_nothing_and_drops_an_independent_one():
    segment = Segment(0, 6, wan_rate(16, 1), max_clip=5, overlap=1)  # 16 Wan frames apart, 4 fresh per clip
    with pytest.raises(ClipGapError, match="16 Wan frames apart, more than a 5-frame clip adds after its 1"):
        map_segment(segment)
    frames = map_segment(Segment(0, 6, wan_rate(16, 1), max_clip=5))
    assert len(frames.clips) == 6 and [c.output_start for c in frames.clips] == list(range(6))
    # the dropped clips' frames are not needed: five whole clips up to the next shown frame, then one frame
    assert frames.needed == 5 * 5 + 1 and frames.surplus == 4


@hsettings(max_examples=300, deadline=None)
@given(
    start=st.integers(0, 50),
    length=st.integers(1, 700),
    native=st.sampled_from([16, 24]),
    fps=st.one_of(st.integers(6, 120), st.sampled_from([23.976, 29.97, 59.94])),
    max_clip=st.sampled_from([5, 9, 17, 33, 81, 121]),
    first_overlap=st.integers(0, 5),
    overlap=st.integers(0, 9),
    blend=st.booleans(),
)
def test_mapping_properties(start, length, native, fps, max_clip, first_overlap, overlap, blend):
    """Clips of 4n+1 frames within the limit; every output frame once, at its own time; the frames add up."""
    overlap = min(overlap, max_clip - 4)
    first_overlap = min(first_overlap, max_clip - 4)
    rate = wan_rate(native, fps)
    frames = map_segment(Segment(start, start + length, rate, max_clip, first_overlap, overlap, blend))
    for i, c in enumerate(frames.clips):
        assert (c.num_frames - 1) % 4 == 0 and max(MIN_CLIP_FRAMES, overlap) <= c.num_frames <= max_clip
        assert c.overlap == (first_overlap if i == 0 else overlap) and len(c.sources) == c.output_end - c.output_start > 0
        assert all(c.overlap - 1 <= lo <= hi < c.num_frames and 0 <= w < 1 for lo, hi, w in c.sources)
    shown = shown_positions(frames)
    assert [frame for frame, *_ in shown] == list(range(start, start + length))
    for frame, position, lo, n in shown:
        exact = (frame - start) * rate
        if not blend:
            assert position == math.floor(exact + Fraction(1, 2))
        elif overlap == 0 and lo == n - 1 and position != pytest.approx(float(exact), abs=1e-6):
            assert position == math.floor(exact)  # its partner opens the next, independent clip
        else:
            assert position == pytest.approx(float(exact), abs=1e-6)
    fresh = sum(c.num_frames - c.overlap for c in frames.clips)
    assert fresh - frames.surplus == frames.needed and 0 <= frames.surplus


# ---------------------------------------------------------------- model-correct defaults (issue 14)

# kind: (steps, guidance, guidance_2, shift at 832x480, shift at 1280x720), from Wan's generate.py and configs
OFFICIAL = {
    "t2v": (50, 5.0, None, 5.0, 5.0),
    "i2v": (40, 5.0, None, 3.0, 5.0),
    "flf2v": (50, 5.0, None, 16.0, 16.0),
    "vace": (50, 5.0, None, 16.0, 16.0),
    "ti2v-5b": (50, 5.0, None, 5.0, 5.0),
    "a14b-t2v": (40, 4.0, 3.0, 12.0, 12.0),
    "a14b-i2v": (40, 3.5, 3.5, 5.0, 5.0),
}


@pytest.mark.parametrize("kind", sorted(OFFICIAL))
def test_each_model_gets_its_official_defaults_with_their_source(kind):
    steps, guidance, guidance_2, shift_480, shift_720 = OFFICIAL[kind]
    spec = MODEL_SPECS[kind]
    for (w, h), shift in (((832, 480), shift_480), ((1280, 720), shift_720)):
        s = settings_from_dict({"prompts": {"0": "a"}, "max_frames": 8, "W": w, "H": h, **INIT})
        plan = plan_clips(s, spec, PlanOptions(seed=1))
        clip = plan.clips[0]
        assert (clip.steps, clip.guidance, clip.guidance_2, clip.flow_shift) == (steps, guidance, guidance_2, shift)
        sources = {c.name: c.source for c in plan.choices}
        assert set(sources) == {"size", "steps", "guidance", "flow_shift", "negative_prompt", "timing", "min_clip_seconds", "color_match", "video"} | (
            {"guidance_2"} if guidance_2 is not None else set())
        for name in ("steps", "guidance", "flow_shift", "negative_prompt") + (("guidance_2",) if guidance_2 else ()):
            assert sources[name].startswith("official: Wan2."), (name, sources[name])
            assert ".py" in sources[name]
        # every official value is cited in specs.py's sources too
        assert all(spec.source(k) for k in ("steps", "guidance", "flow_shift", "sizes"))


def test_user_values_win_over_the_official_ones_and_say_where_they_came_from():
    s = settings_from_dict({"prompts": {"0": "a"}, "max_frames": 8, "wan_inference_steps": 20,
                            "wan_guidance_scale": 7.5, "wan_flow_shift": 8})
    plan = plan_clips(s, MODEL_SPECS["a14b-t2v"], PlanOptions(seed=1))
    clip, sources = plan.clips[0], {c.name: c for c in plan.choices}
    assert (clip.steps, clip.guidance, clip.guidance_2, clip.flow_shift) == (20, 7.5, 7.5, 8.0)
    assert sources["steps"].source == "settings: wan_inference_steps"
    assert sources["guidance_2"].source == "settings: wan_guidance_scale (guidance), for both experts"
    plan = plan_clips(s, MODEL_SPECS["a14b-t2v"], PlanOptions(seed=1, steps=3, guidance=2, guidance_2=1, flow_shift=4))
    clip, sources = plan.clips[0], {c.name: c for c in plan.choices}
    assert (clip.steps, clip.guidance, clip.guidance_2, clip.flow_shift) == (3, 2.0, 1.0, 4.0)
    assert {sources[n].source for n in ("steps", "guidance", "guidance_2", "flow_shift")} == {
        "option: steps", "option: guidance", "option: guidance_2", "option: flow_shift"}


def test_guidance_2_is_only_for_two_expert_models():
    s = settings_from_dict({"prompts": {"0": "a"}, "max_frames": 8, "wan_guidance_2": 2})
    plan = plan_clips(s, MODEL_SPECS["vace"], PlanOptions(seed=1))
    assert plan.clips[0].guidance_2 is None and "guidance_2" not in {c.name for c in plan.choices}
    assert any("guidance_2 (settings: wan_guidance_2) is ignored" in w for w in plan.warnings)
    with pytest.raises(PlanError, match="^guidance_2: must be between 0 and 30"):
        plan_clips(s, MODEL_SPECS["a14b-t2v"], PlanOptions(seed=1, guidance_2=99))


@pytest.mark.parametrize(
    "kind, size, expected",
    [
        ("vace", (512, 512), (624, 624)),  # A1111's default: square at the 480p area
        ("t2v", (1280, 720), (1280, 720)),  # a trained size stays
        ("t2v", (864, 480), (832, 480)),  # Forge's Wan default is Wan's 832x480
        ("t2v", (1024, 576), (832, 480)),  # nearer 480p than 720p by area
        ("t2v", (1920, 1080), (1280, 720)),
        ("t2v", (480, 864), (480, 832)),
        ("i2v", (640, 480), (720, 544)),  # 4:3 at the 480p area
        ("ti2v-5b", (512, 512), (928, 928)),  # TI2V-5B: 720p only, multiples of 32
        ("ti2v-5b", (1280, 720), (1280, 704)),
        ("a14b-t2v", (2000, 1000), (1344, 672)),  # 2:1 at the 720p area
    ],
)
def test_settings_sizes_go_to_the_nearest_trained_size_with_the_same_shape(kind, size, expected):
    s = settings_from_dict({"prompts": {"0": "a"}, "max_frames": 8, "W": size[0], "H": size[1], **INIT})
    plan = plan_clips(s, MODEL_SPECS[kind], PlanOptions(seed=1))
    assert (plan.width, plan.height) == expected
    (choice,) = [c for c in plan.choices if c.name == "size"]
    assert choice.value == f"{expected[0]}x{expected[1]}"
    if expected != size:
        assert f"W/H {size[0]}x{size[1]} mapped to the nearest size" in choice.source and "SUPPORTED_SIZES" in choice.source
    assert not any("trained" in w for w in plan.warnings)  # a mapping is a note, not a warning
    assert re.search(rf"^size +{expected[0]}x{expected[1]} ", format_plan(plan), re.M)


def test_a_1_3b_model_maps_720p_settings_to_480p():
    small = spec_for_transformer("t2v", 12 * 128)
    assert small.label == "Wan2.1 T2V 1.3B" and small.kind == "t2v"
    s = settings_from_dict({"prompts": {"0": "a"}, "max_frames": 8, "W": 1280, "H": 720})
    assert (plan_clips(s, small, PlanOptions(seed=1)).width, plan_clips(s, small, PlanOptions(seed=1)).height) == (
        832, 480)
    assert plan_clips(s, MODEL_SPECS["t2v"], PlanOptions(seed=1)).width == 1280  # the 14B was trained at 720p too


def test_insisting_on_a_size_keeps_it_with_a_warning():
    s = settings_from_dict({"prompts": {"0": "a"}, "max_frames": 8, "W": 512, "H": 512})
    for options, how in ((PlanOptions(seed=1, exact_size=True), "exact_size"),
                         (PlanOptions(seed=1, width=512, height=512), "width/height option")):
        plan = plan_clips(s, MODEL_SPECS["t2v"], options)
        assert (plan.width, plan.height) == (512, 512)
        assert any(f"size 512x512 ({how}) is not a size Wan2.1 T2V was trained for" in w and "624x624" in w
                   for w in plan.warnings)
    plan = plan_clips(s.with_wan(exact_size="true"), MODEL_SPECS["t2v"], PlanOptions(seed=1))
    assert (plan.width, plan.height) == (512, 512)
    with pytest.raises(PlanError, match="^wan_exact_size: expected true or false"):
        plan_clips(s.with_wan(exact_size="maybe"), MODEL_SPECS["t2v"], PlanOptions(seed=1))
    # a trained size given exactly: no warning
    plan = plan_clips(s, MODEL_SPECS["t2v"], PlanOptions(seed=1, width=832, height=480))
    assert not any("trained" in w for w in plan.warnings)


def test_an_unofficial_transformer_has_no_trained_sizes():
    tiny = spec_for_transformer("vace", 24)
    assert tiny.sizes == () and tiny.default_flow_shift == MODEL_SPECS["vace"].default_flow_shift
    assert spec_for_transformer("vace", None) is MODEL_SPECS["vace"] is spec_for_transformer("vace", 5120)
    s = settings_from_dict({"prompts": {"0": "a"}, "max_frames": 8, "W": 32, "H": 48})
    plan = plan_clips(s, tiny, PlanOptions(seed=1))
    assert (plan.width, plan.height) == (32, 48) and not plan.warnings
    assert "not an official Wan2.1 VACE checkpoint" in plan.choices[0].source


@hsettings(max_examples=300, deadline=None)
@given(w=st.integers(16, 4096), h=st.integers(16, 4096), kind=st.sampled_from(sorted(MODEL_SPECS)))
def test_trained_sizes_are_whole_multiples_within_the_trained_area(w, h, kind):
    spec = MODEL_SPECS[kind]
    tw, th = trained_size(spec, w, h)
    assert tw % spec.size_multiple == 0 and th % spec.size_multiple == 0 and 16 <= min(tw, th) <= max(tw, th) <= 4096
    assert tw * th <= max(a * b for a, b in spec.sizes)
    if 0.25 <= w / h <= 4:  # any ordinary shape keeps its aspect ratio within a few percent
        assert abs(math.log(tw / th / (w / h))) < 0.06


def test_image_models_need_an_init_image_at_plan_time():
    s = settings_from_dict({"prompts": {"0": "a"}, "max_frames": 8})
    for kind, label in (("i2v", "Wan2.1 I2V"), ("flf2v", "Wan2.1 FLF2V"), ("a14b-i2v", "Wan2.2 I2V-A14B")):
        with pytest.raises(PlanError, match=rf"^init_image: {label} \({kind}\) cannot start a clip from text"):
            plan_clips(s, MODEL_SPECS[kind], PlanOptions(seed=1))
    unused = settings_from_dict({"prompts": {"0": "a"}, "max_frames": 8, "init_image": "x.png", "use_init": False})
    with pytest.raises(PlanError, match=r"^use_init: .* init_image is set but use_init is off"):
        plan_clips(unused, MODEL_SPECS["i2v"], PlanOptions(seed=1))
    with pytest.raises(PlanError, match="^continuity: none starts every clip from text"):
        plan_clips(with_init(s), MODEL_SPECS["i2v"], PlanOptions(seed=1, continuity="none"))
    # a text-to-video model, or a second model that adds T2V... and TI2V-5B starts from text
    assert plan_clips(s, MODEL_SPECS["ti2v-5b"], PlanOptions(seed=1)).clips[0].mode == "t2v"
    assert plan_clips(with_init(s), MODEL_SPECS["a14b-i2v"], PlanOptions(seed=1)).clips[0].mode == "i2v"


def test_wan_negative_prompt_when_the_settings_give_none():
    s = settings_from_dict({"prompts": {"0": "a", "4": "b --neg blurry"}, "max_frames": 8, **INIT})
    plan = plan_clips(s, MODEL_SPECS["i2v"], PlanOptions(seed=1, min_clip_seconds=0))
    assert plan.clips[0].negative_prompt.startswith("镜头晃动，色调艳丽，过曝，静态")  # Wan's I2V negative prompt
    assert plan.clips[1].negative_prompt == "blurry"
    (choice,) = [c for c in plan.choices if c.name == "negative_prompt"]
    assert choice.value == "Wan default for clips 0, else settings" and "sample_neg_prompt" in choice.source
    vace = plan_clips(s, MODEL_SPECS["vace"], PlanOptions(seed=1, min_clip_seconds=0))
    assert vace.clips[0].negative_prompt.startswith("色调艳丽，过曝，静态")  # the shared one
    mine = settings_from_dict({"prompts": {"0": "a"}, "max_frames": 8, "negative_prompts": "ugly"})
    plan = plan_clips(mine, MODEL_SPECS["vace"], PlanOptions(seed=1))
    assert plan.clips[0].negative_prompt == "ugly" and plan.choices[-2].value == "settings"


def test_a1111_syntax_is_stripped_listed_and_shown():
    s = settings_from_dict({"prompts": {"0": "a (cat:1.5) AND [sunny:rainy:0.5] <lora:x:0.8> day --neg (ugly:1.3)"},
                            "max_frames": 8})
    plan = plan_clips(s, MODEL_SPECS["vace"], PlanOptions(seed=1))
    clip = plan.clips[0]
    assert clip.prompt == "a cat, rainy day" and clip.negative_prompt == "ugly"
    assert clip.stripped == ("<lora:x:0.8>", "AND", "(cat:1.5)", "[sunny:rainy:0.5]", "(ugly:1.3)")
    assert clip.loras == (("x", 0.8),)
    assert clip.render_prompt.startswith("a cat, rainy day")  # what Wan is given: no syntax, no LoRA tag
    text = format_plan(plan)
    assert "prompt 0: A1111 syntax removed: <lora:x:0.8> AND (cat:1.5) [sunny:rainy:0.5] (ugly:1.3)" in text
    assert "LoRA weights for its clips: x:0.8" in text
    assert ClipPlan.from_json(plan.to_json()) == plan


def test_plan_header_and_json_show_each_setting_with_its_source():
    s = load_settings(SHARED / "forge-deforum-default.txt")
    plan = plan_clips(s, MODEL_SPECS["vace"], PlanOptions(seed=1))
    lines = format_plan(plan).splitlines()
    assert re.match(r"size +832x480 +wan_resolution 864x480 mapped to the nearest size", lines[2])
    assert re.match(r"steps +20 +settings: wan_inference_steps$", lines[3])
    assert re.match(r"guidance +7.5 +settings: wan_guidance_scale$", lines[4])
    assert re.match(r"flow shift +16 +official: Wan2.1 generate.py", lines[5])
    assert re.match(r"timing +interpolate +auto: 60 fps is more than 10% from Wan2.1 VACE's 16 fps", lines[6])
    assert re.match(r"min clip seconds +2 +default: shorter prompt segments are merged", lines[7])
    assert re.match(r"color match +off +settings: color_coherence None", lines[8])
    assert re.match(r"negative prompt +Wan default +official: Wan2.1/Wan2.2 wan/configs/shared_config.py", lines[9])
    data = json.loads(plan.to_json())
    assert [c["name"] for c in data["choices"]] == ["size", "steps", "guidance", "flow_shift", "timing",
                                                    "min_clip_seconds", "color_match", "negative_prompt", "video"]
    assert data["clips"][0]["guidance_2"] is None and data["clips"][0]["stripped"] == []


def test_a_plan_saved_before_these_fields_still_loads():
    s = settings_from_dict({"prompts": {"0": "a"}, "max_frames": 8})
    data = plan_clips(s, MODEL_SPECS["vace"], PlanOptions(seed=1)).to_dict()
    del data["choices"]
    for clip in data["clips"]:
        for key in ("guidance_2", "stripped", "loras"):
            del clip[key]
    old = ClipPlan.from_dict(data)
    assert old.choices == () and old.clips[0].stripped == () and old.clips[0].guidance_2 is None


@pytest.mark.parametrize("fps, timing", [(16, "native"), (15, "native"), (17.5, "native"), (14, "interpolate"),
                                         (24, "interpolate"), (60, "interpolate"), (8, "interpolate")])
def test_auto_timing_maps_one_to_one_near_the_model_rate_else_interpolates(fps, timing):
    s = settings_from_dict({"prompts": {"0": "a"}, "max_frames": 48, "fps": fps})
    plan = plan_clips(s, MODEL_SPECS["vace"], PlanOptions(seed=1))
    assert plan.timing == timing
    if timing == "native":  # output frame i is Wan frame i: no crossfade, nothing skipped
        assert [lo for c in plan.clips for lo, _, _ in c.sources] == list(range(48))
        assert all(w == 0.0 for c in plan.clips for _, _, w in c.sources)
    else:  # the settings' duration at 16 fps
        assert plan.metrics.timeline_frames == math.ceil(48 * 16 / fps)
    tight = plan_clips(s, MODEL_SPECS["vace"], PlanOptions(seed=1, fps_tolerance=0.0))
    assert tight.timing == ("native" if fps == 16 else "interpolate")


def test_explicit_timings_and_their_warnings():
    s = settings_from_dict({"prompts": {"0": "a"}, "max_frames": 120, "fps": 60})
    blend = plan_clips(s, MODEL_SPECS["vace"], PlanOptions(seed=1, timing="blend"))
    assert any("ghosts" in w for w in blend.warnings) and any(w > 0 for _, _, w in blend.clips[0].sources)
    nearest = plan_clips(s, MODEL_SPECS["vace"], PlanOptions(seed=1, timing="nearest"))
    assert all(w == 0 for c in nearest.clips for _, _, w in c.sources)
    native = plan_clips(s, MODEL_SPECS["vace"], PlanOptions(seed=1, timing="native"))
    assert native.metrics.timeline_frames == 120 and any("3.75x speed" in w for w in native.warnings)
    with pytest.raises(PlanError, match=r"^timing: expected one of auto, native, interpolate, blend, nearest"):
        plan_clips(s, MODEL_SPECS["vace"], PlanOptions(seed=1, timing="smooth"))
    wan = settings_from_dict({"prompts": {"0": "a"}, "max_frames": 120, "fps": 60, "wan_timing": "sideways"})
    with pytest.raises(PlanError, match=r"^wan_timing: expected one of"):
        plan_clips(wan, MODEL_SPECS["vace"], PlanOptions(seed=1))


@pytest.mark.parametrize("fps", [15, 24, 60])
def test_next_clip_continues_from_the_last_frame_shown(fps):
    """At a prompt change the chain continues from the last Wan frame an output frame shows, not from
    the surplus that 4n+1 rounding added after it."""
    s = settings_from_dict({"prompts": {"0": "a", "37": "b", "90": "c"}, "max_frames": 150, "fps": fps})
    plan = plan_clips(s, MODEL_SPECS["vace"], PlanOptions(seed=1, min_clip_seconds=0))
    assert len(plan.clips) >= 3
    for clip, nxt in zip(plan.clips, plan.clips[1:]):
        last_shown = max(max(lo, hi if w > 0 else lo) for lo, hi, w in clip.sources)
        if nxt.segment != clip.segment:
            assert clip.tail_end == last_shown + 1 <= clip.num_frames
        else:
            assert clip.tail_end == clip.num_frames
    assert any(c.tail_end < c.num_frames for c in plan.clips)  # surplus exists and is skipped at the join


def test_short_prompts_are_merged_into_clips_of_the_minimum_length():
    s = settings_from_dict({"prompts": {"0": "a red fox", "8": "a red fox, snow", "16": "an owl", "40": "a lake"},
                            "max_frames": 80, "fps": 16})
    plan = plan_clips(s, MODEL_SPECS["vace"], PlanOptions(seed=1))  # 2 s = 32 frames
    assert [(c.output_start, c.merged) for c in plan.clips] == [(0, ("0", "8", "16")), (40, ())]
    assert plan.clips[0].prompt == "a red fox. Then a red fox, snow. Then an owl"
    assert plan.clips[0].seed == plan_clips(s, MODEL_SPECS["vace"], PlanOptions(seed=1, min_clip_seconds=0)).clips[0].seed
    cut = plan_clips(s, MODEL_SPECS["vace"], PlanOptions(seed=1, min_clip_seconds=0))
    assert [c.output_start for c in cut.clips] == [0, 8, 16, 40]
    assert cut.metrics.generated_frames > plan.metrics.generated_frames
    # The last short segment joins the group before it.
    tail = settings_from_dict({"prompts": {"0": "a", "40": "b"}, "max_frames": 50, "fps": 16})
    assert [c.merged for c in plan_clips(tail, MODEL_SPECS["vace"], PlanOptions(seed=1)).clips] == [("0", "40")]
    with pytest.raises(PlanError, match=r"^min_clip_seconds: must be between 0 and 3600"):
        plan_clips(s, MODEL_SPECS["vace"], PlanOptions(seed=1, min_clip_seconds=-1))


def test_cost_is_frames_times_steps_per_clip_and_in_total():
    s = settings_from_dict({"prompts": {"0": "a", "40": "b"}, "max_frames": 80, "fps": 16})
    plan = plan_clips(s, MODEL_SPECS["vace"], PlanOptions(seed=1, steps=10))
    assert [c.cost for c in plan.clips] == [c.num_frames * 10 * 2 for c in plan.clips]  # two passes with CFG
    assert plan.metrics.cost == sum(c.cost for c in plan.clips)
    assert f"cost {plan.metrics.cost} (Wan frames x steps x passes" in format_plan(plan)
    no_cfg = plan_clips(s, MODEL_SPECS["vace"], PlanOptions(seed=1, steps=10, guidance=1))
    assert no_cfg.metrics.cost * 2 == plan.metrics.cost


def test_cfg_and_steps_schedules_scale_the_model_values_per_clip():
    base = {"prompts": {"0": "a", "40": "b"}, "max_frames": 80, "fps": 16}
    flat = plan_clips(settings_from_dict({**base, "cfg_scale_schedule": "0: (1.0)"}), MODEL_SPECS["vace"],
                      PlanOptions(seed=1))
    assert {c.guidance for c in flat.clips} == {5.0}  # a constant schedule keeps the official guidance
    s = settings_from_dict({**base, "cfg_scale_schedule": "0: (7), 40: (14)", "enable_steps_scheduling": True,
                            "steps_schedule": "0: (20), 40: (10)"})
    plan = plan_clips(s, MODEL_SPECS["vace"], PlanOptions(seed=1))
    first, second = plan.clips
    assert first.guidance < second.guidance and second.guidance == pytest.approx(5.0 * 2, abs=0.01)
    assert second.steps == 25 and first.steps > second.steps
    assert {"cfg_scale_schedule", "steps_schedule"} <= {c.name for c in plan.choices}
    off = settings_from_dict({**base, "steps_schedule": "0: (20), 40: (10)"})  # Deforum ignores it too
    assert {c.steps for c in plan_clips(off, MODEL_SPECS["vace"], PlanOptions(seed=1)).clips} == {50}
    zero = settings_from_dict({**base, "cfg_scale_schedule": "0: (0), 40: (7)"})
    with pytest.raises(PlanError, match=r"^cfg_scale_schedule: its value at frame 0 is 0"):
        plan_clips(zero, MODEL_SPECS["vace"], PlanOptions(seed=1))


@pytest.mark.parametrize("value, space", [("None", None), ("LAB", "LAB"), ("Match Frame 0 HSV", "HSV"),
                                          ("RGB", "RGB"), (None, "LAB")])
def test_color_coherence_sets_colour_matching(value, space):
    data = {"prompts": {"0": "a"}, "max_frames": 20}
    if value is not None:
        data["color_coherence"] = value
    plan = plan_clips(settings_from_dict(data), MODEL_SPECS["vace"], PlanOptions(seed=1))
    assert (plan.color_match, plan.color_space, plan.color_reference) == (space is not None, space, "frame0")
    off = plan_clips(settings_from_dict(data), MODEL_SPECS["vace"], PlanOptions(seed=1, color_match=False))
    assert not off.color_match and off.color_space is None


def test_color_coherence_image_and_bad_values():
    data = {"prompts": {"0": "a"}, "max_frames": 20}
    image = plan_clips(settings_from_dict({**data, "color_coherence": "Image", "color_coherence_image_path": "ref.png"}),
                       MODEL_SPECS["vace"], PlanOptions(seed=1))
    assert (image.color_reference, image.color_image) == ("image", "ref.png")
    with pytest.raises(PlanError, match=r"^color_coherence_image_path: color_coherence is 'Image' but no image"):
        plan_clips(settings_from_dict({**data, "color_coherence": "Image"}), MODEL_SPECS["vace"], PlanOptions(seed=1))
    with pytest.raises(PlanError, match=r"^color_coherence: expected None, RGB, HSV, LAB, Image or Video Input"):
        plan_clips(settings_from_dict({**data, "color_coherence": "sepia"}), MODEL_SPECS["vace"], PlanOptions(seed=1))
    video = plan_clips(settings_from_dict({**data, "color_coherence": "Video Input"}), MODEL_SPECS["vace"],
                       PlanOptions(seed=1))
    assert not video.color_match and any("Video Input" in w for w in video.warnings)


def test_deforum_video_settings_reach_the_plan():
    data = {"prompts": {"0": "a"}, "max_frames": 20}
    plan = plan_clips(settings_from_dict(data), MODEL_SPECS["vace"], PlanOptions(seed=1))
    assert (plan.video, plan.crf, plan.ffmpeg_preset) == (True, 17, "slow")  # Deforum's defaults
    mine = settings_from_dict({**data, "ffmpeg_crf": 23, "ffmpeg_preset": "veryfast", "skip_video_creation": True})
    plan = plan_clips(mine, MODEL_SPECS["vace"], PlanOptions(seed=1))
    assert (plan.video, plan.crf, plan.ffmpeg_preset) == (False, 23, "veryfast")
    with pytest.raises(PlanError, match=r"^ffmpeg_preset: expected one of ultrafast"):
        plan_clips(settings_from_dict({**data, "ffmpeg_preset": "slow; rm -rf /"}), MODEL_SPECS["vace"],
                   PlanOptions(seed=1))
    with pytest.raises(PlanError, match=r"^ffmpeg_crf: must be between 0 and 51"):
        plan_clips(settings_from_dict({**data, "ffmpeg_crf": 99}), MODEL_SPECS["vace"], PlanOptions(seed=1))


@pytest.mark.parametrize("name", ["a1111-deforum-default.txt", "a1111-deforum-test-simple.txt",
                                  "forge-deforum-default.txt"])
def test_plan_reports_deforum_keys_and_warns_for_each_ignored_change(name):
    from deforum_wan.core.coverage import key_report

    s = load_settings(SHARED / name)
    plan = plan_clips(s, MODEL_SPECS["vace"], PlanOptions(seed=1))
    report = key_report(s)
    ignored = [e for e in report.entries if e.status == "ignored" and e.changed]
    for entry in ignored:
        assert sum(w.startswith(f"{entry.key} is ") for w in plan.warnings) == 1
    text = format_plan(plan)
    assert text.count("Deforum keys: ") == 1
    for entry in report.entries:
        if entry.changed:
            assert re.search(rf"^ \* {re.escape(entry.key)} ", text, re.M), entry.key


def test_speed_presets_set_the_sampling_values_and_show_their_cost():
    s = settings_from_dict({"prompts": {"0": "a", "40": "b"}, "max_frames": 80, "fps": 16})
    quality = plan_clips(s, MODEL_SPECS["t2v"], PlanOptions(seed=1))
    turbo = plan_clips(s, MODEL_SPECS["t2v"], PlanOptions(seed=1, preset="turbo"))
    assert {(c.steps, c.guidance, c.flow_shift) for c in turbo.clips} == {(4, 1.0, 5.0)}
    assert turbo.scheduler == "FlowMatchEulerDiscreteScheduler" and turbo.scheduler_options["stochastic_sampling"]
    steps = next(c for c in turbo.choices if c.name == "steps")
    assert steps.source.startswith("preset turbo: ") and "4 steps" in steps.source
    # 4 steps without CFG against 50 with it: 4/100 of the cost.
    assert turbo.metrics.cost / quality.metrics.cost == pytest.approx(4 / 100)
    assert "x0.04 of preset quality" in format_plan(turbo)
    assert any("step-distill LoRA" in w for w in turbo.warnings)  # no LoRA given
    with_lora = plan_clips(s, MODEL_SPECS["t2v"], PlanOptions(seed=1, preset="turbo", loras=("lightx2v",)))
    assert not any("step-distill LoRA" in w for w in with_lora.warnings)
    mine = plan_clips(s, MODEL_SPECS["t2v"], PlanOptions(seed=1, preset="turbo", steps=6))  # an option wins
    assert {c.steps for c in mine.clips} == {6}
    a14b = plan_clips(s, MODEL_SPECS["a14b-t2v"], PlanOptions(seed=1, preset="turbo"))
    assert {(c.guidance, c.guidance_2) for c in a14b.clips} == {(1.0, 1.0)}
    assert a14b.scheduler_options["stochastic_sampling"] is False  # Wan2.2 Lightning: plain Euler steps
    with pytest.raises(PlanError, match=r"^preset: unknown preset 'warp'"):
        plan_clips(s, MODEL_SPECS["t2v"], PlanOptions(seed=1, preset="warp"))


def test_step_caches_are_checked_against_the_model_when_planning():
    s = settings_from_dict({"prompts": {"0": "a"}, "max_frames": 40, "fps": 16})
    plan = plan_clips(s, MODEL_SPECS["t2v"], PlanOptions(seed=1, cache="fbcache"))
    assert plan.cache == "fbcache:0.05" and any(c.name == "cache" for c in plan.choices)
    with pytest.raises(PlanError, match=r"^cache: fbcache does not work on Wan2.1 VACE \(vace\)"):
        plan_clips(s, MODEL_SPECS["vace"], PlanOptions(seed=1, cache="fbcache"))
    with pytest.raises(PlanError, match=r"^cache: unknown cache 'turbo'"):
        plan_clips(s, MODEL_SPECS["t2v"], PlanOptions(seed=1, cache="turbo"))
    assert plan_clips(s, MODEL_SPECS["vace"], PlanOptions(seed=1, cache="taylorseer:4")).cache == "taylorseer:4"


def test_motion_guide_needs_vace_and_maps_strength_to_the_guide_scale():
    s = load_settings(SHARED / "forge-deforum-default.txt")  # strength_schedule 0: (0.85)
    plan = plan_clips(s, MODEL_SPECS["vace"], PlanOptions(seed=1, motion="guide"))
    assert plan.motion == "guide" and any(c.name == "motion" for c in plan.choices)
    # No init image: the first clip starts from the first frame of a short T2V render, so it is guided too.
    assert plan.bootstrap and plan.clips[0].mode == "vace" and plan.clips[0].overlap == 1
    assert all(c.guide_scale == pytest.approx(0.85 / 0.65, abs=1e-3) and c.movement == "" for c in plan.clips)
    started = plan_clips(with_init(s), MODEL_SPECS["vace"], PlanOptions(seed=1, motion="guide"))
    assert not started.bootstrap and started.clips[0].mode == "vace"
    both = plan_clips(s, MODEL_SPECS["vace"], PlanOptions(seed=1, motion="both"))
    assert all(c.movement for c in both.clips)
    words = plan_clips(s, MODEL_SPECS["vace"], PlanOptions(seed=1))
    assert words.motion == "words" and all(c.guide_scale is None for c in words.clips)
    with pytest.raises(PlanError, match=r"^motion: guide needs a VACE model that continues clips"):
        plan_clips(s, MODEL_SPECS["t2v"], PlanOptions(seed=1, motion="guide", extra_modes=("i2v",)))
    with pytest.raises(PlanError, match=r"^motion: expected one of words, guide, both"):
        plan_clips(s, MODEL_SPECS["vace"], PlanOptions(seed=1, motion="fly"))
