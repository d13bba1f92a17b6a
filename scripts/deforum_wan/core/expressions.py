"""The one gate between user text and numexpr: check an expression, then evaluate it.

Schedules, frame keys, backtick expressions in prompts and seed schedules all
come from settings files and API requests, so they are untrusted. numexpr
compiles its input with Python's ``compile`` and ``eval``, and its own filter
(a regular expression) can be bypassed: a backslash-newline before an attribute
name slips past its dot rule, and a fullwidth ``＿`` in a dunder slips past its
dunder rule because Python folds it to ``_``. So nothing reaches numexpr that
this module has not checked:

* the text is normalised with Unicode NFKC first (what Python does to
  identifiers), and the *normalised* text is what is checked and evaluated;
* it is parsed with :mod:`ast` in ``eval`` mode and every node is checked
  against an allow-list: numbers (int, float, complex, True/False), the names
  the caller allows (``t``, ``max_f``, ``s``), the functions numexpr documents
  called by plain name with positional arguments, its reductions
  ``sum/prod/min/max`` as the whole expression, and the operators numexpr
  documents (``+ - * / // % **``, ``<< >> & | ^ ~``, one comparison);
* attributes, subscripts, calls of anything else, keyword arguments, text,
  lambdas, comprehensions, ``and/or/not``, if/else, f-strings, ``:=`` and the
  like are refused with a :class:`ScheduleError` naming the key, the piece and
  the frame;
* whole numbers that Python itself would compute before numexpr sees them
  (``9**9**9``, ``1 << 10**10``) are bounded, since numexpr hands pure-constant
  arithmetic to Python;
* length, node count and nesting depth are capped, so checking and numexpr's
  compilation (about 0.2 ms per node) stay cheap.

:func:`evaluate` is the only place in the package that calls
``numexpr.evaluate``; it re-checks (from a cache) the text it is given, so an
unchecked string cannot get through it either.
"""

from __future__ import annotations

import ast
import math
import unicodedata
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Mapping

import numexpr
import numpy as np

__all__ = [
    "EXPRESSION_BUDGET",
    "FUNCTIONS",
    "MAX_EXPRESSION_CHARS",
    "MAX_EXPRESSION_DEPTH",
    "MAX_EXPRESSION_NODES",
    "REDUCTIONS",
    "Expression",
    "ExpressionBudget",
    "ScheduleError",
    "check_expression",
    "evaluate",
]

#: Longest expression accepted, in characters after normalisation. Deforum's
#: own expressions are under 100 characters.
MAX_EXPRESSION_CHARS = 1000
#: Most syntax nodes (numbers, names, operations, calls) in one expression.
MAX_EXPRESSION_NODES = 300
#: Deepest nesting of operations; a long flat sum ``a+b+c+...`` nests one
#: level per term.
MAX_EXPRESSION_DEPTH = 100
#: Most nodes over the distinct expressions of one schedule (or of one
#: settings file's prompts): numexpr compiles each distinct expression in
#: Python at about 0.2 ms per node, so this bounds that cost near 0.2 s.
EXPRESSION_BUDGET = 1000

# The numeric functions numexpr documents (user guide and release notes:
# floor/ceil since 2.6.3, the two-argument ones and trunc/round/sign since
# 2.13), with their argument counts. ``contains`` works on text and is left
# out; so are the undocumented helpers ``copy``, ``ones_like`` and ``fmod``.
# A function missing from the installed numexpr is refused as unknown.
_DOCUMENTED_FUNCTIONS = {
    "where": 3,
    **dict.fromkeys(("isinf", "isnan", "isfinite", "signbit"), 1),
    **dict.fromkeys(("sin", "cos", "tan", "arcsin", "arccos", "arctan"), 1),
    **dict.fromkeys(("sinh", "cosh", "tanh", "arcsinh", "arccosh", "arctanh"), 1),
    **dict.fromkeys(("arctan2", "hypot", "nextafter", "copysign", "maximum", "minimum"), 2),
    **dict.fromkeys(("log", "log10", "log1p", "log2", "exp", "expm1", "sqrt"), 1),
    **dict.fromkeys(("trunc", "round", "sign", "abs", "floor", "ceil"), 1),
    **dict.fromkeys(("conj", "real", "imag"), 1),
    "complex": 2,
}
FUNCTIONS: Mapping[str, int] = {
    name: arity for name, arity in _DOCUMENTED_FUNCTIONS.items() if name in numexpr.expressions.functions
}
#: numexpr's reductions. Over one frame's scalar ``t`` (Deforum's per-frame
#: evaluation) each is its argument's value; numexpr accepts them only as the
#: outermost operation.
REDUCTIONS = frozenset({"sum", "prod", "min", "max"})

_BINARY_OPERATORS = (
    ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow,
    ast.LShift, ast.RShift, ast.BitAnd, ast.BitOr, ast.BitXor,
)
_UNARY_OPERATORS = (ast.USub, ast.UAdd, ast.Invert)
_COMPARISONS = (ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq)
_NUMBER_TYPES = (int, float, complex, bool)
# The names Deforum defines: the frame, the last frame index and the seed.
_NAME_ORDER = ("t", "max_f", "s")
_DEFORUM_NAMES = frozenset(_NAME_ORDER)
# Pure-constant whole-number results Python may compute before numexpr: numexpr
# itself only holds 64-bit integers, so anything far beyond is refused.
_MAX_CONSTANT_BITS = 128
_MESSAGE_PIECE_LIMIT = 80
_FRAGMENT_LIMIT = 40

_REFUSED = {
    ast.Attribute: "attribute access is not allowed",
    ast.Subscript: "indexing with [] is not allowed",
    ast.Slice: "slices are not allowed",
    ast.Lambda: "lambda is not allowed",
    ast.ListComp: "comprehensions are not allowed",
    ast.SetComp: "comprehensions are not allowed",
    ast.DictComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.Starred: "starred arguments are not allowed",
    ast.JoinedStr: "f-strings are not allowed",
    ast.FormattedValue: "f-strings are not allowed",
    ast.NamedExpr: "assignment (:=) is not allowed",
    ast.IfExp: "if/else is not allowed (use where(condition, a, b))",
    ast.BoolOp: "use & | ~ instead of and / or / not",
    ast.List: "lists are not allowed",
    ast.Tuple: "tuples are not allowed (is a comma misplaced?)",
    ast.Set: "sets are not allowed",
    ast.Dict: "dicts are not allowed",
    ast.Await: "await is not allowed",
    ast.Yield: "yield is not allowed",
    ast.YieldFrom: "yield is not allowed",
}

# Python's compiler warns about things like "(1)(2)" or "\d" before numexpr
# fails on them; the ScheduleError says all that is needed. Both ast.parse here
# and numexpr compile under the file name "<expr>", so only those warnings are
# silenced (a catch_warnings block per call is not thread-safe).
warnings.filterwarnings("ignore", category=SyntaxWarning, module="<expr>")
warnings.filterwarnings("ignore", category=DeprecationWarning, module="<expr>")


class ScheduleError(ValueError):
    """An expression or schedule that cannot be evaluated, reported on one line.

    ``key`` is the settings name, ``piece`` the offending text, ``frame`` the
    frame it concerns (None when the problem is not tied to one) and ``reason``
    the plain explanation. Users see ``str()`` of this error, so it never
    carries a traceback or a newline.
    """

    def __init__(self, key: str, piece: str, frame: int | None, reason: str) -> None:
        self.key = key
        self.piece = piece
        self.frame = frame
        self.reason = _one_line(reason)
        where = f" at frame {frame}" if frame is not None else ""
        super().__init__(f'{key}: cannot evaluate "{shorten(piece)}"{where}: {self.reason}')

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep the error picklable (multiprocessing, caches) despite the
        # custom constructor.
        return (type(self), (self.key, self.piece, self.frame, self.reason))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def shorten(text: str, limit: int = _MESSAGE_PIECE_LIMIT) -> str:
    """``text`` on one line, cut to ``limit`` characters for a message."""
    shown = _one_line(text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


@dataclass(frozen=True)
class Expression:
    """A checked expression: what numexpr may be given, and what it is made of.

    ``text`` is the normalised, re-printed expression numexpr evaluates;
    ``reduction`` names an outermost sum/prod/min/max and ``argument`` is the
    text of its argument (both None without one); ``nodes`` counts the syntax
    nodes, the unit of :data:`EXPRESSION_BUDGET`.
    """

    source: str
    names: frozenset[str]
    text: str
    reduction: str | None
    argument: str | None
    nodes: int


class _Refusal(Exception):
    """Internal: why the checker refused an expression (cached like results)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_expression(
    text: str,
    names: Iterable[str],
    *,
    key: str,
    frame: int | None = None,
    piece: str | None = None,
) -> Expression:
    """Check ``text`` against the allow-list; names allowed are ``names``.

    Raises :class:`ScheduleError` naming ``key``, ``piece`` (default: the
    text) and ``frame`` for anything outside it.
    """
    if not isinstance(text, str):
        raise ScheduleError(key, repr(text), frame, f"expected an expression, got {type(text).__name__}")
    allowed = frozenset(names)
    if not allowed <= _DEFORUM_NAMES:
        raise ValueError(f"names must be among {sorted(_DEFORUM_NAMES)}, got {sorted(allowed)}")
    if len(text) > MAX_EXPRESSION_CHARS:  # before the cache, which keeps its keys
        raise ScheduleError(
            key, text if piece is None else piece, frame, f"expression is longer than {MAX_EXPRESSION_CHARS} characters"
        )
    result = _check(text, allowed)
    if isinstance(result, _Refusal):
        raise ScheduleError(key, text if piece is None else piece, frame, result.reason)
    return result


@lru_cache(maxsize=4096)
def _check(source: str, names: frozenset[str]) -> Expression | _Refusal:
    try:
        return _check_uncached(source, names)
    except _Refusal as refusal:
        return refusal


def _check_uncached(source: str, names: frozenset[str]) -> Expression:
    text = unicodedata.normalize("NFKC", source)
    if not text.strip():
        raise _Refusal("empty expression")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise _Refusal(f"expression is longer than {MAX_EXPRESSION_CHARS} characters")
    tree = _parse(text)
    nodes = _count_nodes(tree.body)
    checker = _Checker(text, names)
    checker.visit(tree.body, outermost=True)
    body = tree.body
    reduction = argument = None
    if isinstance(body, ast.Call) and isinstance(body.func, ast.Name) and body.func.id in REDUCTIONS:
        reduction, argument = body.func.id, ast.unparse(body.args[0])
    return Expression(source, names, ast.unparse(body), reduction, argument, nodes)


def _parse(text: str) -> ast.Expression:
    try:
        return ast.parse(text, filename="<expr>", mode="eval")
    except SyntaxError as exc:
        message = exc.msg or ""
        if "null bytes" in message:
            raise _Refusal("contains a NUL character") from None
        if ":" in text:
            raise _Refusal("invalid syntax (a ':' inside a value: is a comma missing between keyframes?)") from None
        if message and message != "invalid syntax" and "perhaps" not in message.lower():
            raise _Refusal(f"invalid syntax ({message})") from None
        raise _Refusal("invalid syntax") from None
    except ValueError:  # NUL bytes on Python 3.11
        raise _Refusal("contains a NUL character") from None
    except (MemoryError, RecursionError):
        raise _Refusal("expression is nested too deeply") from None


def _count_nodes(body: ast.expr) -> int:
    """Expression nodes, with the nesting depth checked on the way (no recursion)."""
    count = 0
    stack = [(body, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_EXPRESSION_DEPTH:
            raise _Refusal(f"expression is nested more than {MAX_EXPRESSION_DEPTH} levels deep")
        count += 1
        if count > MAX_EXPRESSION_NODES:
            raise _Refusal(f"expression has more than {MAX_EXPRESSION_NODES} parts")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node) if isinstance(child, ast.expr))
    return count


_NOT_CONSTANT = object()  # a subtree numexpr sees (it holds a name or a call)
_RAISES = object()  # a constant subtree on which Python raises before computing more


class _Checker:
    """Walks a parsed expression, refusing anything off the allow-list.

    ``visit`` returns the value of subtrees made only of number constants and
    operators (Python computes those itself when numexpr evaluates), so huge
    whole numbers are caught before anything computes them. Depth was checked
    by :func:`_count_nodes`, so the recursion is bounded.
    """

    def __init__(self, text: str, names: frozenset[str]) -> None:
        self.text = text
        self.names = names

    def refuse(self, node: ast.AST, reason: str) -> None:
        fragment = ast.get_source_segment(self.text, node) or ast.unparse(node)
        raise _Refusal(f'{reason}: "{shorten(fragment, _FRAGMENT_LIMIT)}"')

    def visit(self, node: ast.expr, outermost: bool = False) -> Any:
        if isinstance(node, ast.Constant):
            return self.constant(node)
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.Call):
            return self.call(node, outermost)
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                self.refuse(node, "use & | ~ instead of and / or / not")
            if not isinstance(node.op, _UNARY_OPERATORS):
                self.refuse(node, "this operator is not supported")
            return _fold_unary(node.op, self.visit(node.operand))
        if isinstance(node, ast.BinOp):
            if not isinstance(node.op, _BINARY_OPERATORS):
                self.refuse(node, "this operator is not supported")
            left, right = self.visit(node.left), self.visit(node.right)
            value = _fold_binary(node.op, left, right)
            if value is _TOO_LARGE:
                self.refuse(node, f"whole number too large (more than {_MAX_CONSTANT_BITS} bits)")
            return value
        if isinstance(node, ast.Compare):
            return self.compare(node)
        self.refuse(node, _REFUSED.get(type(node), f"{type(node).__name__} is not allowed"))
        return None  # unreachable: refuse raises

    def constant(self, node: ast.Constant) -> Any:
        value = node.value
        if isinstance(value, (str, bytes)):
            self.refuse(node, "text is not allowed, only numbers")
        if not isinstance(value, _NUMBER_TYPES):
            self.refuse(node, f"{value!r} is not a number")
        return value

    def name(self, node: ast.Name) -> Any:
        if node.id in self.names:
            return _NOT_CONSTANT
        if node.id in FUNCTIONS or node.id in REDUCTIONS:
            self.refuse(node, f"function {node.id!r} must be called, as in {node.id}(t)")
        known = ", ".join(name for name in _NAME_ORDER if name in self.names)
        raise _Refusal(f"unknown name {node.id!r} (known names: {known})")

    def call(self, node: ast.Call, outermost: bool) -> Any:
        func = node.func
        if not isinstance(func, ast.Name):
            self.visit(func)  # an attribute or subscript gets its own, plainer refusal
            self.refuse(node, "only numexpr's functions, called by name, are allowed")
        name = func.id
        if name not in FUNCTIONS and name not in REDUCTIONS:
            raise _Refusal(f"unknown function {name!r}")
        if node.keywords:
            self.refuse(node, "keyword arguments are not allowed")
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                self.refuse(arg, "starred arguments are not allowed")
        arity = FUNCTIONS.get(name, 1)
        if len(node.args) != arity:
            plural = "argument" if arity == 1 else "arguments"
            raise _Refusal(f"wrong number of arguments: {name}() takes {arity} {plural}, got {len(node.args)}")
        if name in REDUCTIONS:
            if not outermost:
                raise _Refusal("sum/prod/min/max must be the outermost operation")
            if not any(isinstance(n, ast.Name) for n in ast.walk(node.args[0])):
                self.refuse(node, f"{name}() needs an expression of the frame, such as {name}(t)")
            self.visit(node.args[0])
            return _NOT_CONSTANT
        for arg in node.args:
            self.visit(arg)
        return _NOT_CONSTANT

    def compare(self, node: ast.Compare) -> Any:
        if len(node.ops) != 1:
            self.refuse(node, "chained comparison: write (a < t) & (t < b)")
        if not isinstance(node.ops[0], _COMPARISONS):
            self.refuse(node, "only < <= > >= == != comparisons are allowed")
        left, right = self.visit(node.left), self.visit(node.comparators[0])
        if _is_number(left) and _is_number(right):
            try:
                return _compare(node.ops[0], left, right)
            except Exception:
                return _RAISES
        return _RAISES if _RAISES in (left, right) else _NOT_CONSTANT


_TOO_LARGE = object()


def _is_number(value: Any) -> bool:
    return value is not _NOT_CONSTANT and value is not _RAISES and value is not _TOO_LARGE


def _fold_unary(op: ast.unaryop, operand: Any) -> Any:
    if not _is_number(operand):
        return operand
    try:
        return {ast.USub: lambda v: -v, ast.UAdd: lambda v: +v, ast.Invert: lambda v: ~v}[type(op)](operand)
    except Exception:
        return _RAISES


def _fold_binary(op: ast.operator, left: Any, right: Any) -> Any:
    """Compute a constant operation the way Python would, refusing huge whole numbers."""
    if left is _RAISES or not _is_number(left):
        return left
    if right is _RAISES or not _is_number(right):
        return right
    if _is_int(left) and _is_int(right):
        if isinstance(op, ast.Pow) and right > 0 and abs(left) > 1:
            if right * math.log2(abs(left)) > _MAX_CONSTANT_BITS:
                return _TOO_LARGE
        if isinstance(op, ast.LShift) and right > _MAX_CONSTANT_BITS:
            return _TOO_LARGE
    try:
        value = _BINARY[type(op)](left, right)
    except Exception:
        return _RAISES
    if _is_int(value) and value.bit_length() > _MAX_CONSTANT_BITS:
        return _TOO_LARGE
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int)


_BINARY = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
    ast.Pow: lambda a, b: a**b,
    ast.LShift: lambda a, b: a << b,
    ast.RShift: lambda a, b: a >> b,
    ast.BitAnd: lambda a, b: a & b,
    ast.BitOr: lambda a, b: a | b,
    ast.BitXor: lambda a, b: a ^ b,
}


def _compare(op: ast.cmpop, left: Any, right: Any) -> bool:
    return {
        ast.Lt: lambda a, b: a < b,
        ast.LtE: lambda a, b: a <= b,
        ast.Gt: lambda a, b: a > b,
        ast.GtE: lambda a, b: a >= b,
        ast.Eq: lambda a, b: a == b,
        ast.NotEq: lambda a, b: a != b,
    }[type(op)](left, right)


# --------------------------------------------------------------------------
# Evaluation: the only numexpr call in the package


def evaluate(
    expression: Expression,
    values: Mapping[str, Any],
    *,
    key: str,
    frame: int | None,
    piece: str | None = None,
    argument: bool = False,
) -> np.ndarray:
    """Evaluate a checked expression (or, with ``argument``, its reduction's
    argument) with numexpr, turning any failure into a :class:`ScheduleError`.

    The text evaluated is taken from the checker's own cache for
    ``expression.source``, never from the object passed in, so only checked
    text reaches numexpr; ``values`` may only bind the names the check allowed.
    """
    checked = check_expression(expression.source, expression.names, key=key, frame=frame, piece=piece)
    extra = set(values) - checked.names
    if extra:
        raise ScheduleError(key, checked.source, frame, f"internal: unexpected names {sorted(extra)}")
    text = checked.argument if argument else checked.text
    if text is None:
        raise ScheduleError(key, checked.source, frame, "internal: no reduction to take the argument of")
    shown = checked.source if piece is None else piece
    try:
        with np.errstate(all="ignore"):  # numexpr folds constants with numpy; NaN/inf results are refused below
            result = numexpr.evaluate(text, local_dict=dict(values), global_dict={})
    except KeyError as exc:
        name = exc.args[0] if exc.args else "?"
        raise ScheduleError(key, shown, frame, f"unknown name {name!r}") from None
    except ZeroDivisionError:
        raise ScheduleError(key, shown, frame, "division by zero") from None
    except Exception as exc:  # numexpr raises many types; none may escape raw
        raise ScheduleError(key, shown, frame, _explain(exc)) from None
    result = np.asarray(result)
    kind = result.dtype.kind
    if kind == "c":
        raise ScheduleError(key, shown, frame, "result is a complex number")
    if kind not in "biuf":
        raise ScheduleError(key, shown, frame, "result is not a number")
    return result


def _explain(exc: Exception) -> str:
    message = _one_line(str(exc)) or type(exc).__name__
    if isinstance(exc, TypeError) and "not callable" in message:
        return "unknown function"
    if isinstance(exc, NotImplementedError) and "opcode" in message:
        return "a function got the wrong number or kind of arguments"
    if isinstance(exc, RuntimeError) and "reduction" in message:
        return "sum/prod/min/max must be the outermost operation"
    if "boolean operators" in message:
        return "use & | ~ instead of and / or / not"
    if "negative integer powers" in message:
        return "whole numbers to negative whole powers are not allowed (write 2.0**-1)"
    return message


class ExpressionBudget:
    """The nodes spent on the distinct expressions of one schedule or one set of prompts.

    numexpr compiles every distinct expression text in Python, so a schedule
    of thousands of different expressions would hold a request for seconds;
    :meth:`check` refuses once their nodes pass ``limit``. Repeats are free
    (numexpr caches them).
    """

    def __init__(self, limit: int = EXPRESSION_BUDGET) -> None:
        self.limit = limit
        self.spent = 0
        self._seen: set[str] = set()

    def check(
        self,
        text: str,
        names: Iterable[str],
        *,
        key: str,
        frame: int | None = None,
        piece: str | None = None,
    ) -> Expression:
        """:func:`check_expression`, then count the expression against the budget."""
        expression = check_expression(text, names, key=key, frame=frame, piece=piece)
        if expression.text not in self._seen:
            self._seen.add(expression.text)
            self.spent += expression.nodes
            if self.spent > self.limit:
                raise ScheduleError(
                    key,
                    text if piece is None else piece,
                    frame,
                    f"the distinct expressions here have more than {self.limit} parts in total; "
                    "use fewer or shorter expressions",
                )
        return expression
