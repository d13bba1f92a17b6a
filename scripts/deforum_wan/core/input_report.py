"""The pictures, videos and documents a settings file brings, as written: init image, Video Input,
Guided Images, Parseq.

`inspect` and `plan` list them so a user sees before rendering what the file will
read and whether each is switched on. Only the raw keys are read: nothing is
fetched, opened or evaluated here (frame expressions such as `max_f/4-5` are shown
as Deforum's files write them). Key names and defaults follow Deforum's args.py
(sd-webui-deforum@3224268: `use_init`/`init_image`/`strength` in DeforumArgs,
`video_init_path` & co. in DeforumAnimArgs, `use_looper`/`init_images` in LoopArgs,
`parseq_manifest` & co. in ParseqArgs).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Mapping

VIDEO_INPUT = "Video Input"
MAX_SHOWN = 160  # characters of one value shown in the text report

# Deforum's defaults for keys a settings file may leave out (args.py@3224268).
_DEFAULTS = {"strength": 0.8, "extract_nth_frame": 1, "extract_from_frame": 0, "extract_to_frame": -1,
             "use_mask_video": False, "image_strength_schedule": "0:(0.75)", "parseq_use_deltas": True,
             "parseq_non_schedule_overrides": True}


@dataclass(frozen=True)
class InputEntry:
    """One input kind: whether the file switches it on, what it names, and anything odd about it."""

    name: str
    active: bool
    summary: str  # one line: the source and its options, or why it is off
    details: tuple[tuple[str, str], ...] = ()  # (label, value) lines shown under it, e.g. guided images
    problem: str = ""  # the value cannot be read as Deforum reads it (checked again, with an error, before rendering)

    def to_dict(self) -> dict:
        return asdict(self)


def source_kind(value: Any) -> str:
    """How a path-or-URL value reads: "none", "URL", "data URL", "inline JSON" or "file"."""
    if value is None:
        return "none"
    text = str(value).strip()
    if not text or text.lower() == "none":
        return "none"
    lower = text.lower()
    if lower.startswith(("http://", "https://")):
        return "URL"
    if lower.startswith("data:"):
        return "data URL"
    if text.startswith(("{", "[")):
        return "inline JSON"
    return "file"


def shown_source(value: Any) -> str:
    """A source as the report shows it: data URLs and inline JSON by their size, long text cut."""
    kind = source_kind(value)
    text = "" if value is None else str(value).strip()
    if kind == "none":
        return "none"
    if kind == "data URL":
        return f"a data URL ({text[5:].split(';', 1)[0].split(',', 1)[0] or 'no type'}, {len(text)} characters)"
    if kind == "inline JSON":
        return f"inline JSON ({len(text)} characters)"
    return _cut(text)


def _described(value: Any) -> str:
    """`/a/b.png (file)`, `https://… (URL)`, `inline JSON (N characters)`, `none`."""
    kind = source_kind(value)
    return shown_source(value) if kind in ("none", "data URL", "inline JSON") else f"{shown_source(value)} ({kind})"


def _flag(raw: Mapping[str, Any], key: str) -> bool:
    value = raw.get(key, _DEFAULTS.get(key, False))
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "on")
    return bool(value)


def _value(raw: Mapping[str, Any], key: str) -> Any:
    return raw.get(key, _DEFAULTS.get(key))


def _cut(text: str, limit: int = MAX_SHOWN) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def init_image_entry(raw: Mapping[str, Any]) -> InputEntry:
    source = raw.get("init_image")
    strength = _value(raw, "strength")
    where = _described(source)
    if not _flag(raw, "use_init"):
        return InputEntry("init image", False, f"off (use_init is false); init_image: {where}")
    problem = "" if source_kind(source) != "none" else "use_init is on but init_image is empty"
    return InputEntry("init image", True, f"init_image: {where}, strength {strength}", problem=problem)


def video_input_entry(raw: Mapping[str, Any]) -> InputEntry:
    mode = raw.get("animation_mode")
    path, mask = raw.get("video_init_path"), raw.get("video_mask_path")
    if mode != VIDEO_INPUT:
        return InputEntry("Video Input", False, f"off (animation_mode is {mode or '2D'})")
    span = (f"extract_nth_frame {_value(raw, 'extract_nth_frame')}, extract_from_frame "
            f"{_value(raw, 'extract_from_frame')}, extract_to_frame {_value(raw, 'extract_to_frame')}")
    mask_text = (f"video_mask_path: {_described(mask)}" if _flag(raw, "use_mask_video")
                 else "no mask (use_mask_video is false)")
    problem = "" if source_kind(path) != "none" else "animation_mode is Video Input but video_init_path is empty"
    if not problem and _flag(raw, "use_mask_video") and source_kind(mask) == "none":
        problem = "use_mask_video is on but video_mask_path is empty"
    return InputEntry("Video Input", True, f"video_init_path: {_described(path)}; {span}; {mask_text}",
                      problem=problem)


def guided_images(value: Any) -> tuple[tuple[tuple[str, str], ...], str]:
    """init_images as (frame as written, image) pairs, and a problem when it is not a JSON object of them.

    Deforum keeps it as JSON text in a textbox (LoopArgs); API callers may send the object itself.
    """
    data = value
    if isinstance(value, str):
        if not value.strip():
            return (), "init_images is empty"
        try:
            data = json.loads(value)
        except json.JSONDecodeError as exc:
            return (), f"init_images is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    if not isinstance(data, Mapping):
        return (), f"init_images must be an object of frame -> image, got {type(data).__name__}"
    return tuple((str(k), str(v)) for k, v in data.items()), ""


def guided_images_entry(raw: Mapping[str, Any]) -> InputEntry:
    if not _flag(raw, "use_looper"):
        return InputEntry("Guided Images", False, "off (use_looper is false)")
    pairs, problem = guided_images(raw.get("init_images"))
    summary = (f"{len(pairs)} image(s) at the frames written below; image_strength_schedule "
               f"{_value(raw, 'image_strength_schedule')}")
    return InputEntry("Guided Images", True, summary, tuple((k, _cut(v)) for k, v in pairs), problem)


def parseq_entry(raw: Mapping[str, Any]) -> InputEntry:
    manifest = raw.get("parseq_manifest")
    kind = source_kind(manifest if not isinstance(manifest, Mapping) else "{}")
    if kind == "none":
        return InputEntry("Parseq", False, "off (parseq_manifest is empty)")
    problem = ""
    if isinstance(manifest, Mapping):
        data, kind, shown = manifest, "inline JSON", "an inline object"
    else:
        shown = _described(manifest)
        data = None
        if kind == "inline JSON":
            try:
                data = json.loads(str(manifest))
            except json.JSONDecodeError as exc:
                problem = f"parseq_manifest is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        elif kind == "data URL":
            problem = "parseq_manifest takes inline JSON, a file or an http(s) URL, not a data URL"
    if data is not None:
        frames = data.get("rendered_frames") if isinstance(data, Mapping) else None
        if isinstance(frames, list):
            shown += f", {len(frames)} rendered frames"
        else:
            problem = "parseq_manifest has no rendered_frames list (not a Parseq manifest)"
    flags = (f"parseq_use_deltas {_flag(raw, 'parseq_use_deltas')}, "
             f"parseq_non_schedule_overrides {_flag(raw, 'parseq_non_schedule_overrides')}")
    return InputEntry("Parseq", True, f"parseq_manifest: {shown}; {flags}", problem=problem)


def input_report(raw: Mapping[str, Any]) -> tuple[InputEntry, ...]:
    """Every input kind a settings file can bring, on or off, from its raw keys."""
    return (init_image_entry(raw), video_input_entry(raw), guided_images_entry(raw), parseq_entry(raw))


def format_input_report(entries: tuple[InputEntry, ...]) -> str:
    """The report as text: one line per kind, guided images listed under theirs, problems marked."""
    lines = ["inputs:"]
    for e in entries:
        summary = e.summary.removeprefix("off ")
        lines.append(f"  {e.name:<14} {'on ' if e.active else 'off'}  {summary}")
        width = max((len(k) for k, _ in e.details), default=0)
        lines += [f"{'':<22}frame {k:<{width}}  {v}" for k, v in e.details]
        if e.problem:
            lines.append(f"{'':<22}problem: {e.problem}")
    return "\n".join(lines)
