"""Schedules must give Deforum's values exactly, and clear one-line errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

from deforum_wan.core import settings as settings_module
from deforum_wan.core.schedules import (
    MAX_FRAME_KEY,
    STRING_SCHEDULE_KEYS,
    ScheduleError,
    _parse_schedule_per_frame,
    evaluate_expression,
    evaluate_frame_key,
    parse_schedule,
    parse_string_schedule,
)

SEED_SCHEDULE = '0:(s), 1:(-1), "max_f-2":(-1), "max_f-1":(s)'
A1111_ZOOM = "0: (1.0025+0.002*sin(1.25*3.14*t/30))"
FORGE_ZOOM = "0: (1.0025+0.002*sin(1.25*3.14*t/120))"


def t(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float64)


# (id, schedule, max_frames, seed, expected values)
CASES = [
    # plain numbers, in every spelling Deforum accepts
    ("constant", "0:(5)", 3, -1, [5, 5, 5]),
    ("constant-space-after-colon", "0: (0)", 4, -1, [0, 0, 0, 0]),
    ("negative-float", "0:(-1.5)", 2, -1, [-1.5, -1.5]),
    ("leading-dot", "0:(.5)", 2, -1, [0.5, 0.5]),
    ("plus-sign", "0:(+2)", 2, -1, [2, 2]),
    ("quoted-number", '0:("0.25")', 2, -1, [0.25, 0.25]),
    ("nested-parens", "0:((1))", 2, -1, [1, 1]),
    ("sign-outside-parens", "0:-(1)", 2, -1, [-1, -1]),
    # Deforum strips every parenthesis before testing for a number: "(1)(2)" is 12
    ("parens-glued-digits", "0:(1)(2)", 2, -1, [12, 12]),
    ("no-parens", "0:0.75", 2, -1, [0.75, 0.75]),
    # expressions of t
    ("t", "0:(t)", 5, -1, [0, 1, 2, 3, 4]),
    ("linear-expr", "0:(t*2+1)", 4, -1, [1, 3, 5, 7]),
    ("a1111-zoom", A1111_ZOOM, 120, -1, 1.0025 + 0.002 * np.sin(1.25 * 3.14 * t(120) / 30)),
    ("forge-zoom", FORGE_ZOOM, 334, -1, 1.0025 + 0.002 * np.sin(1.25 * 3.14 * t(334) / 120)),
    ("cos", "0:(cos(t/10))", 50, -1, np.cos(t(50) / 10)),
    ("abs", "0:(abs(t-3))", 7, -1, [3, 2, 1, 0, 1, 2, 3]),
    ("where-commas", "0:(where(t>30, 1, 0))", 40, -1, (t(40) > 30).astype(float)),
    ("sqrt", "0:(sqrt(t))", 10, -1, np.sqrt(t(10))),
    ("exp", "0:(exp(-t/10))", 30, -1, np.exp(-t(30) / 10)),
    ("arctan2", "0:(arctan2(t, 5))", 8, -1, np.arctan2(t(8), 5)),
    ("tan-arcsin", "0:(tan(t/100) + arcsin(t/20))", 20, -1, np.tan(t(20) / 100) + np.arcsin(t(20) / 20)),
    ("modulo", "0:(t%3)", 7, -1, [0, 1, 2, 0, 1, 2, 0]),
    ("comparison", "0:(t>2)", 5, -1, [0, 0, 0, 1, 1]),
    ("floor", "0:(floor(t/2))", 6, -1, [0, 0, 1, 1, 2, 2]),
    ("power", "0:(t**2/100)", 5, -1, [0, 0.01, 0.04, 0.09, 0.16]),
    # an exponent makes it an expression, which Deforum holds instead of interpolating
    ("exponent-is-expression", "0:(1e-3), 4:(1)", 6, -1, [0.001] * 4 + [1, 1]),
    # max_f and s
    ("max_f", "0:(max_f)", 10, -1, [9] * 10),
    ("t-over-max_f", "0:(t/max_f)", 11, -1, t(11) / 10),
    ("seed", "0:(s)", 3, 42, [42, 42, 42]),
    ("seed-modulo", "0:(s % 100)", 2, 12345, [45, 45]),
    ("seed-key", "0:(0), s:(1)", 6, 3, [0, 1 / 3, 2 / 3, 1, 1, 1]),
    # Deforum's default seed_schedule, across tiny and normal lengths
    ("seed-schedule-1", SEED_SCHEDULE, 1, 7, [7]),
    ("seed-schedule-2", SEED_SCHEDULE, 2, 7, [7, -1]),
    # max_f-2 = 0 and max_f-1 = 1 replace the earlier keys 0 and 1
    ("seed-schedule-3", SEED_SCHEDULE, 3, 7, [-1, 7, 7]),
    ("seed-schedule-4", SEED_SCHEDULE, 4, 7, [7, -1, 7, 7]),
    ("seed-schedule-6", SEED_SCHEDULE, 6, 7, [7, -1, -1, -1, 7, 7]),
    ("seed-schedule-120", SEED_SCHEDULE, 120, 99, [99] + [-1] * 117 + [99, 99]),
    # interpolation and holding
    ("ramp", "0:(0), 10:(10)", 11, -1, t(11)),
    ("triangle", "0:(0), 4:(1), 8:(0)", 10, -1, [0, 0.25, 0.5, 0.75, 1, 0.75, 0.5, 0.25, 0, 0]),
    ("hold-before-first-key", "5:(2), 8:(5)", 10, -1, [2, 2, 2, 2, 2, 2, 3, 4, 5, 5]),
    ("hold-after-last-key", "0:(1), 2:(3)", 5, -1, [1, 2, 3, 3, 3]),
    ("keys-out-of-order", "8:(5), 5:(2)", 10, -1, [2, 2, 2, 2, 2, 2, 3, 4, 5, 5]),
    # numeric, then expression, then numeric
    ("num-expr-num", "0:(0), 4:(t), 8:(0)", 10, -1, [0, 1, 2, 3, 4, 5, 6, 7, 0, 0]),
    ("expr-num-num", "0:(t), 5:(10), 10:(0)", 12, -1, [0, 1, 2, 3, 4, 10, 8, 6, 4, 2, 0, 0]),
    ("expr-expr", "0:(t), 3:(t*10)", 6, -1, [0, 1, 2, 30, 40, 50]),
    ("expr-after-hold", "5:(2), 8:(t)", 10, -1, [2, 2, 2, 2, 2, 2, 4, 6, 8, 9]),
    ("where-then-number", "0:(where(t>2, 1, 0)), 5:(7)", 7, -1, [0, 0, 0, 1, 1, 7, 7]),
    # whitespace: "( 1 )" is not a plain number to Deforum, so it is held, not interpolated
    ("whitespace-compact", "0:(1),5:(2)", 7, -1, [1, 1.2, 1.4, 1.6, 1.8, 2, 2]),
    ("whitespace-inside-parens", "  0 :  ( 1 ) ,  5 : ( 2 )  ", 7, -1, [1, 1, 1, 1, 1, 2, 2]),
    ("whitespace-newlines", "0:(1)\n,\t5:(2)\n", 7, -1, [1, 1.2, 1.4, 1.6, 1.8, 2, 2]),
    ("whitespace-in-expression", "0: ( t * 2 )", 3, -1, [0, 2, 4]),
    # keys at or beyond max_frames are ignored
    ("key-beyond-end", "0:(0), 100:(100)", 10, -1, [0] * 10),
    ("key-at-end", "0:(0), 10:(10)", 10, -1, [0] * 10),
    ("expr-key-beyond-end", "0:(t), 20:(0)", 5, -1, [0, 1, 2, 3, 4]),
    ("negative-expr-key-ignored", '0:(1), "max_f-10":(5)', 5, -1, [1] * 5),
    # quoted and expression frame keys
    ("quoted-max_f-key", '0:(0), "max_f":(10)', 11, -1, t(11)),
    ("single-quoted-key", "'max_f/2':(1), 0:(0)", 11, -1, [0, 0.2, 0.4, 0.6, 0.8, 1, 1, 1, 1, 1, 1]),
    ("max_f-over-2-truncates", '0:(0), "max_f/2":(10)', 10, -1, [0, 2.5, 5, 7.5, 10, 10, 10, 10, 10, 10]),
    ("only-max_f-1-key", '"max_f-1":(5)', 4, -1, [5, 5, 5, 5]),
    ("parenthesised-key", "(0):(0), (4):(2)", 5, -1, [0, 0.5, 1, 1.5, 2]),
    ("whole-float-key", "0:(0), 4.0:(2)", 5, -1, [0, 0.5, 1, 1.5, 2]),
    # duplicates: the later key wins
    ("duplicate-key", "0:(1), 0:(2)", 2, -1, [2, 2]),
    ("duplicate-interpolated", "0:(0), 4:(4), 4:(8)", 5, -1, [0, 2, 4, 6, 8]),
    ("trailing-comma", "0:(1), 4:(2),", 5, -1, [1, 1.25, 1.5, 1.75, 2]),
    # numexpr reductions keep Deforum's per-frame meaning
    ("sum-per-frame", "0:(sum(t))", 4, -1, [0, 1, 2, 3]),
    ("max-per-frame", "0:(t), 2:(max(t*2)), 4:(1)", 5, -1, [0, 1, 4, 6, 1]),
    # lengths from 1 to 10,000
    ("one-frame-ramp", "0:(0), 10:(10)", 1, -1, [0]),
    ("one-frame-expr", "0:(t+3)", 1, -1, [3]),
    ("one-frame-max_f", "0:(max_f)", 1, -1, [0]),
    ("one-frame-hold-later-key", "0:(2), 5:(9)", 1, -1, [2]),
    ("two-frames", "0:(0), 1:(1)", 2, -1, [0, 1]),
    ("ten-thousand-ramp", "0:(0), 9999:(1)", 10_000, -1, t(10_000) / 9999),
    ("ten-thousand-zoom", A1111_ZOOM, 10_000, -1, 1.0025 + 0.002 * np.sin(1.25 * 3.14 * t(10_000) / 30)),
    (
        "ten-thousand-mixed",
        "0:(0), 2500:(sin(t/100)), 5000:(1), 9999:(0)",
        10_000,
        -1,
        np.concatenate(
            [
                t(2500) / 2500 * np.sin(25.0),
                np.sin(np.arange(2500, 5000) / 100),
                1 - np.arange(5000) / 4999,
            ]
        ),
    ),
]


@pytest.mark.parametrize(
    "text, max_frames, seed, expected",
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_schedule_values(text: str, max_frames: int, seed: int, expected) -> None:
    values = parse_schedule(text, max_frames, seed, key="test_schedule")
    assert values.dtype == np.float64
    assert values.shape == (max_frames,)
    assert_allclose(values, np.asarray(expected, dtype=np.float64), rtol=1e-12, atol=1e-12)
    # the vectorised path and Deforum-style frame-by-frame evaluation agree exactly
    reference = _parse_schedule_per_frame(text, max_frames, seed, key="test_schedule")
    np.testing.assert_array_equal(values, reference)


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 40
    assert len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize("value", [0.5, 2, np.float64(1.25), np.int64(3)])
def test_bare_number_is_constant_schedule(value) -> None:
    values = parse_schedule(value, 4, key="strength_schedule")
    np.testing.assert_array_equal(values, np.full(4, float(value)))


# (id, schedule, max_frames, frame named in the message or None, words in the reason)
MALFORMED = [
    ("empty", "", 10, None, "empty"),
    ("blank", "   \n ", 10, None, "empty"),
    ("unclosed-paren", "0:(sin(t)", 10, 0, "unbalanced parentheses"),
    ("unclosed-paren-later-key", "0:(1), 12:(sin(t)", 20, 12, "unbalanced parentheses"),
    ("extra-close-paren", "0:(1)), 5:(2)", 10, 0, "unbalanced parentheses"),
    ("unknown-name", "0:(foo)", 10, 0, "unknown name 'foo'"),
    ("unknown-name-later-key", "0:(0), 4:(t*speed)", 10, 4, "unknown name 'speed'"),
    ("unknown-function", "0:(0), 3:(bar(t))", 10, 3, "unknown function 'bar'"),
    ("non-numeric-frame", "x:(1)", 10, None, "unknown name 'x'"),
    ("t-in-frame-key", "t:(1)", 10, None, "unknown name 't'"),
    ("negative-frame", "-5:(1)", 10, None, "negative"),
    ("negative-frame-in-parens", "0:(0), (-5):(1)", 10, None, "negative"),
    ("float-frame", "10.5:(1)", 20, None, "whole number"),
    ("huge-frame", "99999999999:(1)", 10, None, "larger than"),
    ("huge-expression-frame", "1e9:(1)", 10, None, "beyond"),
    ("log-zero", "0:(log(t-t))", 10, 0, "-inf"),
    ("pole-at-frame-5", "0:(1/(t-5))", 10, 5, "inf"),
    ("nan-at-frame-3", "0:(0), 3:(sqrt(t-5))", 10, 3, "nan"),
    ("inf-literal", "0:(1e400)", 10, 0, "inf"),
    ("constant-divide-by-zero", "0:(1/0)", 10, 0, "division by zero"),
    ("missing-colon", "0(1)", 10, None, "missing ':'"),
    ("missing-colon-second-key", "0:(1), 5(2)", 10, None, "missing ':'"),
    ("missing-comma", "0:(1) 5:(2)", 10, 0, "is a comma missing"),
    ("missing-value", "0:", 10, 0, "missing value"),
    ("missing-frame", ":(1)", 10, None, "missing frame"),
    ("double-comma", "0:(1),,5:(2)", 10, None, "empty keyframe"),
    ("no-key-in-range", "10:(5)", 5, None, "no keyframe"),
    ("text-value", '0:("abc")', 10, 0, "text"),
    ("python-boolean", "0:(t>1 and t<5)", 10, 0, "instead of and"),
    ("wrong-arguments", "0:(sin(t, 1))", 10, 0, "arguments"),
    ("syntax-error", "0:(1 +* 2)", 10, 0, "invalid syntax"),
    ("list", [0, 1], 10, None, "got list"),
    ("dict", {"0": "(1)"}, 10, None, "got dict"),
    ("none", None, 10, None, "got NoneType"),
    ("bool", True, 10, None, "got bool"),
    ("nan-number", float("nan"), 10, None, "nan"),
]


@pytest.mark.parametrize(
    "text, max_frames, frame, reason",
    [case[1:] for case in MALFORMED],
    ids=[case[0] for case in MALFORMED],
)
def test_malformed_schedules(text, max_frames: int, frame: int | None, reason: str) -> None:
    for parse in (parse_schedule, _parse_schedule_per_frame):
        with pytest.raises(ScheduleError) as info:
            parse(text, max_frames, key="translation_x")
        error = info.value
        message = str(error)
        assert isinstance(error, ValueError)
        assert "\n" not in message
        assert message.startswith("translation_x: cannot evaluate ")
        assert error.key == "translation_x"
        assert error.frame == frame
        if frame is not None:
            assert f"at frame {frame}:" in message
        else:
            assert "at frame" not in message
        assert reason in message
        assert isinstance(error.piece, str)


def test_malformed_table_is_large_enough() -> None:
    assert len(MALFORMED) >= 15


def test_error_message_format_and_pickling() -> None:
    with pytest.raises(ScheduleError) as info:
        parse_schedule("0:(0), 12:(sin(t)", 20, key="translation_x")
    error = info.value
    assert str(error) == (
        'translation_x: cannot evaluate "(sin(t)" at frame 12: '
        "unbalanced parentheses (a '(' is never closed)"
    )
    assert error.piece == "(sin(t)"
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error)
    assert (copy.key, copy.piece, copy.frame) == ("translation_x", "(sin(t)", 12)


def test_long_pieces_are_shortened_in_message_only() -> None:
    long_expr = "0:(" + "+".join(["t"] * 100) + " + nope)"
    with pytest.raises(ScheduleError) as info:
        parse_schedule(long_expr, 5, key="zoom")
    assert len(str(info.value)) < 200
    assert "nope" in info.value.piece


def test_no_numexpr_traceback_escapes() -> None:
    for text in ["0:(t[0])", "0:(t.__class__)", "0:(lambda: 1)", "0:(1)(2)x", "0:(10**40)"]:
        with pytest.raises(ScheduleError):
            parse_schedule(text, 5, key="angle")


@pytest.mark.parametrize("max_frames", [0, -1, True, 2.5, "10", MAX_FRAME_KEY + 1])
def test_bad_max_frames(max_frames) -> None:
    with pytest.raises(ScheduleError, match="max_frames"):
        parse_schedule("0:(1)", max_frames, key="zoom")


# --------------------------------------------------------------------------
# string schedules


@pytest.mark.parametrize(
    "text, max_frames, expected",
    [
        ('0: ("Euler a")', 3, ("Euler a",) * 3),
        ('0: ("model1.ckpt"), 100: ("model2.safetensors")', 150, ("model1.ckpt",) * 100 + ("model2.safetensors",) * 50),
        ('0: ("model1.ckpt"), 100: ("model2.safetensors")', 50, ("model1.ckpt",) * 50),
        ('5:("a"), 7:("b")', 9, ("a",) * 7 + ("b",) * 2),
        ('0: ("!({everywhere}^{init_mask})")', 2, ("!{everywhere}^{init_mask}",) * 2),
        ('0: ("{video_mask}")', 2, ("{video_mask}",) * 2),
        ('0:("a, b"), 2:(c)', 3, ("a, b", "a, b", "c")),
        ('0:("first"), "max_f":("last")', 4, ("first", "first", "first", "last")),
        ('0:( "Euler a" ), 1:(DPM++ 2M Karras)', 2, ("Euler a", "DPM++ 2M Karras")),
        ('0:("x"), 0:("y")', 1, ("y",)),
        ('0:("x"), 1:(2)', 2, ("x", "2")),
    ],
)
def test_string_schedules(text: str, max_frames: int, expected: tuple[str, ...]) -> None:
    assert parse_string_schedule(text, max_frames, key="sampler_schedule") == expected


@pytest.mark.parametrize("text", ["", None, 3, "0(x)", '-1:("a")', '0:("a"', '10:("a")'])
def test_string_schedule_errors(text) -> None:
    with pytest.raises(ScheduleError) as info:
        parse_string_schedule(text, 5, key="sampler_schedule")
    assert str(info.value).startswith("sampler_schedule: ")
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------
# frame keys and single expressions


@pytest.mark.parametrize(
    "text, max_frames, seed, expected",
    [
        ("10", 100, -1, 10),
        (10, 100, -1, 10),
        (" 10 ", 100, -1, 10),
        ('"10"', 100, -1, 10),
        ("10.0", 100, -1, 10),
        ('"max_f-1"', 100, -1, 98),
        ("'max_f/2'", 100, -1, 49),
        ("(max_f-1)", 100, -1, 98),
        ("max_f", 1, -1, 0),
        ("s", 100, 5, 5),
        ("max_f-10", 5, -1, -6),
        ("20", 5, -1, 20),
    ],
)
def test_evaluate_frame_key(text, max_frames: int, seed: int, expected: int) -> None:
    assert evaluate_frame_key(text, max_frames, seed, key="prompts") == expected


@pytest.mark.parametrize("text", ["abc", "-3", "10.5", "1e9", "", "t", None, "max_f/0", "sin(", [1]])
def test_evaluate_frame_key_errors(text) -> None:
    with pytest.raises(ScheduleError) as info:
        evaluate_frame_key(text, 100, key="prompts")
    assert str(info.value).startswith("prompts: ")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "expr, frame, max_frames, seed, expected",
    [
        ("sin(t)", 3, 10, -1, np.sin(3)),
        ("max_f/2", 0, 11, -1, 5.0),
        ("s+t", 4, 10, 100, 104.0),
        ("t>2", 3, 10, -1, 1.0),
        ("sum(t)", 7, 10, -1, 7.0),
        ("1.0025+0.002*sin(1.25*3.14*t/30)", 12, 120, -1, 1.0025 + 0.002 * np.sin(1.25 * 3.14 * 12 / 30)),
    ],
)
def test_evaluate_expression(expr: str, frame: int, max_frames: int, seed: int, expected: float) -> None:
    value = evaluate_expression(expr, frame, max_frames, seed, key="prompt")
    assert isinstance(value, float)
    assert_allclose(value, expected, rtol=1e-12)


@pytest.mark.parametrize(
    "expr, frame, reason",
    [
        ("1/(t-3)", 3, "inf"),
        ("foo*t", 2, "unknown name 'foo'"),
        ("sin(t", 1, "unbalanced"),
        ("", 0, "empty"),
        ("sqrt(t-9)", 4, "nan"),
    ],
)
def test_evaluate_expression_errors(expr: str, frame: int, reason: str) -> None:
    with pytest.raises(ScheduleError) as info:
        evaluate_expression(expr, frame, 10, key="prompts")
    message = str(info.value)
    assert message.startswith("prompts: ")
    assert f"at frame {frame}:" in message
    assert reason in message
    assert "\n" not in message


# --------------------------------------------------------------------------
# properties and real settings files


@settings(max_examples=60, deadline=None)
@given(
    keys=st.dictionaries(
        st.integers(min_value=0, max_value=80),
        st.one_of(
            st.floats(min_value=-1e3, max_value=1e3, allow_nan=False).map(lambda v: f"({v!r})"),
            st.sampled_from(["(t)", "(sin(t/7))", "(where(t>20, 1, -1))", "(s)", "(max_f-t)"]),
        ),
        min_size=1,
        max_size=8,
    ),
    max_frames=st.integers(min_value=1, max_value=120),
    seed=st.integers(min_value=-1, max_value=2**32),
)
def test_vectorised_matches_per_frame(keys: dict[int, str], max_frames: int, seed: int) -> None:
    text = ", ".join(f"{frame}:{value}" for frame, value in keys.items())
    try:
        expected = _parse_schedule_per_frame(text, max_frames, seed, key="zoom")
    except ScheduleError as error:
        with pytest.raises(ScheduleError) as info:
            parse_schedule(text, max_frames, seed, key="zoom")
        assert str(info.value) == str(error)
        return
    values = parse_schedule(text, max_frames, seed, key="zoom")
    np.testing.assert_array_equal(values, expected)
    # plain-number keys in range keep their value exactly
    for frame, value in keys.items():
        if frame < max_frames and value[1:-1].lstrip("-").replace(".", "", 1).isdigit():
            assert values[frame] == float(value[1:-1])


SETTINGS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "deforum-settings"
CAMERA_KEYS = set(settings_module.CAMERA_KEYS) - {"fov_schedule"}


@pytest.mark.skipif(not SETTINGS_DIR.is_dir(), reason="shared Deforum settings not present")
@pytest.mark.parametrize("path", sorted(SETTINGS_DIR.glob("*.txt")) if SETTINGS_DIR.is_dir() else [], ids=lambda p: p.name)
def test_real_settings_files_parse(path: Path) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    seen = 0
    for name, value in data.items():
        if not (name.endswith("_schedule") or name in CAMERA_KEYS or name.startswith("perspective_flip_")):
            continue
        if not isinstance(value, str):
            continue
        for max_frames in (1, int(data.get("max_frames", 120)), 10_000):
            if name in STRING_SCHEDULE_KEYS:
                parse_string_schedule(value, max_frames, key=name)
            else:
                parse_schedule(value, max_frames, int(data.get("seed", -1)), key=name)
        seen += 1
    assert seen >= 40


def _numeric_reference(keys: dict[int, float], max_frames: int) -> np.ndarray:
    """Deforum's numeric-key algorithm written the plain way: known frames,
    held ends, one numpy.interp over everything else (what pandas runs)."""
    values = np.full(max_frames, np.nan)
    for frame, value in keys.items():
        if frame < max_frames:
            values[frame] = value
    known = np.flatnonzero(~np.isnan(values))
    values[0], values[-1] = values[known[0]], values[known[-1]]
    missing = np.flatnonzero(np.isnan(values))
    known = np.flatnonzero(~np.isnan(values))
    values[missing] = np.interp(missing, known, values[known])
    return values


@settings(max_examples=80, deadline=None)
@given(
    keys=st.dictionaries(
        st.integers(min_value=0, max_value=400),
        st.one_of(
            st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5]),
            st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_subnormal=False),
        ),
        min_size=1,
        max_size=150,
    ),
    max_frames=st.integers(min_value=1, max_value=500),
)
def test_numeric_keys_match_single_interp(keys: dict[int, float], max_frames: int) -> None:
    if not any(frame < max_frames for frame in keys):
        return
    text = ", ".join(f"{frame}:({value!r})" for frame, value in keys.items())
    # repr() may write an exponent, which Deforum treats as an expression
    if "e" in text:
        return
    values = parse_schedule(text, max_frames, key="angle")
    expected = _numeric_reference(keys, max_frames)
    np.testing.assert_array_equal(values, expected)
    np.testing.assert_array_equal(np.signbit(values), np.signbit(expected))


def test_negative_zero_between_equal_keys_matches_interp() -> None:
    values = parse_schedule("0:(-0.0), 5:(-0.0)", 8, key="angle")
    expected = _numeric_reference({0: -0.0, 5: -0.0}, 8)
    np.testing.assert_array_equal(np.signbit(values), np.signbit(expected))
    assert np.signbit(values[0]) and not np.signbit(values[2])


@pytest.mark.parametrize("seed", ["7", 1.5, None, True])
def test_bad_seed(seed) -> None:
    with pytest.raises(ScheduleError, match="seed must be a whole number"):
        parse_schedule("0:(s)", 3, seed, key="seed_schedule")


def test_numpy_integer_seed_and_frames() -> None:
    values = parse_schedule("0:(s+t)", np.int64(3), np.int64(10), key="seed_schedule")
    np.testing.assert_array_equal(values, [10, 11, 12])
