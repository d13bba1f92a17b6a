"""Deforum prompt keyframes: which prompt is active at each frame, and its negative.

Deforum wraps every keyframe prompt as `"{positive_prompts} {prompt} --neg {negative_prompts}"`,
holds a prompt until the next keyframe (and backwards before the first), evaluates
backtick expressions such as `` `1+t/10` `` per frame, and splits the text at
`--neg`. We do the same, with two repairs: backtick expressions are evaluated with
real variables `t`, `max_f` and `s` (Deforum substitutes the letter `t` by text,
which breaks `sqrt`), and a key such as `10.5` or `-3` is an error that names it.

The Forge fork's Wan mode saves Wan-specific prompts as `wan_prompts`; when a file
has them they are the prompts Wan renders, since that is what the user wrote for Wan.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .expressions import ExpressionBudget
from .schedules import evaluate_expression, evaluate_frame_key
from .settings import DeforumSettings, SettingsError, check_prompt_length

_BACKTICK = re.compile(r"`([^`]*)`")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class PromptKeyframe:
    """One prompt keyframe on Deforum's timeline (raw text, wrappers not applied)."""

    frame: int
    key: str
    text: str


@dataclass(frozen=True)
class FramePrompt:
    positive: str
    negative: str


def prompt_items(settings: DeforumSettings) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The settings key the prompts come from and its frame/prompt pairs."""
    wan_prompts = settings.wan_value("prompts")
    if isinstance(wan_prompts, dict) and wan_prompts:
        bad = [k for k, v in wan_prompts.items() if not isinstance(v, str)]
        if bad:
            raise SettingsError(f"wan_prompts[{bad[0]!r}]", "expected prompt text")
        for k, v in wan_prompts.items():
            check_prompt_length(f"wan_prompts[{str(k)!r}]", v)
        return "wan_prompts", tuple((str(k), v) for k, v in wan_prompts.items())
    return settings.prompts_key, settings.prompts


def prompt_keyframes(settings: DeforumSettings) -> tuple[PromptKeyframe, ...]:
    """Keyframes sorted by frame; keys outside the timeline are dropped, as Deforum drops them.

    Expression keys and the backtick expressions of the kept prompts (and of
    the global wrappers) are checked here, sharing one expression budget, so a
    bad or too costly expression is refused before any clip is planned.
    """
    source, items = prompt_items(settings)
    budget = ExpressionBudget()
    by_frame: dict[int, PromptKeyframe] = {}
    for key, text in items:
        where = f"{source}[{key!r}]"
        frame = evaluate_frame_key(key, settings.max_frames, settings.seed, key=where, budget=budget)
        if 0 <= frame < settings.max_frames:
            by_frame[frame] = PromptKeyframe(frame, key, text)
    if not by_frame:
        first = ", ".join(k for k, _ in items[:3])
        raise SettingsError(source, f"no prompt keyframe falls inside the {settings.max_frames} frames (keys: {first})")
    keyframes = tuple(by_frame[f] for f in sorted(by_frame))
    texts = [(f"{source}[{kf.key!r}]", kf.frame, kf.text) for kf in keyframes]
    texts += [("positive_prompts", 0, settings.positive_prompts), ("negative_prompts", 0, settings.negative_prompts)]
    for where, frame, text in texts:
        for match in _BACKTICK.finditer(text):
            budget.check(match.group(1), ("t", "max_f", "s"), key=where, frame=frame)
    return keyframes


def active_keyframe(keyframes: tuple[PromptKeyframe, ...], frame: int) -> PromptKeyframe:
    """The keyframe in force at `frame`: the last at or before it, else the first (held backwards)."""
    current = keyframes[0]
    for kf in keyframes:
        if kf.frame <= frame:
            current = kf
        else:
            break
    return current


def wrap_prompt(settings: DeforumSettings, text: str) -> str:
    """Deforum's global wrappers around one keyframe prompt."""
    negative = settings.negative_prompts.replace("--neg", "")
    marker = "" if "--neg" in text else "--neg"
    return f"{settings.positive_prompts} {text} {marker} {negative}"


def expand_backticks(text: str, frame: int, settings: DeforumSettings, *, key: str = "prompt") -> str:
    """Replace each `` `expr` `` by its value at `frame`."""

    def value(match: re.Match[str]) -> str:
        result = evaluate_expression(match.group(1), frame, settings.max_frames, settings.seed, key=key)
        return f"{result:g}" if float(result).is_integer() else repr(float(result))

    return _BACKTICK.sub(value, text)


def split_negative(text: str) -> FramePrompt:
    """Split at the first `--neg`; later `--neg` parts join the negative, as in Deforum."""
    positive, *rest = text.split("--neg")
    return FramePrompt(_clean(positive), _clean(" ".join(rest)))


def prompt_at(settings: DeforumSettings, frame: int, keyframes: tuple[PromptKeyframe, ...] | None = None) -> FramePrompt:
    """The positive and negative prompt Deforum would use at `frame`."""
    keyframes = keyframes if keyframes is not None else prompt_keyframes(settings)
    kf = active_keyframe(keyframes, frame)
    source, _ = prompt_items(settings)
    wrapped = wrap_prompt(settings, kf.text)
    return split_negative(expand_backticks(wrapped, frame, settings, key=f"{source}[{kf.key!r}]"))


def _clean(text: str) -> str:
    return _SPACES.sub(" ", text).strip().strip(",").strip()
