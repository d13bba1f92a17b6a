"""Fuzzing the core: whatever a schedule string or a settings dict holds, the answer is a result or the
project's own one-line error naming the key, never a traceback, a hang or code run.

Derandomized (the same examples every run) and bounded in examples, so it takes seconds, not minutes.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from deforum_wan.core.expressions import ScheduleError
from deforum_wan.core.inspection import inspect_settings
from deforum_wan.core.plan import PlanError, PlanOptions, plan_clips
from deforum_wan.core.prompts import prompt_at
from deforum_wan.core.schedules import evaluate_expression, evaluate_frame_key, parse_schedule, parse_string_schedule
from deforum_wan.core.seeds import SeedError, resolve_seed
from deforum_wan.core.settings import SettingsError, settings_from_dict
from deforum_wan.core.specs import MODEL_SPECS

PROJECT_ERRORS = (ScheduleError, SettingsError, PlanError, SeedError)
SHARED = Path(__file__).resolve().parents[2] / "shared" / "deforum-settings"
FUZZ = settings(derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))

# Pieces of Deforum schedules, of numexpr, of Python and of known attacks, glued at random.
TOKENS = [
    "t", "max_f", "s", "0", "1", "7", "2.5", ".5", "1e3", "1e400", "10**40", "9**9**9", "-", "+", "*", "/",
    "//", "%", "**", "<<", ">>", "&", "|", "^", "~", "<", "<=", "==", "!=", ">", "(", ")", "(", ")", ",",
    ":", "'", '"', ".", "[", "]", "{", "}", "sin", "cos", "where", "sqrt", "log", "abs", "floor", "sum",
    "prod", "min", "max", "arctan2", "complex", "real", "contains", "ones_like", "__class__", "__import__",
    "_\uff3f", "\\\n", " ", "\n", "lambda", "and", "not", "if", "else", "for", "in", "x", "os", "system",
    "True", "None", "`", "\x00", "\uff54", "j", "e", ";", "=", ":=", "@", "#",
]
token_soup = st.lists(st.sampled_from(TOKENS), max_size=24).map("".join)
# Well-formed numexpr expressions, so that fuzzing also reaches evaluation, movement and planning.
well_formed = st.recursive(
    st.sampled_from(["t", "max_f", "s", "0", "1", "-1", "2.5", "0.5", "1e-3", "-0.0"]),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "**", "%", "//"]), inner).map(
            lambda x: f"({x[0]}{x[1]}{x[2]})"),
        st.tuples(st.sampled_from(["sin", "cos", "abs", "sqrt", "log", "exp", "floor", "sum", "max"]), inner).map(
            lambda x: f"{x[0]}({x[1]})"),
        st.tuples(inner, inner).map(lambda x: f"where(t > 3, {x[0]}, {x[1]})"),
    ),
    max_leaves=6,
)
expression_text = st.one_of(token_soup, well_formed)
frame_key_text = st.one_of(st.integers(-5, 300).map(str), expression_text,
                           expression_text.map(lambda e: f'"{e}"'))
schedule_text = st.one_of(
    st.lists(st.tuples(frame_key_text, expression_text), min_size=1, max_size=6)
    .map(lambda pairs: ", ".join(f"{k}:({v})" for k, v in pairs)),
    st.lists(st.tuples(st.integers(0, 200), st.floats(allow_nan=True, allow_infinity=True)), min_size=1, max_size=6)
    .map(lambda pairs: ", ".join(f"{k}:({v!r})" for k, v in pairs)),
    st.lists(st.tuples(st.integers(0, 20), st.sampled_from(["-1", "0", "0.5", "1", "1.02", "3"])), min_size=1,
             max_size=4).map(lambda pairs: ", ".join(f"{k}:({v})" for k, v in pairs)),
    expression_text,
    st.text(max_size=60),
)


def assert_named_error(error: BaseException, keys: set[str]) -> None:
    """The project's error, on one line, naming one of `keys` (a settings key, its `wan_`-less option, or
    an indexed key such as prompts['0'])."""
    assert isinstance(error, PROJECT_ERRORS), f"{type(error).__name__}: {error}"
    message = str(error)
    assert "\n" not in message and "Traceback" not in message
    name = message.split(": ", 1)[0].split("[", 1)[0]
    assert name in keys, f"{message!r} does not name one of {sorted(keys)}"


@settings(FUZZ, max_examples=1500)
@given(text=schedule_text, max_frames=st.integers(1, 120), seed=st.integers(-1, 2**32 - 1))
def test_numeric_schedules(text: str, max_frames: int, seed: int) -> None:
    try:
        values = parse_schedule(text, max_frames, seed, key="translation_x")
    except Exception as error:  # noqa: BLE001 - the assertion says which errors are allowed
        assert_named_error(error, {"translation_x"})
        return
    assert values.shape == (max_frames,) and values.dtype == np.float64 and np.isfinite(values).all()


@settings(FUZZ, max_examples=300)
@given(text=schedule_text, max_frames=st.integers(1, 50))
def test_string_schedules(text: str, max_frames: int) -> None:
    try:
        values = parse_string_schedule(text, max_frames, key="sampler_schedule")
    except Exception as error:  # noqa: BLE001
        assert_named_error(error, {"sampler_schedule"})
        return
    assert len(values) == max_frames and all(isinstance(v, str) for v in values)


@settings(FUZZ, max_examples=600)
@given(text=expression_text, frame=st.integers(0, 99), key_text=frame_key_text)
def test_single_expressions_and_frame_keys(text: str, frame: int, key_text: str) -> None:
    try:
        value = evaluate_expression(text, frame, 100, 3, key="prompts['0']")
        assert math.isfinite(value)
    except Exception as error:  # noqa: BLE001
        assert_named_error(error, {"prompts"})
    try:
        assert isinstance(evaluate_frame_key(key_text, 100, 3, key="prompts"), int)
    except Exception as error:  # noqa: BLE001
        assert_named_error(error, {"prompts"})


# Values of every JSON kind, the awkward numbers and schedule-like text.
json_value = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.sampled_from([0, 1, -1, 5, 4096, 10**6, 2**64]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e-9, 1e400, 0.5, 15.0, 59.94]),
    st.sampled_from(["", "Infinity", "NaN", "1e400", "-16x-16", "100000x100000", "832x480", "None", "2D", "3D",
                     "Video Input", "schedule", "iter", "../../etc", "20240101120000", "Euler a"]),
    schedule_text, st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.text(max_size=5),
                                                                      max_size=2),
)
# settings keys, with the names an error about each may carry
KEYS = {
    "W": {"W"}, "H": {"H"}, "fps": {"fps"}, "max_frames": {"max_frames"}, "seed": {"seed"},
    "seed_behavior": {"seed_behavior"}, "seed_iter_N": {"seed_iter_N"}, "seed_schedule": {"seed_schedule"},
    "animation_mode": {"animation_mode"}, "diffusion_cadence": {"diffusion_cadence"},
    "angle": {"angle"}, "zoom": {"zoom"}, "translation_x": {"translation_x"}, "translation_y": {"translation_y"},
    "translation_z": {"translation_z"}, "rotation_3d_x": {"rotation_3d_x"}, "rotation_3d_y": {"rotation_3d_y"},
    "rotation_3d_z": {"rotation_3d_z"}, "transform_center_x": {"transform_center_x"},
    "transform_center_y": {"transform_center_y"}, "fov_schedule": {"fov_schedule"},
    "strength_schedule": {"strength_schedule"}, "cfg_scale_schedule": {"cfg_scale_schedule"},
    "shake_name": {"shake_name"}, "shake_intensity": {"shake_intensity"}, "shake_speed": {"shake_speed"},
    "positive_prompts": {"positive_prompts"}, "negative_prompts": {"negative_prompts"},
    "animation_prompts_positive": {"animation_prompts_positive", "positive_prompts"},
    "resume_timestring": {"resume_timestring"}, "resume_from_timestring": {"resume_from_timestring"},
    "use_init": {"use_init"}, "init_image": {"init_image"}, "batch_name": {"batch_name"}, "steps": {"steps"},
    "prompts": {"prompts"}, "wan_prompts": {"wan_prompts"}, "wan_steps": {"wan_steps", "steps"},
    "wan_inference_steps": {"wan_inference_steps", "steps"}, "wan_guidance_scale": {"wan_guidance_scale", "guidance"},
    "wan_flow_shift": {"wan_flow_shift", "flow_shift"}, "wan_max_clip_frames": {"max_clip_frames"},
    "wan_frame_overlap": {"wan_frame_overlap", "overlap"}, "wan_resolution": {"wan_resolution", "W", "H"},
}
prompts_value = st.one_of(
    json_value,
    st.dictionaries(st.one_of(frame_key_text, st.integers(0, 40).map(str)),
                    st.one_of(st.text(max_size=20), expression_text.map(lambda e: f"a `{e}` b"), json_value),
                    min_size=1, max_size=4),
)


def base_settings() -> dict:
    data = json.loads((SHARED / "a1111-deforum-test-simple.txt").read_text(encoding="utf-8"))
    data["max_frames"] = 12
    return data


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared Deforum settings not present")
@settings(FUZZ, max_examples=1200)
@given(
    changes=st.dictionaries(st.sampled_from(sorted(KEYS)), json_value, min_size=1, max_size=4),
    prompts=st.none() | prompts_value,
    kind=st.sampled_from(["t2v", "i2v", "vace", "ti2v-5b"]),
    continuity=st.sampled_from(["auto", "none"]),
    max_clip_frames=st.none() | st.integers(5, 81),
)
def test_settings_dicts_load_inspect_and_plan(changes, prompts, kind, continuity, max_clip_frames) -> None:
    data = {**base_settings(), **changes}
    if prompts is not None:
        data["prompts"] = prompts
        changes = {**changes, "prompts": prompts}
    if isinstance(data.get("max_frames"), int) and data["max_frames"] > 300:
        data["max_frames"] = 300  # long timelines are the benchmarks' job; keep each example fast
        changes = {k: v for k, v in changes.items() if k != "max_frames"}
    names = set().union(*(KEYS[k] for k in changes))
    try:
        s = settings_from_dict(data)
        inspect_settings(s)
        seed = resolve_seed(s.seed)
        plan = plan_clips(s, MODEL_SPECS[kind], PlanOptions(seed=seed, continuity=continuity,
                                                          max_clip_frames=max_clip_frames))
        prompt_at(s, s.max_frames - 1)
    except Exception as error:  # noqa: BLE001
        if max_clip_frames is not None and re.match(r"max_clip_frames: ", str(error)):
            return  # the option this test passes, named as such
        if kind == "i2v" and re.match(r"(init_image|use_init|continuity): .*from text", str(error)):
            return  # an image-to-video model needs a start image: named by the field that gives it
        assert_named_error(error, names)
        return
    assert sum(len(c.sources) for c in plan.clips) == s.max_frames
