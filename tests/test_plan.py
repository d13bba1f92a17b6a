"""The clip plan keeps Deforum's timeline exact: frame count, keyframes, seeds, 4n+1 clips."""
from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from deforum_wan.core.plan import ClipPlan, PlanError, PlanOptions, format_plan, plan_clips, split_segment
from deforum_wan.core.prompts import prompt_keyframes
from deforum_wan.core.schedules import parse_schedule
from deforum_wan.core.settings import load_settings, settings_from_dict
from deforum_wan.core.specs import MODEL_SPECS
from deforum_wan.core.timeline import MIN_CLIP_FRAMES, ClipGapError, Segment, SegmentFrames, map_segment, wan_rate

SHARED = Path(__file__).resolve().parents[2] / "shared" / "deforum-settings"


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
    keyframes = prompt_keyframes(settings)
    assert plan.clips[0].prompt_key == keyframes[0].key
    for kf in keyframes:
        clip = plan.clip_for_frame(kf.frame)
        assert clip.prompt_key == kf.key
        if kf is not keyframes[0]:
            assert clip.output_start == kf.frame


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
    # 8 s at 16 fps needs 128 Wan frames; the plan makes few more.
    assert plan.metrics.needed_frames == 128
    assert plan.metrics.generated_frames <= 128 * 1.05


def test_forge_default_at_60fps_generates_few_frames():
    s = load_settings(SHARED / "forge-deforum-default.txt")
    plan = plan_clips(s, MODEL_SPECS["t2v"], PlanOptions(seed=5, extra_modes=("i2v",)))
    assert len(plan.clips) == 18 and plan.max_frames == 334
    # 5.57 s at Wan's 16 fps, not 334 frames at 60.
    assert plan.metrics.needed_frames == 90 + 18 - 1 or plan.metrics.needed_frames < 120
    assert plan.metrics.generated_per_output <= 1.10


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
    s = settings_from_dict({"prompts": {"0": "a"}, "max_frames": 400, "fps": 16})
    plan = plan_clips(s, MODEL_SPECS["i2v"], PlanOptions(seed=1))
    assert len(plan.clips) == 5
    assert all(c.num_frames <= 81 for c in plan.clips)
    assert [c.mode for c in plan.clips] == ["t2v"] + ["i2v"] * 4
    # Each chained clip's first fresh frame shows right after the previous clip's last.
    assert all(c.sources[0][0] == 1 for c in plan.clips[1:])
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
    s = settings_from_dict({"prompts": {"0": "a"}, "W": 1000, "H": 563, "wan_steps": 7, "wan_guidance": 3.5})
    plan = plan_clips(s, MODEL_SPECS["ti2v-5b"], PlanOptions(seed=1))
    assert (plan.width, plan.height) == (992, 576)
    assert any("1000x563 rounded to 992x576" in w for w in plan.warnings)
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
@pytest.mark.parametrize("blend", [True, False])
def test_small_clips_give_a_plan_for_every_short_timeline(kind, continuity, fps, blend):
    """max_clip_frames 5 with 1..24 frames once gave "internal: clip 1 of segment 0 supplies no output frame".

    (At 6 fps and up, consecutive output frames are at most 4 Wan frames apart: a 5-frame chained clip reaches.)
    """
    spec = MODEL_SPECS[kind]
    for max_frames in range(1, 25):
        for prompts in ({"0": "a"}, {"0": "a", "3": "b"}):
            s = settings_from_dict({"prompts": prompts, "max_frames": max_frames, "fps": fps, "seed": 2})
            plan = plan_clips(s, spec, PlanOptions(seed=2, continuity=continuity, max_clip_frames=5, blend=blend))
            check_plan(plan, s, spec)
            m = plan.metrics
            assert m.generated_frames - m.overlap_frames - m.surplus_frames == m.needed_frames
            assert m.surplus_frames >= 0


def test_clips_too_short_to_reach_the_next_frame_are_refused_by_name():
    s = settings_from_dict({"prompts": {"0": "a"}, "max_frames": 6, "fps": 1, "seed": 2})
    with pytest.raises(PlanError, match=r"^max_clip_frames: at 1 fps output frames are 16 Wan frames apart"):
        plan_clips(s, MODEL_SPECS["i2v"], PlanOptions(seed=2, max_clip_frames=5))
    # independent clips need no chain: the ones showing nothing are not rendered
    plan = plan_clips(s, MODEL_SPECS["t2v"], PlanOptions(seed=2, max_clip_frames=5))
    check_plan(plan, s, MODEL_SPECS["t2v"])
    assert len(plan.clips) == 6 and plan.metrics.generated_frames == 30


def test_a_million_frames_plan_in_one_pass():
    """The old planner searched every clip for every frame (10^6 frames: 217 s); now one pass."""
    s = settings_from_dict({"prompts": {"0": "a", "500000": "b"}, "max_frames": 1_000_000, "fps": 16, "seed": 1})
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
