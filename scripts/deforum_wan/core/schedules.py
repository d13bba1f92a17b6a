"""Deforum keyframe schedules, evaluated for a whole animation at once.

Deforum settings carry schedules such as ``0: (1.0025+0.002*sin(1.25*3.14*t/30))``
or ``0:(0), 30:(10), "max_f-1":(0)``.  Renders must behave exactly as they did in
Deforum, so this module reproduces Deforum's semantics value for value:

* a schedule is ``frame:(value)`` pairs separated by commas;
* a frame key is a whole number, or a numexpr expression of ``max_f``
  (``max_frames - 1``) and ``s`` (the seed), optionally quoted
  (``"max_f-1":(5)``); expression keys are truncated to an int as Deforum's
  ``int()`` does (``max_f/2`` with ``max_f=99`` is frame 49);
* a value is a *plain number* when nothing but the number is left after
  removing every quote and parenthesis (``(0.5)``, ``("0.5")``, ``-(1)``);
  plain numbers are linearly interpolated between keys.  Spaces or an
  exponent disqualify: ``( 1 )`` and ``(1e-3)`` are expressions, so Deforum
  (and this module) holds them until the next key instead of interpolating;
* any other value is a numexpr expression of ``t`` (the frame), ``max_f`` and
  ``s``; it is evaluated on every frame from its key until the next key and is
  *not* interpolated;
* before the first key and after the last, the value is held;
* keys at or beyond ``max_frames`` are ignored (so shortening an animation
  keeps old settings working), and so are expression keys that come out
  negative (``"max_f-2"`` when ``max_frames`` is 1);
* when a frame is keyed twice, the later key wins.

Deliberate differences, all where Deforum fails or gives nonsense:

* commas inside parentheses do not split keys (``0:(where(t>30, 1, 0))``);
* a schedule without a frame-0 key holds its first value (Deforum crashes);
* a trailing comma is ignored (Deforum crashes);
* frame keys may be written ``10.0``; ``10.5``, negative literal keys and keys
  above :data:`MAX_FRAME_KEY` are errors rather than silently dropped;
* a NaN or infinite value at any frame is an error (Deforum would silently
  interpolate over a NaN and pass an inf to the renderer);
* numexpr reductions (``sum``, ``prod``, ``min``, ``max``) keep Deforum's
  per-frame meaning: over one frame's ``t`` a reduction is its argument's
  value, so the argument is evaluated for all frames at once (and the whole
  expression once, at the key, for numexpr's own type checks);
* every expression (values and frame keys) passes the allow-list checker in
  :mod:`.expressions` before numexpr sees it, and the distinct expressions of
  one schedule may hold at most :data:`.expressions.EXPRESSION_BUDGET` syntax
  nodes in total, which bounds numexpr's compile time;
* string schedules take a value containing only digits as a string too
  (Deforum silently ignores such a key after frame 0 and crashes on one at
  frame 0), and surrounding whitespace is trimmed from string values.

Everything else is evaluated with one numexpr call per keyframe over an array
of frame indices, which is what makes 10,000-frame schedules cheap.  All
failures are raised as :class:`ScheduleError`, a one-line ``ValueError`` that
names the schedule, the offending text and the frame.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from .expressions import Expression, ExpressionBudget, ScheduleError, evaluate

__all__ = [
    "MAX_FRAME_KEY",
    "STRING_SCHEDULE_KEYS",
    "ScheduleError",
    "evaluate_expression",
    "evaluate_frame_key",
    "parse_schedule",
    "parse_string_schedule",
]

#: Largest frame number accepted as a key or as ``max_frames``. Anything above
#: is almost certainly a typo (or an expression gone wrong), and allocating
#: arrays for it would only fail later and less clearly.
MAX_FRAME_KEY = 10_000_000

#: Deforum schedules whose values are text (sampler names, checkpoints, masks)
#: rather than numbers; use :func:`parse_string_schedule` for these.
STRING_SCHEDULE_KEYS = frozenset(
    {
        "sampler_schedule",
        "scheduler_schedule",
        "checkpoint_schedule",
        "mask_schedule",
        "noise_mask_schedule",
    }
)

# What Deforum accepts as a plain number once quotes and parentheses are gone:
# an optional sign, digits, an optional fraction; no exponent. ``re.match``
# with ``$`` (not fullmatch) because Deforum's check tolerates one trailing
# newline the same way.
_PLAIN_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)$")
_QUOTES_AND_PARENS = str.maketrans("", "", "'\"()")
_QUOTES = str.maketrans("", "", "'\"")
_VALUE_NAMES = ("t", "max_f", "s")
_KEY_NAMES = ("max_f", "s")


@dataclass(frozen=True)
class _Keyframe:
    frame: int
    value: str  # the value text, stripped
    number: float | None  # set when the value is a plain number
    piece: str  # the whole "frame:(value)" text, for error messages
    expression: Expression | None = None  # the checked value, when it is evaluated


# --------------------------------------------------------------------------
# Checked evaluation


def _scalar(result: np.ndarray, expr: str, *, key: str, frame: int | None) -> float:
    if result.size != 1:
        raise ScheduleError(key, expr, frame, "result is not a single number")
    value = float(result.reshape(()))
    if not math.isfinite(value):
        raise ScheduleError(key, expr, frame, f"result is {value}")
    return value


# --------------------------------------------------------------------------
# Splitting a schedule into keyframes


def _is_plain_number(text: str) -> bool:
    return _PLAIN_NUMBER.match(text) is not None


def _split_pieces(text: str) -> Iterator[str]:
    """Yield the comma-separated pieces of a schedule, keeping commas that sit
    inside parentheses (``where(t>30, 1, 0)``) in their piece."""
    depth = 0
    start = 0
    for index, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            yield text[start:index]
            start = index + 1
    yield text[start:]


def _paren_problem(text: str) -> str | None:
    depth = 0
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                return "unbalanced parentheses (a ')' has no matching '(')"
    if depth:
        return "unbalanced parentheses (a '(' is never closed)"
    return None


def _check_max_frames(max_frames: Any, key: str) -> int:
    if (
        isinstance(max_frames, bool)
        or not isinstance(max_frames, numbers.Integral)
        or not 1 <= int(max_frames) <= MAX_FRAME_KEY
    ):
        raise ScheduleError(
            key,
            str(max_frames),
            None,
            f"max_frames must be a whole number from 1 to {MAX_FRAME_KEY}",
        )
    return int(max_frames)


def _check_seed(seed: Any, key: str) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ScheduleError(key, repr(seed), None, "seed must be a whole number")
    return int(seed)


def _check_text(text: Any, key: str) -> str:
    if not isinstance(text, str):
        raise ScheduleError(
            key,
            repr(text),
            None,
            f'expected a schedule string such as "0: (1.0)", got {type(text).__name__}',
        )
    if not text.strip():
        raise ScheduleError(key, text, None, "the schedule is empty")
    return text


def _frame_of_key(
    key_text: str, max_frames: int, seed: int, key: str, budget: ExpressionBudget
) -> int:
    """Turn a frame key into an int; expression keys may come out negative."""
    stripped = key_text.strip()
    if not stripped:
        raise ScheduleError(key, key_text, None, "missing frame number before ':'")
    plain = stripped.translate(_QUOTES_AND_PARENS).strip()
    if _is_plain_number(plain):
        number = float(plain)
        if not number.is_integer():
            raise ScheduleError(key, stripped, None, "frame must be a whole number")
        if number < 0:
            raise ScheduleError(key, stripped, None, "frame must not be negative")
        if number > MAX_FRAME_KEY:
            raise ScheduleError(
                key, stripped, None, f"frame is larger than {MAX_FRAME_KEY}"
            )
        return int(number)
    expr = stripped.translate(_QUOTES)
    paren_problem = _paren_problem(expr)
    if paren_problem:
        raise ScheduleError(key, stripped, None, paren_problem)
    expression = budget.check(expr, _KEY_NAMES, key=key, frame=None, piece=stripped)
    result = evaluate(expression, {"max_f": max_frames - 1, "s": seed}, key=key, frame=None, piece=stripped)
    value = _scalar(result, stripped, key=key, frame=None)
    if abs(value) > MAX_FRAME_KEY:
        raise ScheduleError(
            key, stripped, None, f"frame {value:g} is beyond {MAX_FRAME_KEY}"
        )
    return int(value)  # truncation toward zero, as Deforum's int()


def _parse_keyframes(
    text: Any, max_frames: int, seed: int, key: str, *, numeric: bool
) -> list[_Keyframe]:
    """The keyframes inside ``range(max_frames)``, sorted, later duplicates
    winning."""
    text = _check_text(text, key)
    pieces = list(_split_pieces(text))
    if len(pieces) > 1 and not pieces[-1].strip():
        pieces.pop()  # one trailing comma is harmless
    keyframes: dict[int, _Keyframe] = {}
    budget = ExpressionBudget()
    for raw in pieces:
        piece = raw.strip()
        if not piece:
            raise ScheduleError(key, text, None, "empty keyframe between two commas")
        key_text, colon, value = piece.partition(":")
        if not colon:
            raise ScheduleError(
                key, piece, None, "missing ':' between frame and value"
            )
        frame = _frame_of_key(key_text, max_frames, seed, key, budget)
        value = value.strip()
        if not value:
            raise ScheduleError(key, piece, frame, "missing value after ':'")
        paren_problem = _paren_problem(value)
        if paren_problem:
            raise ScheduleError(key, value, frame, paren_problem)
        number: float | None = None
        expression: Expression | None = None
        if numeric:
            plain = value.translate(_QUOTES_AND_PARENS)
            if _is_plain_number(plain):
                number = float(plain)
                if not math.isfinite(number):
                    raise ScheduleError(key, value, frame, "number is too large")
            elif 0 <= frame < max_frames:
                expression = budget.check(value, _VALUE_NAMES, key=key, frame=frame)
        if 0 <= frame < max_frames:
            keyframes[frame] = _Keyframe(frame, value, number, piece, expression)
    if not keyframes:
        raise ScheduleError(
            key,
            text,
            None,
            f"no keyframe inside frames 0-{max_frames - 1} (max_frames={max_frames})",
        )
    return [keyframes[frame] for frame in sorted(keyframes)]


# --------------------------------------------------------------------------
# Numeric schedules


def _constant_schedule(value: Any, max_frames: int, key: str) -> np.ndarray:
    number = float(value)
    if not math.isfinite(number):
        raise ScheduleError(key, repr(value), None, f"value is {number}")
    return np.full(max_frames, number, dtype=np.float64)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _evaluate_span(
    keyframe: _Keyframe, stop: int, max_frames: int, seed: int, key: str
) -> np.ndarray:
    """Evaluate an expression key on frames ``keyframe.frame .. stop-1``."""
    start = keyframe.frame
    expression = keyframe.expression
    assert expression is not None
    names = {
        "t": np.arange(start, stop, dtype=np.int64),
        "max_f": max_frames - 1,
        "s": seed,
    }
    if expression.reduction:
        # Deforum evaluates frame by frame, where t is one number and a
        # reduction of it is its argument's value (numexpr's sum adds it to
        # 0, which turns -0.0 into 0.0). Evaluating the whole expression at
        # the key keeps numexpr's own refusals (a sum of booleans, say).
        _evaluate_at(keyframe, start, max_frames, seed, key)
        result = evaluate(expression, names, key=key, frame=start, piece=keyframe.value, argument=True)
        if expression.reduction == "sum":
            result = result + 0
    else:
        result = evaluate(expression, names, key=key, frame=start, piece=keyframe.value)
    if result.ndim == 0:
        return np.full(stop - start, float(result), dtype=np.float64)
    if result.shape != (stop - start,):
        raise ScheduleError(key, keyframe.value, start, "result is not one number per frame")
    return result.astype(np.float64, copy=False)


def _evaluate_at(keyframe: _Keyframe, frame: int, max_frames: int, seed: int, key: str) -> float:
    assert keyframe.expression is not None
    names = {"t": frame, "max_f": max_frames - 1, "s": seed}
    result = evaluate(keyframe.expression, names, key=key, frame=frame, piece=keyframe.value)
    if result.size != 1:
        raise ScheduleError(key, keyframe.value, frame, "result is not a single number")
    return float(result.reshape(()))


def _value_at(keyframes: list[_Keyframe], frame: int) -> str:
    current = keyframes[0]
    for keyframe in keyframes:
        if keyframe.frame > frame:
            break
        current = keyframe
    return current.value


_MANY_GAPS = 64


def _fill_gaps(values: np.ndarray) -> np.ndarray:
    """Hold the ends and interpolate the rest, as Deforum does with pandas:
    frame 0 takes the first known value, the last frame the last known one,
    and every unknown frame in between is linear between its neighbours.

    pandas' linear interpolation is ``numpy.interp`` over the known points;
    interpolating each gap from its two ends gives the very same numbers
    (``interp`` only ever looks at the two points around a frame), and lets a
    gap between equal values skip ``interp`` altogether.
    """
    known = ~np.isnan(values)
    positions = np.flatnonzero(known)
    values[0] = values[positions[0]]
    values[-1] = values[positions[-1]]
    known[0] = known[-1] = True
    positions = np.flatnonzero(known)
    starts = positions[:-1][np.diff(positions) > 1]
    if starts.size == 0:
        return values
    if starts.size > _MANY_GAPS:
        missing = np.flatnonzero(~known)
        values[missing] = np.interp(missing, positions, values[positions])
        return values
    stops = positions[np.searchsorted(positions, starts) + 1]
    for start, stop in zip(starts.tolist(), stops.tolist()):
        left, right = values[start], values[stop]
        if left == right:
            # interp computes 0.0 * (x - start) + left here; "+ 0.0" keeps
            # its one visible effect, turning -0.0 into 0.0
            values[start + 1 : stop] = left + 0.0
        else:
            frames = np.arange(start + 1, stop, dtype=np.float64)
            values[start + 1 : stop] = np.interp(frames, [start, stop], [left, right])
    return values


def _assemble(
    keyframes: list[_Keyframe],
    max_frames: int,
    key: str,
    evaluate_span: Any,
) -> np.ndarray:
    values = np.full(max_frames, np.nan, dtype=np.float64)
    expression_frames = np.zeros(max_frames, dtype=bool)
    for index, keyframe in enumerate(keyframes):
        if keyframe.number is not None:
            values[keyframe.frame] = keyframe.number
            continue
        stop = keyframes[index + 1].frame if index + 1 < len(keyframes) else max_frames
        span = evaluate_span(keyframe, stop)
        values[keyframe.frame : stop] = span
        expression_frames[keyframe.frame : stop] = True
    bad = expression_frames & ~np.isfinite(values)
    if bad.any():
        frame = int(np.flatnonzero(bad)[0])
        raise ScheduleError(
            key, _value_at(keyframes, frame), frame, f"result is {values[frame]}"
        )
    return _fill_gaps(values)


def parse_schedule(
    text: str | float, max_frames: int, seed: int = -1, *, key: str = "schedule"
) -> np.ndarray:
    """Evaluate a Deforum numeric schedule for frames ``0 .. max_frames-1``.

    Returns a float64 array of length ``max_frames`` equal to what Deforum's
    FrameInterpolater produces, with each expression keyframe evaluated in a
    single vectorised numexpr call. A plain int or float (as API callers
    sometimes send instead of ``"0:(x)"``) is taken as a constant schedule;
    lists, dicts, None and other types are rejected. ``key`` is the settings
    name used in error messages. Raises :class:`ScheduleError`.
    """
    max_frames = _check_max_frames(max_frames, key)
    seed = _check_seed(seed, key)
    if _is_number(text):
        return _constant_schedule(text, max_frames, key)
    plain = _plain_schedule(text, max_frames)
    if plain is not None:
        return plain
    keyframes = _parse_keyframes(text, max_frames, seed, key, numeric=True)
    return _assemble(
        keyframes,
        max_frames,
        key,
        lambda keyframe, stop: _evaluate_span(keyframe, stop, max_frames, seed, key),
    )


_PLAIN_PIECE = r"\s*([0-9]+)\s*:\s*\(([+-]?(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+))\)\s*"
_PLAIN_PIECES = re.compile(_PLAIN_PIECE)
_PLAIN_TEXT = re.compile(f"(?:{_PLAIN_PIECE},)*{_PLAIN_PIECE},?\\s*")


def _plain_schedule(text: Any, max_frames: int) -> np.ndarray | None:
    """The fast path for ``0:(1.5), 1:(2), ...`` (whole frames, plain numbers, as a Parseq manifest's
    per-frame schedules are): two regular-expression passes instead of a loop over pieces. Gives what
    the general path gives; anything else (and every error) is left to it (None)."""
    if not isinstance(text, str) or _PLAIN_TEXT.fullmatch(text) is None:
        return None
    values = np.full(max_frames, np.nan, dtype=np.float64)
    keyed = {}
    for frame, number in _PLAIN_PIECES.findall(text):
        keyed[int(frame)] = float(number)  # a later key for the same frame wins
    if max(keyed) > MAX_FRAME_KEY or not all(map(math.isfinite, keyed.values())):
        return None
    inside = {f: v for f, v in keyed.items() if f < max_frames}
    if not inside:
        return None
    values[list(inside)] = list(inside.values())
    return _fill_gaps(values)


def _parse_schedule_per_frame(
    text: str | float, max_frames: int, seed: int = -1, *, key: str = "schedule"
) -> np.ndarray:
    """Reference path: evaluate expressions one frame at a time, as Deforum's
    loop does. Kept for the benchmark and to check the vectorised path."""
    max_frames = _check_max_frames(max_frames, key)
    seed = _check_seed(seed, key)
    if _is_number(text):
        return _constant_schedule(text, max_frames, key)
    keyframes = _parse_keyframes(text, max_frames, seed, key, numeric=True)

    def per_frame(keyframe: _Keyframe, stop: int) -> np.ndarray:
        return np.array(
            [
                _evaluate_at(keyframe, frame, max_frames, seed, key)
                for frame in range(keyframe.frame, stop)
            ],
            dtype=np.float64,
        )

    return _assemble(keyframes, max_frames, key, per_frame)


# --------------------------------------------------------------------------
# String schedules and single values


def parse_string_schedule(
    text: str, max_frames: int, *, key: str = "schedule"
) -> tuple[str, ...]:
    """Evaluate a text schedule (sampler, scheduler, checkpoint, mask) per frame.

    Each keyframe's value has its quotes and parentheses removed, as Deforum
    does (so ``0: ("Euler a")`` gives ``Euler a``; note that a mask expression
    like ``!({a}^{b})`` loses its parentheses too), then surrounding
    whitespace trimmed. The last value is held until the next key and the
    first is held before it. Frame keys follow :func:`parse_schedule`.
    """
    max_frames = _check_max_frames(max_frames, key)
    keyframes = _parse_keyframes(text, max_frames, -1, key, numeric=False)
    values = [kf.value.translate(_QUOTES_AND_PARENS).strip() for kf in keyframes]
    frames = [kf.frame for kf in keyframes]
    # index of the keyframe in force at every frame (the first one before it)
    which = np.searchsorted(frames, np.arange(max_frames), side="right") - 1
    which[which < 0] = 0
    return tuple(values[i] for i in which.tolist())


def evaluate_frame_key(
    text: str | int,
    max_frames: int,
    seed: int = -1,
    *,
    key: str = "schedule",
    budget: ExpressionBudget | None = None,
) -> int:
    """Turn a keyframe key (``10``, ``"max_f-1"``, ``'max_f/2'``) into a frame.

    Shared by schedules and prompts so both read keys the same way. Literal
    keys must be whole, non-negative and at most :data:`MAX_FRAME_KEY`.
    Expression keys (of ``max_f`` = max_frames-1 and ``s`` = seed) are
    truncated toward zero like Deforum's ``int()``, and may come out negative
    when max_frames is small; callers drop those, like keys past the end.
    Pass one ``budget`` for all the keys of one dict to bound their cost.
    """
    max_frames = _check_max_frames(max_frames, key)
    if isinstance(text, numbers.Integral) and not isinstance(text, (bool, np.bool_)):
        text = str(int(text))
    if not isinstance(text, str):
        raise ScheduleError(
            key, repr(text), None, f"expected a frame number, got {type(text).__name__}"
        )
    return _frame_of_key(text, max_frames, _check_seed(seed, key), key, budget or ExpressionBudget())


def evaluate_expression(
    expr: str,
    frame: int,
    max_frames: int,
    seed: int = -1,
    *,
    key: str,
    budget: ExpressionBudget | None = None,
) -> float:
    """Evaluate one numexpr expression of ``t``, ``max_f`` and ``s`` at a frame.

    Used for backtick expressions inside prompts, so they understand the same
    names and functions as schedules. Raises :class:`ScheduleError` naming
    ``key`` and ``frame`` for bad syntax, unknown names, anything the
    checker refuses and NaN/inf results. Pass one ``budget`` for all the
    expressions of one text to bound their cost.
    """
    max_frames = _check_max_frames(max_frames, key)
    if not isinstance(expr, str):
        raise ScheduleError(
            key, repr(expr), frame, f"expected an expression string, got {type(expr).__name__}"
        )
    if isinstance(frame, bool) or not isinstance(frame, numbers.Integral) or frame < 0:
        raise ScheduleError(key, expr, None, f"frame must be a whole number >= 0, got {frame!r}")
    frame = int(frame)
    if not expr.strip():
        raise ScheduleError(key, expr, frame, "empty expression")
    paren_problem = _paren_problem(expr)
    if paren_problem:
        raise ScheduleError(key, expr, frame, paren_problem)
    names = {"t": frame, "max_f": max_frames - 1, "s": _check_seed(seed, key)}
    expression = (budget or ExpressionBudget()).check(expr, _VALUE_NAMES, key=key, frame=frame)
    return _scalar(evaluate(expression, names, key=key, frame=frame), expr, key=key, frame=frame)
