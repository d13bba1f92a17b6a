"""Turning a model's raw output into a usable prompt, or saying why it is not one.

Small instruct models wrap their answer in think blocks, markdown, preambles
("Sure! Here is the rewritten prompt:"), quotes and trailing notes, and may run
long, drop the camera words or the user's quoted text, or emit garbage. This
module strips the wrapping, caps the length at a sentence boundary, appends the
camera words when they were lost, and falls back to the original prompt with a
reason when the output is unusable, or when it merely copies the neighbouring
scenes it was given as context. Pure text functions: the cache stores raw
outputs, so a better cleaner applies to cached rewrites too.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Sequence

from .prompting import CONTEXT_LABELS

MAX_WORDS = 100  # length cap; a CJK character counts as 2/3 of a word (150 characters ~ 100 words)
MIN_WORDS = 8  # fewer is not an enhancement, whatever it is

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_UNIT = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\s\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_PREAMBLE = re.compile(
    r"^\s*(?:(?:sure|certainly|of course|okay|ok|absolutely|alright|here you go)(?:\s+thing)?\s*[.!:,]\s*"
    r"|here(?:'s| is| are)\b[^:\n]{0,80}[:：]\s*"
    r"|(?:below is|this is)\b[^:\n]{0,80}[:：]\s*"
    r"|(?:the\s+)?(?:enhanced|rewritten|improved|revised|final|new|expanded|video)?\s*prompt\s*(?:is)?\s*[:：]\s*"
    r"|(?:scene|output|answer|result)\s*[:：]\s*"
    r"|(?:好的|当然|没问题)[^。：:\n]*[。，,：:!！]\s*"
    r"|(?:以下是|下面是|这是)[^：:\n]{0,40}[：:]\s*"
    r"|(?:改写后的|优化后的|增强后的|扩写后的)?(?:视频)?提示词\s*[：:]\s*)",
    re.I,
)
_TRAILER = re.compile(
    r"(?:^|(?<=[.!?。！？)]))\s*[(（]?\s*(?:note\s*[:：]|notes\s*[:：]|i hope\b|let me know\b|this prompt\b|"
    r"word count\b|\(?\d+\s+words\)?\s*$|注[：:]|说明[：:]|希望)",
    re.I | re.M,
)
_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’", "「": "」", "『": "』", "«": "»"}
_QUOTED = re.compile(r"\"([^\"]+)\"|“([^”]+)”|「([^」]+)」|『([^』]+)』|(?<!\w)'([^']+)'(?!\w)")
_REPEAT = re.compile(r"(.{2,30}?)\1{3,}", re.S)
_SENTENCE_END = re.compile(r"[.!?](?=[\s\"'”’)]|$)|[。！？]")
# The context lines of the user message, echoed back: "Before this scene: ..."
_CONTEXT_ECHO = re.compile("|".join(re.escape(label.rstrip(" :：")) + r"\s*[:：]"
                                    for labels in CONTEXT_LABELS.values() for label in labels), re.I)


def _units(text: str) -> float:
    return sum(2 / 3 if _CJK.fullmatch(u) else 1 for u in _UNIT.findall(text))


def _norm(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(re.sub(r"[\W_]+", " ", text).split())


def _strip_think(text: str) -> str:
    text = re.sub(r"<think>.*?</think>", " ", text, flags=re.S | re.I)
    text = re.split(r"</think>", text, flags=re.I)[-1]  # the opening tag was part of the template
    return re.split(r"<think>", text, flags=re.I)[0]  # never closed: no answer came


def _strip_markdown(text: str) -> str:
    lines = []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("```") or re.fullmatch(r"[-*_=]{3,}", s):
            continue
        if s.startswith("#"):  # a heading is a title, not prompt text
            continue
        s = re.sub(r"^(?:[-*•+]|\d+[.)])\s+", "", s)
        s = re.sub(r"^>\s*", "", s)
        lines.append(s)
    text = "\n".join(lines)
    text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"(\*\*|__)(.+?)\1", r"\2", text)
    text = re.sub(r"(?<![\w*])\*(?!\s)([^*\n]+?)\*(?!\w)", r"\1", text)
    return text.replace("`", "")


def _strip_wrapping_quotes(text: str) -> str:
    text = text.strip()
    while len(text) >= 2 and text[0] in _QUOTES:
        close = _QUOTES[text[0]]
        body = text.rstrip(".。")
        if body.endswith(close) and len(body) >= 2:
            inner = body[1:-1]
            if text[0] == close and text[0] in inner:  # 'a' ... 'b': inner quotes, not a wrapper
                break
            if text[0] != close and (text[0] in inner or close in inner):
                break
            text = (inner + text[len(body):]).strip()
        else:
            break
    return text


def _strip_preambles(text: str) -> str:
    for _ in range(4):
        stripped = _PREAMBLE.sub("", text, count=1).lstrip()
        stripped = _strip_wrapping_quotes(stripped)
        if stripped == text:
            break
        text = stripped
    return text


def _truncate(text: str, max_units: float = MAX_WORDS) -> str:
    if _units(text) <= max_units:
        return text
    total, end = 0.0, 0
    for m in _UNIT.finditer(text):
        total += 2 / 3 if _CJK.fullmatch(m.group()) else 1
        if total > max_units:
            break
        end = m.end()
    prefix = text[:end]
    ends = [m.end() for m in _SENTENCE_END.finditer(prefix)]
    if ends and ends[-1] >= len(prefix) * 0.4:
        return prefix[: ends[-1]].strip()
    commas = [m.start() for m in re.finditer(r"[,;，；、]", prefix)]
    cut = prefix[: commas[-1]] if commas and commas[-1] >= len(prefix) * 0.4 else prefix
    return cut.rstrip(" ,;，；、") + ("。" if _CJK.search(cut[-1:] or "") else ".")


def _garbage(text: str) -> str | None:
    """Why `text` is not a prompt, or None."""
    if not text.strip():
        return "empty output"
    chars = [c for c in text if not c.isspace()]
    letters = sum(c.isalpha() for c in chars)
    if letters == 0:
        return "no letters in the output"
    if letters / len(chars) < 0.6:
        return "output is mostly not text"
    if _REPEAT.search(text):
        return "output repeats itself"
    words = _norm(text).split()
    if len(words) >= 20 and len(set(words)) / len(words) < 0.35:
        return "output repeats itself"
    if _units(text) < MIN_WORDS:
        return "output too short"
    return None


def _quoted_texts(text: str) -> list[str]:
    return [next(g for g in m.groups() if g) for m in _QUOTED.finditer(text)]


def _append_movement(text: str, movement: str) -> str:
    text = text.rstrip()
    if _CJK.search(text[-1:] or "") or text.endswith(("。", "！", "？")):
        return f"{text.rstrip('。！？，,')}，{movement}。"
    return f"{text.rstrip(' .!?,;')}, {movement}."


def _copies_neighbours(text: str, movement: str, original: str, neighbours: Sequence[str]) -> bool:
    """Whether `text` is a neighbouring scene rather than this one: it echoes the context labels,
    is (part of) a neighbour's prompt, or carries a whole neighbour prompt that the original lacks."""
    if _CONTEXT_ECHO.search(text):
        return True
    out = _norm(text)
    if movement:
        out = " ".join(out.replace(_norm(movement), " ").split())
    own = _norm(original)
    for neighbour in neighbours:
        other = _norm(neighbour)
        if not other or other in own:
            continue  # this scene repeats its neighbour: copying it is keeping the prompt
        if (out and out in other) or (_units(neighbour) >= 4 and other in out):
            return True
    return False


def clean_text(text: str, movement: str, original: str,
               neighbours: Sequence[str] = ()) -> tuple[str, str | None, tuple[str, ...]]:
    """clean_output plus notes on what was repaired (e.g. camera words appended)."""
    notes: list[str] = []
    cleaned = _strip_think(text or "")
    cleaned = cleaned.replace("<|im_end|>", " ").replace("<|endoftext|>", " ")
    cleaned = _strip_markdown(cleaned)
    cleaned = _strip_preambles(cleaned.strip())
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", cleaned) if p.strip()]
    # A label on its own line ("Prompt:") was taken by the preamble pass; a second paragraph is
    # usually commentary, unless the first is too short to be the prompt.
    if len(paragraphs) > 1 and _units(paragraphs[0]) >= MIN_WORDS * 3:
        cleaned = paragraphs[0]
    cleaned = " ".join(cleaned.split())
    trailer = _TRAILER.search(cleaned)
    if trailer and trailer.start() > 0:
        cleaned = cleaned[: trailer.start()].strip()
    cleaned = _strip_wrapping_quotes(cleaned)
    reason = _garbage(cleaned)
    if reason:
        return original, reason, ()
    for quoted in _quoted_texts(original):
        if _norm(quoted) and _norm(quoted) not in _norm(cleaned):
            return original, f"output dropped the quoted text {quoted!r}", ()
    if neighbours and _copies_neighbours(cleaned, movement, original, neighbours):
        return original, "output copies the neighbouring scenes", ()
    cleaned = _truncate(cleaned)
    if movement and _norm(movement) not in _norm(cleaned):
        cleaned = _append_movement(cleaned, movement)
        notes.append("camera words appended")
    return cleaned, None, tuple(notes)


def clean_output(text: str, movement: str, original: str, neighbours: Sequence[str] = ()) -> tuple[str, str | None]:
    """Model output -> (prompt, None), or (original, reason) when the output is unusable.

    Drops think blocks, markdown, preambles, wrapping quotes and trailing notes; caps the
    length at a sentence boundary; appends the camera words if the model lost them; rejects
    an output that copies the `neighbours` (the previous and next prompts given as context).
    """
    cleaned, reason, _notes = clean_text(text, movement, original, neighbours)
    return cleaned, reason
