"""What a user checks before rendering: length, size, prompts over time, camera ranges, the inputs the
file brings (input_report.py), and what happens to every Deforum key (used, mapped or ignored: coverage.py)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .coverage import format_key_report, key_report
from .input_report import InputEntry, format_input_report, input_report
from .prompts import prompt_at, prompt_keyframes
from .schedules import parse_schedule
from .settings import CAMERA_KEYS, DeforumSettings


@dataclass(frozen=True)
class PromptSpan:
    start: int
    end: int  # exclusive
    start_seconds: float
    end_seconds: float
    positive: str
    negative: str


@dataclass(frozen=True)
class ScheduleStats:
    key: str
    text: str
    minimum: float
    maximum: float
    mean: float


@dataclass(frozen=True)
class Inspection:
    max_frames: int
    fps: float
    seconds: float
    width: int
    height: int
    animation_mode: str
    seed: int
    seed_behavior: str
    prompts: tuple[PromptSpan, ...]
    schedules: tuple[ScheduleStats, ...]
    keys: dict  # coverage.KeyReport.to_dict(): every covered key with its status and note, and the warnings
    keys_text: str = ""  # the same as a table
    inputs: tuple[InputEntry, ...] = ()  # init image, Video Input, Guided Images, Parseq: on or off, as written
    parseq: str = ""  # what a Parseq manifest drives (core/parseq.py), when the settings name one

    def to_dict(self) -> dict:
        return asdict(self)


def inspect_settings(settings: DeforumSettings) -> Inspection:
    keyframes = prompt_keyframes(settings)
    spans = []
    for i, kf in enumerate(keyframes):
        start = 0 if i == 0 else kf.frame
        end = keyframes[i + 1].frame if i + 1 < len(keyframes) else settings.max_frames
        text = prompt_at(settings, start, keyframes)
        spans.append(
            PromptSpan(start, end, start / settings.fps, end / settings.fps, text.positive, text.negative)
        )
    stats = []
    for key in CAMERA_KEYS:
        text = getattr(settings, key)
        values = parse_schedule(text, settings.max_frames, settings.seed, key=key)
        stats.append(ScheduleStats(key, text, float(values.min()), float(values.max()), float(values.mean())))
    report = key_report(settings)
    return Inspection(
        max_frames=settings.max_frames,
        fps=settings.fps,
        seconds=settings.seconds,
        width=settings.W,
        height=settings.H,
        animation_mode=settings.animation_mode,
        seed=settings.seed,
        seed_behavior=settings.seed_behavior,
        prompts=tuple(spans),
        schedules=tuple(stats),
        keys=report.to_dict(),
        keys_text=format_key_report(report),
        inputs=input_report(settings.raw),
        parseq=settings.parseq.describe() if settings.parseq else "",
    )


def format_inspection(ins: Inspection, width: int = 100) -> str:
    lines = [
        f"frames {ins.max_frames} at {ins.fps:g} fps = {ins.seconds:.2f} s, {ins.width}x{ins.height}, "
        f"{ins.animation_mode} mode, seed {ins.seed} ({ins.seed_behavior})",
        *([ins.parseq] if ins.parseq else []),
        "",
        f"prompts ({len(ins.prompts)}):",
    ]
    for p in ins.prompts:
        head = f"  {p.start:>6}-{p.end - 1:<6} {p.start_seconds:7.2f}s-{p.end_seconds:<7.2f}s "
        lines.append(head + _cut(p.positive, width - len(head)))
        if p.negative:
            lines.append(" " * len(head) + _cut("neg: " + p.negative, width - len(head)))
    lines += ["", "camera schedules (per-frame values):", f"  {'key':<20}{'min':>10}{'max':>10}{'mean':>10}"]
    for s in ins.schedules:
        lines.append(f"  {s.key:<20}{s.minimum:>10.4g}{s.maximum:>10.4g}{s.mean:>10.4g}")
    if ins.inputs:
        lines += ["", format_input_report(ins.inputs)]
    if ins.keys_text:
        lines += ["", ins.keys_text]
    return "\n".join(lines)


def _cut(text: str, width: int) -> str:
    width = max(width, 20)
    return text if len(text) <= width else text[: width - 1] + "…"
