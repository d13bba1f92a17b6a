"""Deforum prompt keyframes: which prompt is active at each frame, and its negative.

Deforum wraps every keyframe prompt as `"{positive_prompts} {prompt} --neg {negative_prompts}"`,
holds a prompt until the next keyframe (and backwards before the first), evaluates
backtick expressions such as `` `1+t/10` `` per frame, and splits the text at
`--neg`. We do the same, with two repairs: backtick expressions are evaluated with
real variables `t`, `max_f` and `s` (Deforum substitutes the letter `t` by text,
which breaks `sqrt`), and a key such as `10.5` or `-3` is an error that names it.

The Forge fork's Wan mode saves Wan-specific prompts as `wan_prompts`; when a file
has them they are the prompts Wan renders, since that is what the user wrote for Wan.

Deforum prompts are written for Stable Diffusion in A1111's syntax (`(cat:1.5)`,
`[sunny:rainy:0.5]`, `AND`, `<lora:x:0.8>`, embedding names), which Wan's UMT5 text
encoder would read as literal characters. `plain_prompt` turns it into plain words and
lists what it took out, so the plan can show it.
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


# ---------------------------------------------------------------- A1111 syntax -> plain text for Wan


@dataclass(frozen=True)
class PlainPrompt:
    """A prompt with its A1111 syntax taken out: what UMT5 reads, and what was taken."""

    text: str
    stripped: tuple[str, ...] = ()  # each piece of syntax, as written
    loras: tuple[tuple[str, float], ...] = ()  # (name, weight) of <lora:name:weight> tags: per-clip LoRA weights


# <lora:name:0.8>, <lyco:...>, <hypernet:...>: A1111's extra networks (modules/extra_networks.py).
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
_LORA_TAGS = ("lora", "lyco", "locon", "loha", "lokr")
# Composable diffusion: "a cat :1.2 AND a dog :0.8" (prompt_parser.py re_AND, re_weight); BREAK starts a new chunk.
_AND = re.compile(r"\s*:\s*[-+]?(?:\d+\.?\d*|\.\d+)\s*\bAND\b|\bAND\b|\bBREAK\b")
_TRAILING_WEIGHT = re.compile(r"\s*:\s*[-+]?(?:\d+\.?\d*|\.\d+)\s*$")
_NUMBER = re.compile(r"\s*[-+]?(?:\d+\.?\d*|\.\d+)\s*")
# ComfyUI's embedding:name, and the textual-inversion embeddings Deforum prompts name most often.
_EMBEDDING = re.compile(r"\bembedding:[\w.\-]+")
_KNOWN_EMBEDDINGS = re.compile(
    r"(?<![\w\-])(?:easynegative(?:v2)?|bad[-_]hands[-_]5|badhandv4|bad[-_]prompt(?:[-_]version2)?|bad[-_]artist(?:[-_]anime)?|"
    r"bad[-_]image[-_]v2[-_]39000|ng[-_]deepnegative[-_]v1[-_]75t|verybadimagenegative[-_]v1\.3|negative[-_]hand[-_]neg|"
    r"fastnegative(?:v2)?|baddream|unrealisticdream|cyberrealistic[-_]negative|realisticvision[-_]negative[-_]embedding)"
    r"(?![\w\-])", re.IGNORECASE)
_CLOSE = {"(": ")", "[": "]"}


def plain_prompt(text: str, steps: int = 25) -> PlainPrompt:
    """A1111/Deforum prompt syntax turned into the plain words Wan's text encoder understands.

    - `(cat:1.5)`, `((cat))`, `[cat]`: emphasis; the words stay, the brackets and weights go.
      `\\(` and `\\)` are literal brackets.
    - `[from:to:when]` (prompt editing; `when` a fraction of the steps, or a step of `steps`,
      Deforum's own): Wan renders each clip in one pass, so the part in force for most of the
      sampling is kept: `from` when it lasts more than half, else `to`. `[to:when]` and
      `[from::when]` follow the same rule. `[cat|dog]` (alternation) keeps its first option.
    - `AND` (with each part's `:weight`) and `BREAK` become commas: every part's words stay.
    - `<lora:name:w>` and the other extra networks are removed; LoRA tags are listed apart
      (they set per-clip LoRA weights). `embedding:name` and well-known embedding names are removed.
    A prompt without such syntax comes back unchanged.
    """
    stripped: list[str] = []
    loras: list[tuple[str, float]] = []

    def network(match: re.Match[str]) -> str:
        stripped.append(match.group(0))
        if match.group(1).lower() in _LORA_TAGS:
            name, _, rest = match.group(2).partition(":")
            weight = _NUMBER.fullmatch(rest.split(":")[0] or "1")
            loras.append((name.strip(), float(weight.group(0)) if weight else 1.0))
        return " "

    out = _EXTRA_NETWORK.sub(network, text)

    def conjunction(match: re.Match[str]) -> str:
        stripped.append(" ".join(match.group(0).split()))
        return ", "

    out = _AND.sub(conjunction, out)
    if out != text and _TRAILING_WEIGHT.search(out) and "AND" in stripped[-1]:
        stripped.append(_TRAILING_WEIGHT.search(out).group(0).strip())  # the last part's weight
        out = _TRAILING_WEIGHT.sub("", out)
    out = _Brackets(out, steps, stripped).parse()
    for pattern in (_EMBEDDING, _KNOWN_EMBEDDINGS):
        out = pattern.sub(lambda m: stripped.append(m.group(0)) or " ", out)
    if not stripped:
        return PlainPrompt(text)
    return PlainPrompt(_tidy(out), tuple(stripped), tuple(loras))


def _tidy(text: str) -> str:
    """Spaces and commas left by removed syntax: one space, no space before punctuation, no empty items."""
    text = _SPACES.sub(" ", text)
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    text = re.sub(r"(?:,\s*){2,}", ", ", text)
    return text.strip().strip(",").strip()


class _Brackets:
    """A small recursive-descent reader of A1111's ( ) and [ ] (modules/prompt_parser.py's grammar)."""

    def __init__(self, text: str, steps: int, stripped: list[str]) -> None:
        self.text, self.steps, self.stripped = text, max(int(steps), 1), stripped

    def parse(self) -> str:
        out, _, _ = self._group(0, None)
        return out

    def _group(self, i: int, close: str | None) -> tuple[str, int, list[tuple[str, str]]]:
        """Read from i to `close` (None: the end). Returns (plain text, index after it, [(raw, sep)] parts)."""
        text, parts, buf = self.text, [], []
        while i < len(text):
            ch = text[i]
            if ch == "\\" and i + 1 < len(text):  # an escaped character is itself
                if close is None:
                    self.stripped.append(text[i:i + 2])
                buf.append(text[i + 1])
                i += 2
                continue
            if ch in _CLOSE:
                inner, end, inner_parts = self._group(i + 1, _CLOSE[ch])
                if end < 0:  # never closed: drop the bracket, keep what follows
                    self._strip(close, ch)
                    i += 1
                    continue
                if close is None:
                    self.stripped.append(text[i:end])
                buf.append(self._resolve(ch, inner_parts))
                i = end
                continue
            if close is not None and ch == close:
                parts.append(("".join(buf), ""))
                return "".join(b for b, _ in parts), i + 1, parts
            if ch in ")]":  # a closer that closes nothing here
                self._strip(close, ch)
                i += 1
                continue
            if close is not None and ch in ":|":
                parts.append(("".join(buf), ch))
                buf = []
                i += 1
                continue
            buf.append(ch)
            i += 1
        if close is not None:
            return "", -1, []
        return "".join(buf), i, []

    def _strip(self, close: str | None, ch: str) -> None:
        if close is None:
            self.stripped.append(ch)

    def _resolve(self, opener: str, parts: list[tuple[str, str]]) -> str:
        """The words a closed group stands for."""
        texts, seps = [p for p, _ in parts], [s for _, s in parts[:-1]]
        weighted = len(texts) > 1 and seps[-1] == ":" and _NUMBER.fullmatch(texts[-1]) is not None
        if opener == "(":  # (words:weight): `:` is a weight only before a number and `)`
            return _join(texts[:-1], seps[:-1]) if weighted else _join(texts, seps)
        if "|" in seps and not weighted:  # [a|b|c] alternates every step: the first option
            return texts[0]
        if weighted and len(texts) in (2, 3):
            when = float(texts[-1])
            first_share = when if when < 1 else when / self.steps  # the share of steps `from` is in force
            if len(texts) == 2:  # [to:when]: nothing, then `to`
                return "" if first_share > 0.5 else texts[0]
            return texts[0] if first_share > 0.5 else texts[1]
        return _join(texts, seps)


def _join(texts: list[str], seps: list[str]) -> str:
    return "".join(t + s for t, s in zip(texts, seps + [""]))
