"""What the prompts of one video share, and what comes before and after each clip.

Each clip is rewritten in its own row, so without help the model invents a new
coat colour or a new street in every clip. These pure functions give every row
the same context, drawn from all the plan's prompts at once:

* the shared line: the phrases (comma- or period-separated chunks, compared case-
  and whitespace-insensitively) that recur in at least two distinct prompts, in
  first-seen order, whole phrases only, at most `SHARED_MAX_CHARS` characters
  (a clip that spans several prompts joins them as sentences, "A. Then B": each
  part counts as its own prompt, so A is not "shared" by the clips "A" and "A. Then B");
* the neighbours: the previous and the next distinct prompt of the sequence
  (consecutive clips with the same prompt are one scene).

The plan has already taken the A1111 syntax out of the prompts.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Sequence

SHARED_MAX_CHARS = 200
NEIGHBOUR_MAX_CHARS = 300  # a neighbour is context, not a second scene to rewrite: long ones are cut at a phrase

# Phrase boundaries: , ; ! ? and . (not inside a number such as 1.5), their CJK forms, and line breaks.
_SPLIT = re.compile(r"[,;!?，；。！？\n]|(?<!\d)\.|\.(?!\d)")
# "A. Then B": the prompts of a clip that spans several prompt segments.
_THEN = re.compile(r"(?<=[.!?。！？])\s*then\s+", re.I)
_CJK = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")


@dataclass(frozen=True)
class SceneContext:
    """The context of one clip's rewrite: what the whole video shares, and the scenes around it."""

    shared: str = ""
    previous: str = ""
    next: str = ""


def phrase_key(text: str) -> str:
    """How phrases are compared: NFKC, case-folded, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def prompt_key(prompt: str) -> tuple[str, ...]:
    """How prompts are compared: as their sequences of phrase keys (punctuation at the ends aside)."""
    return tuple(phrase_key(p) for p in split_phrases(prompt))


def split_phrases(prompt: str) -> list[str]:
    """The comma/period-separated chunks of `prompt` (ASCII and CJK punctuation), whitespace collapsed."""
    phrases = (" ".join(p.split()) for p in _SPLIT.split(prompt or ""))
    return [p for p in phrases if any(ch.isalnum() for ch in p)]


def _join(phrases: Sequence[str]) -> str:
    """Phrases as one line: CJK punctuation between CJK phrases, ", " otherwise."""
    out = ""
    for phrase in phrases:
        if out:
            out += "，" if _CJK.search(out[-1]) and _CJK.search(phrase[0]) else ", "
        out += phrase
    return out


def _bounded(phrases: Sequence[str], max_chars: int) -> str:
    """Whole phrases in order while the joined line stays within `max_chars`; a phrase too long is skipped."""
    kept: list[str] = []
    for phrase in phrases:
        if len(_join([*kept, phrase])) <= max_chars:
            kept.append(phrase)
    return _join(kept)


def shared_line(prompts: Sequence[str], max_chars: int = SHARED_MAX_CHARS) -> str:
    """The phrases that recur in at least two distinct prompts, first-seen order, at most `max_chars`.

    Empty when fewer than two distinct prompts are given: one prompt shares nothing with itself.
    """
    if len({prompt_key(p) for p in prompts} - {()}) < 2:
        return ""
    distinct: dict[tuple[str, ...], str] = {}
    for prompt in prompts:
        for part in _THEN.split(prompt or ""):
            key = prompt_key(part)
            if key:
                distinct.setdefault(key, part)
    first_seen: dict[str, str] = {}  # phrase key -> the phrase as first written
    counts: dict[str, int] = {}
    for prompt in distinct.values():
        keys_here: set[str] = set()
        for phrase in split_phrases(prompt):
            key = phrase_key(phrase)
            first_seen.setdefault(key, phrase)
            keys_here.add(key)
        for key in keys_here:
            counts[key] = counts.get(key, 0) + 1
    return _bounded([phrase for key, phrase in first_seen.items() if counts[key] >= 2], max_chars)


def shorten(prompt: str, max_chars: int = NEIGHBOUR_MAX_CHARS) -> str:
    """`prompt` whitespace-collapsed; if longer than `max_chars`, its leading whole phrases that fit."""
    text = " ".join((prompt or "").split())
    if len(text) <= max_chars:
        return text
    return _bounded(split_phrases(text), max_chars) or text[:max_chars].rstrip()


def neighbours(prompts: Sequence[str], max_chars: int = NEIGHBOUR_MAX_CHARS) -> list[tuple[str, str]]:
    """(previous, next) distinct prompt for each prompt of the sequence; "" at either end.

    Consecutive equal prompts (compared as phrases are) are one scene and share their
    neighbours; empty prompts are no scene and are skipped.
    """
    runs: list[str] = []  # one prompt per scene, in order
    run_of: list[int | None] = []
    for prompt in prompts:
        key = prompt_key(prompt)
        if not key:
            run_of.append(None)
            continue
        if not runs or prompt_key(runs[-1]) != key:
            runs.append(prompt)
        run_of.append(len(runs) - 1)
    out = []
    for run in run_of:
        if run is None:
            out.append(("", ""))
            continue
        previous = shorten(runs[run - 1], max_chars) if run > 0 else ""
        following = shorten(runs[run + 1], max_chars) if run + 1 < len(runs) else ""
        out.append((previous, following))
    return out


def scene_contexts(prompts: Sequence[str], max_chars: int = SHARED_MAX_CHARS) -> list[SceneContext]:
    """One context per prompt: the shared line (the same for all) and its neighbours."""
    shared = shared_line(prompts, max_chars)
    return [SceneContext(shared, previous, following) for previous, following in neighbours(prompts)]
