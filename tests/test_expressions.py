"""No schedule, frame key, backtick or seed schedule can run code; real expressions still evaluate."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from deforum_wan.core import expressions
from deforum_wan.core.expressions import (
    EXPRESSION_BUDGET,
    FUNCTIONS,
    MAX_EXPRESSION_CHARS,
    Expression,
    ScheduleError,
    check_expression,
    evaluate,
)
from deforum_wan.core.prompts import prompt_at
from deforum_wan.core.schedules import _parse_schedule_per_frame, evaluate_frame_key, parse_schedule
from deforum_wan.core.seeds import frame_seeds
from deforum_wan.core.settings import settings_from_dict

PACKAGE = Path(expressions.__file__).resolve().parent
SHARED = Path(__file__).resolve().parents[2] / "shared" / "deforum-settings"
FULLWIDTH_LOW_LINE = "\uff3f"  # "＿", which Python folds to "_" in identifiers


def bypass(target: Path, head: str = "t") -> str:
    """The issue's payload: a backslash-newline before each attribute slips past numexpr's dot rule,
    a fullwidth low line ending each dunder past its dunder rule; it would `touch` target."""
    f = FULLWIDTH_LOW_LINE
    return (
        f"{head}.\\\n__class_{f}.\\\n__init_{f}.\\\n__globals_{f}.\\\n"
        f"get('__builtins__').\\\nget('__import__')('os').\\\nsystem('touch {target}')"
    )


def test_the_payload_is_what_numexpr_alone_would_run(tmp_path: Path) -> None:
    """Guard for the regression tests below: the string really passes numexpr's own filter (here its
    `validate`, which compiles the text with Python's eval as evaluating does)."""
    import numexpr

    target = tmp_path / "numexpr-alone"
    if not hasattr(numexpr, "validate"):
        pytest.skip("this numexpr has no validate()")
    try:  # validate returns its error in some releases and raises it in others
        error = numexpr.validate(bypass(target), local_dict={"t": 1}, global_dict={})
    except ValueError as raised:
        error = raised
    if isinstance(error, ValueError) and "forbidden" in str(error):
        pytest.skip("this numexpr's own filter refuses the payload")
    assert target.exists()


def _by_parse_schedule(target: Path) -> None:
    parse_schedule(f"0:({bypass(target)})", 10, key="translation_x")


def _by_frame_key(target: Path) -> None:
    evaluate_frame_key(bypass(target, head="max_f"), 10, key="prompts")


def _by_backtick(target: Path) -> None:
    prompt_at(settings_from_dict({"prompts": {"0": f"a cat `{bypass(target)}`"}, "max_frames": 10}), 0)


def _by_seed_schedule(target: Path) -> None:
    s = settings_from_dict({"prompts": {"0": "a"}, "max_frames": 10, "seed": 5, "seed_behavior": "schedule",
                            "seed_schedule": f"0:({bypass(target)})"})
    frame_seeds(s)


def _by_inspect_cli(target: Path) -> None:
    data = json.loads((SHARED / "a1111-deforum-test-simple.txt").read_text())
    data["translation_x"] = f"0:({bypass(target)})"
    path = target.parent / "settings.txt"
    path.write_text(json.dumps(data))
    out = subprocess.run([sys.executable, "-m", "deforum_wan", "inspect", str(path)], capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    raise ScheduleError("translation_x", "", 0, out.stderr)  # hand the message to the shared checks


@pytest.mark.parametrize(
    "path, key",
    [
        (_by_parse_schedule, "translation_x"),
        (_by_frame_key, "prompts"),
        (_by_backtick, "prompts['0']"),
        (_by_seed_schedule, "seed_schedule"),
        (_by_inspect_cli, "translation_x"),
    ],
    ids=["parse_schedule", "frame-key", "backtick", "seed-schedule", "inspect-cli"],
)
def test_issue_bypass_is_refused_everywhere(path, key: str, tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    with pytest.raises(ScheduleError) as info:
        path(target)
    message = str(info.value)
    assert f"{key}: cannot evaluate" in message
    assert "attribute access is not allowed" in message
    assert not target.exists()


def balanced_sum(leaves: int) -> str:
    """A sum of `leaves` t's nested as a balanced tree: many parts, little depth."""
    if leaves == 1:
        return "t"
    return f"({balanced_sum(leaves // 2)}+{balanced_sum(leaves - leaves // 2)})"


# (id, expression, words in the reason)
REFUSED = [
    ("attribute", "t.real", "attribute access"),
    ("dunder-attribute", "t.__class__", "attribute access"),
    ("subscript", "t[0]", "indexing"),
    ("call-of-attribute", "t.conjugate()", "attribute access"),
    ("call-of-call", "(sin)(t)(1)", "only numexpr's functions"),
    ("call-of-constant", "(1)(2)", "only numexpr's functions"),
    ("builtin-import", "__import__('os')", "unknown function '__import__'"),
    ("builtin-eval", "eval('1')", "unknown function 'eval'"),
    ("getattr", "getattr(t, 'real')", "unknown function 'getattr'"),
    ("undocumented-helper", "ones_like(t)", "unknown function 'ones_like'"),
    ("text-function", "contains(t, t)", "unknown function 'contains'"),
    ("keyword-argument", "sum(t, axis=0)", "keyword arguments"),
    ("starred", "where(*t)", "starred"),
    ("string", "'abc'", "text is not allowed"),
    ("bytes", "b'abc'", "text is not allowed"),
    ("none", "None", "not a number"),
    ("ellipsis", "...", "not a number"),
    ("lambda", "(lambda: 1)", "lambda"),
    ("list-comprehension", "[t for t in t]", "comprehensions"),
    ("generator", "sum(x for x in t)", "comprehensions"),
    ("f-string", "f'{t}'", "f-strings"),
    ("walrus", "(x := t)", "assignment"),
    ("if-else", "1 if t else 0", "use where"),
    ("and", "t > 1 and t < 5", "use & | ~"),
    ("not", "not t", "use & | ~"),
    ("chained-comparison", "0 < t < 5", "chained comparison"),
    ("is", "t is 1", "comparisons"),
    ("in", "t in t", "comparisons"),
    ("matmul", "t @ t", "operator"),
    ("tuple", "1, 2", "tuples"),
    ("list", "[1, 2]", "lists"),
    ("dict", "{1: 2}", "dicts"),
    ("set", "{1, 2}", "sets"),
    ("unknown-name", "speed * t", "unknown name 'speed'"),
    ("function-not-called", "sin", "must be called"),
    ("wrong-arity", "arctan2(t)", "takes 2 arguments, got 1"),
    ("reduction-inside", "sum(t) + 1", "outermost"),
    ("nested-reduction", "sum(max(t))", "outermost"),
    ("reduction-of-constant", "sum(1)", "needs an expression"),
    ("huge-power", "9**9**9", "too large"),
    ("huge-power-inside", "t + 2**(2**200)", "too large"),
    ("huge-shift", "1 << 10**10", "too large"),
    ("huge-power-from-comparison", "9**((9 > 1) * 9**9)", "too large"),
    ("nul", "t\x00", "NUL"),
    ("too-long", "t" + "+t" * MAX_EXPRESSION_CHARS, f"longer than {MAX_EXPRESSION_CHARS}"),
    ("too-many-parts", balanced_sum(160), "more than 300 parts"),
    ("too-deep", "-" * 150 + "t", "nested more than"),
    ("too-deep-parens", "(" * 300 + "t" + ")" * 300, "nest"),
]


@pytest.mark.parametrize("text, reason", [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED])
def test_checker_refuses_with_key_piece_and_frame(text: str, reason: str) -> None:
    with pytest.raises(ScheduleError) as info:
        check_expression(text, ("t", "max_f", "s"), key="zoom", frame=12)
    error = info.value
    message = str(error)
    assert error.key == "zoom" and error.frame == 12 and error.piece == text
    assert message.startswith('zoom: cannot evaluate "') and " at frame 12: " in message
    assert "\n" not in message and len(message) < 300
    assert reason in message


def test_refusal_quotes_the_offending_piece() -> None:
    with pytest.raises(ScheduleError, match=r'attribute access is not allowed: "t.real"'):
        check_expression("1 + sin(t.real)", ("t",), key="angle")


def test_frame_keys_know_no_t() -> None:
    with pytest.raises(ScheduleError, match=r"unknown name 't' \(known names: max_f, s\)"):
        check_expression("t", ("max_f", "s"), key="prompts")


# every documented numeric function, evaluated against numpy
NUMPY = {
    "where": lambda a: np.where(a > 3, a, -a), "isinf": np.isinf, "isnan": np.isnan, "isfinite": np.isfinite,
    "signbit": np.signbit, "arctan2": lambda a: np.arctan2(a, 3.0), "hypot": lambda a: np.hypot(a, 3.0),
    "nextafter": lambda a: np.nextafter(a, 3.0), "copysign": lambda a: np.copysign(a, -1.0),
    "maximum": lambda a: np.maximum(a, 3.0), "minimum": lambda a: np.minimum(a, 3.0),
    "arccosh": lambda a: np.arccosh(a + 1), "arcsin": lambda a: np.arcsin(a / 10),
    "arccos": lambda a: np.arccos(a / 10), "arctanh": lambda a: np.arctanh(a / 10),
    "log": lambda a: np.log(a + 1), "log10": lambda a: np.log10(a + 1), "log2": lambda a: np.log2(a + 1),
    "round": np.rint, "complex": None, "conj": None, "real": None, "imag": None,
}
CALLS = {
    "where": "where(t > 3, t, -t)", "arctan2": "arctan2(t, 3.0)", "hypot": "hypot(t, 3.0)",
    "nextafter": "nextafter(t, 3.0)", "copysign": "copysign(t, -1.0)", "maximum": "maximum(t, 3.0)",
    "minimum": "minimum(t, 3.0)", "arccosh": "arccosh(t + 1)", "arcsin": "arcsin(t / 10)",
    "arccos": "arccos(t / 10)", "arctanh": "arctanh(t / 10)", "log": "log(t + 1)", "log10": "log10(t + 1)",
    "log2": "log2(t + 1)", "complex": "real(complex(t, 2.0))", "conj": "real(conj(complex(t, 2.0)))",
    "real": "real(complex(t, 2.0))", "imag": "imag(complex(2.0, t))",
}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_every_documented_function_evaluates(name: str) -> None:
    frames = np.arange(8, dtype=np.float64)
    text = CALLS.get(name, f"{name}(t * 1.0)")
    values = parse_schedule(f"0:({text})", 8, key="angle")
    reference = NUMPY.get(name) or getattr(np, name, None)
    expected = frames if name in ("complex", "conj", "real") else frames if name == "imag" else reference(frames)
    np.testing.assert_allclose(values, np.asarray(expected, dtype=np.float64), rtol=1e-12)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("t // 2", [0, 0, 1, 1, 2]),
        ("(t > 1) & (t < 4)", [0, 0, 1, 1, 0]),
        ("(t < 1) | (t > 3)", [1, 0, 0, 0, 1]),
        ("~(t > 2)", [1, 1, 1, 0, 0]),
        ("t ^ 1", [1, 0, 3, 2, 5]),
        ("t << 2", [0, 4, 8, 12, 16]),
        ("t >> 1", [0, 0, 1, 1, 2]),
        ("t == 2", [0, 0, 1, 0, 0]),
        ("t != 2", [1, 1, 0, 1, 1]),
        ("+t", [0, 1, 2, 3, 4]),
        ("where(True, t, 0)", [0, 1, 2, 3, 4]),
        ("2**-1 + t", [0.5, 1.5, 2.5, 3.5, 4.5]),
        ("ｓｉｎ(ｔ)", np.sin(np.arange(5))),  # fullwidth letters are normalised, then evaluated
    ],
)
def test_operators_numexpr_documents_still_work(text: str, expected) -> None:
    values = parse_schedule(f"0:({text})", 5, key="angle")
    np.testing.assert_allclose(values, np.asarray(expected, dtype=np.float64), rtol=1e-12)


def test_only_one_module_calls_numexpr() -> None:
    callers = sorted(
        path.name for path in PACKAGE.glob("*.py")
        if re.search(r"numexpr\.evaluate|ne\.evaluate|import numexpr|from numexpr", path.read_text(encoding="utf-8"))
    )
    assert callers == ["expressions.py"]


def test_evaluate_rechecks_a_forged_expression(tmp_path: Path) -> None:
    target = tmp_path / "forged"
    forged = Expression(source=bypass(target), names=frozenset({"t"}), text=bypass(target), reduction=None,
                        argument=None, nodes=1)
    with pytest.raises(ScheduleError, match="attribute access"):
        evaluate(forged, {"t": 1}, key="zoom", frame=0)
    assert not target.exists()


def test_evaluate_binds_only_the_checked_names() -> None:
    checked = check_expression("max_f + 1", ("max_f", "s"), key="prompts")
    with pytest.raises(ScheduleError, match="unexpected names"):
        evaluate(checked, {"max_f": 1, "t": 2}, key="prompts", frame=None)


def test_checker_names_must_be_deforum_names() -> None:
    with pytest.raises(ValueError, match="names must be among"):
        check_expression("os", ("os",), key="zoom")


# --------------------------------------------------------------------------
# reductions: vectorised, yet exactly Deforum's per-frame values


@pytest.mark.parametrize(
    "text",
    ["0:(sum(t))", "0:(prod(t*1.5))", "0:(min(sin(t)))", "0:(max(t/max_f))", "0:(sum(-t*0.0))",
     "0:(prod(-t*0.0))", "0:(0), 3:(sum(s+t)), 6:(1)", "0:(sum(where(t>2, 1.0, -1.0)))"],
)
def test_reductions_match_per_frame_bit_for_bit(text: str) -> None:
    values = parse_schedule(text, 9, 7, key="zoom")
    reference = _parse_schedule_per_frame(text, 9, 7, key="zoom")
    np.testing.assert_array_equal(values, reference)
    np.testing.assert_array_equal(np.signbit(values), np.signbit(reference))


@pytest.mark.parametrize("text", ["0:(sum(t>2))", "0:(min(t>2))", "0:(sum(t/0.0))"])
def test_reduction_errors_match_per_frame(text: str) -> None:
    with pytest.raises(ScheduleError) as vectorised:
        parse_schedule(text, 6, key="zoom")
    with pytest.raises(ScheduleError) as per_frame:
        _parse_schedule_per_frame(text, 6, key="zoom")
    assert str(vectorised.value) == str(per_frame.value)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    inner=st.sampled_from(["t", "t*1.5", "sin(t/7)", "t-max_f", "s%7+t", "-t*0.0", "where(t>5, t, 0.5)",
                           "t**2/100", "sqrt(t)", "1/(t+1)"]),
    reduction=st.sampled_from(["sum", "prod", "min", "max"]),
    start=st.integers(0, 30),
    max_frames=st.integers(1, 60),
)
def test_reductions_property(inner: str, reduction: str, start: int, max_frames: int) -> None:
    text = f"0:(0), {start}:({reduction}({inner})), {start + 7}:(1)"
    np.testing.assert_array_equal(
        parse_schedule(text, max_frames, 3, key="zoom"), _parse_schedule_per_frame(text, max_frames, 3, key="zoom")
    )


# --------------------------------------------------------------------------
# cost


def test_distinct_expressions_share_one_budget() -> None:
    many = ", ".join(f"{i}:(sin(t/{i + 1}) * {i} + cos(t/{i + 2}))" for i in range(EXPRESSION_BUDGET // 10))
    with pytest.raises(ScheduleError) as info:
        parse_schedule(many, 200, key="translation_z")
    assert info.value.key == "translation_z" and info.value.frame is not None
    assert f"more than {EXPRESSION_BUDGET} parts in total" in str(info.value)
    # the same expression on every keyframe is compiled once and costs once
    same = ", ".join(f"{i}:(sin(t/3) * 2 + cos(t/5))" for i in range(500))
    assert parse_schedule(same, 1000, key="translation_z").shape == (1000,)


def test_prompt_expressions_share_one_budget() -> None:
    prompts = {str(i): " ".join(f"`t*{i}+{j}`" for j in range(40)) for i in range(40)}
    with pytest.raises(ScheduleError, match=r"prompts\['\d+'\]: cannot evaluate .* parts in total"):
        prompt_at(settings_from_dict({"prompts": prompts, "max_frames": 100}), 0)


def test_sum_over_ten_thousand_frames_is_one_vectorised_call() -> None:
    """A schedule the issue measured at 16.5 s frame by frame: values must stay those of Deforum's loop."""
    text = "0:(sum(sin(t/10)*2)), 5000:(max(t/100))"
    values = parse_schedule(text, 10_000, key="angle")
    np.testing.assert_allclose(values[:5000], np.sin(np.arange(5000) / 10) * 2, rtol=1e-12)
    np.testing.assert_allclose(values[5000:], np.arange(5000, 10_000) / 100, rtol=1e-12)
