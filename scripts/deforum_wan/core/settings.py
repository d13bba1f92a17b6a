"""Deforum settings files, read the way Deforum reads them and written back losslessly.

Deforum saves its settings as a JSON object in a `.txt` file. Users tune these for
hours, so we keep every key we do not understand, and saving writes a file that
Deforum itself can load again (JSON, indent 4, `ensure_ascii=False`).

`DeforumSettings` is frozen: the rest of the pipeline (schedules, movement, plan)
reads it and never changes it. Use `dataclasses.replace` to derive a new one; its
`to_dict()` keeps the original file's keys and only rewrites fields that changed.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

from . import parseq

# Deforum's own defaults (deforum_helpers/args.py), used when a key is absent.
DEFAULT_ZOOM = "0: (1.0025+0.002*sin(1.25*3.14*t/30))"
DEFAULT_SEED_SCHEDULE = '0:(s), 1:(-1), "max_f-2":(-1), "max_f-1":(s)'

CAMERA_KEYS = (
    "angle",
    "zoom",
    "translation_x",
    "translation_y",
    "translation_z",
    "transform_center_x",
    "transform_center_y",
    "rotation_3d_x",
    "rotation_3d_y",
    "rotation_3d_z",
    "fov_schedule",
)
SEED_BEHAVIORS = ("iter", "fixed", "random", "ladder", "alternate", "schedule")
ANIMATION_MODES = ("2D", "3D", "Video Input", "Interpolation", "None")

MAX_FRAMES_LIMIT = 1_000_000
MAX_SIDE = 16384
#: Longest prompt text (one keyframe's prompt, or the global positive/negative
#: wrappers). Wan's text encoder reads 512 tokens; this only stops runaway input.
MAX_PROMPT_CHARS = 20_000
#: Lowest fps: below one frame a second a timeline is a slideshow, and the plan
#: would need more Wan frames per output frame than a clip holds.
MIN_FPS = 1
MAX_FPS = 1000
_TIMESTRING = re.compile(r"\d{14}")


class SettingsError(ValueError):
    """A settings value is missing or malformed; the message names the key."""

    def __init__(self, key: str, problem: str):
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}" if key else problem)


@dataclass(frozen=True)
class DeforumSettings:
    """The Deforum settings Deforum Wan uses, typed, plus everything else untouched."""

    prompts: tuple[tuple[str, str], ...] = (("0", "a beautiful landscape"),)
    positive_prompts: str = ""
    negative_prompts: str = ""
    W: int = 512
    H: int = 512
    fps: float = 15
    max_frames: int = 120
    seed: int = -1
    seed_behavior: str = "iter"
    seed_iter_N: int = 1
    seed_schedule: str = DEFAULT_SEED_SCHEDULE
    strength_schedule: str = "0: (0.65)"
    cfg_scale_schedule: str = "0: (7)"
    steps: int = 25
    animation_mode: str = "2D"
    angle: str = "0: (0)"
    zoom: str = DEFAULT_ZOOM
    translation_x: str = "0: (0)"
    translation_y: str = "0: (0)"
    translation_z: str = "0: (1.75)"
    transform_center_x: str = "0: (0.5)"
    transform_center_y: str = "0: (0.5)"
    rotation_3d_x: str = "0: (0)"
    rotation_3d_y: str = "0: (0)"
    rotation_3d_z: str = "0: (0)"
    fov_schedule: str = "0: (70)"
    shake_name: str = "None"
    shake_intensity: float = 1.0
    shake_speed: float = 1.0
    batch_name: str = "Deforum_{timestring}"
    resume_from_timestring: bool = False
    resume_timestring: str = ""
    soundtrack_path: str = ""
    add_soundtrack: str = "None"
    use_init: bool = False
    init_image: str | None = None
    wan: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    # The file as loaded, every key in order: unknown keys survive a save untouched.
    raw: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), compare=False, repr=False)
    # Typed values as loaded, so saving rewrites only the fields that changed.
    loaded: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)
    # Which key the prompts came from, so saving writes them back under the same name.
    prompts_key: str = "prompts"
    # What a Parseq manifest drives (core/parseq.py), when the settings name one.
    parseq: parseq.ParseqSummary | None = field(default=None, compare=False, repr=False)

    def wan_value(self, name: str, default: Any = None) -> Any:
        """A `wan_*` option; `name` may be given with or without the prefix."""
        key = name if name.startswith("wan_") else f"wan_{name}"
        return self.wan.get(key, default)

    def with_wan(self, **values: Any) -> "DeforumSettings":
        """A copy with `wan_*` options set (keys given without the prefix)."""
        merged = dict(self.wan)
        merged.update({f"wan_{k}" if not k.startswith("wan_") else k: v for k, v in values.items()})
        return replace(self, wan=MappingProxyType(merged))

    @property
    def seconds(self) -> float:
        return self.max_frames / self.fps

    def to_dict(self) -> dict[str, Any]:
        """The settings as Deforum saves them: the original keys, changed fields rewritten."""
        out = {k: self.wan[k] if k in self.wan else v for k, v in self.raw.items() if not _is_wan(k) or k in self.wan}
        for key, value in _typed_to_raw(self).items():
            if self.loaded is None or key not in self.loaded or self.loaded[key] != value:
                out[key] = value
                alias = _OLD_NAMES.get(key)
                if alias in out:
                    out[alias] = value
        out.update(self.wan)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=4, ensure_ascii=False)


# Keys whose values are typed fields; everything else stays in `raw` verbatim.
_SCALAR_FIELDS = {
    f.name
    for f in fields(DeforumSettings)
    if f.name not in ("prompts", "wan", "raw", "loaded", "prompts_key", "positive_prompts", "negative_prompts",
                      "parseq")
}
def _is_wan(key: Any) -> bool:
    return isinstance(key, str) and key.startswith("wan_")


_OLD_NAMES = {"positive_prompts": "animation_prompts_positive", "negative_prompts": "animation_prompts_negative"}


def _typed_to_raw(s: DeforumSettings) -> dict[str, Any]:
    raw: dict[str, Any] = {name: getattr(s, name) for name in _SCALAR_FIELDS}
    raw[s.prompts_key] = {k: v for k, v in s.prompts}
    raw["positive_prompts"] = s.positive_prompts
    raw["negative_prompts"] = s.negative_prompts
    if isinstance(raw["fps"], float) and raw["fps"].is_integer():
        raw["fps"] = int(raw["fps"])
    return raw


def _int(key: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool):
        raise SettingsError(key, f"expected a whole number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise SettingsError(key, f"expected a whole number, got {value!r}") from None
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise SettingsError(key, f"expected a whole number, got {value!r}")
        value = int(value)
    if not isinstance(value, int):
        raise SettingsError(key, f"expected a whole number, got {type(value).__name__} {value!r}")
    if low is not None and value < low:
        raise SettingsError(key, f"must be at least {low}, got {value}")
    if high is not None and value > high:
        raise SettingsError(key, f"must be at most {high}, got {value}")
    return value


def _float(key: str, value: Any, *, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool):
        raise SettingsError(key, f"expected a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise SettingsError(key, f"expected a number, got {value!r}") from None
    if not isinstance(value, (int, float)):
        raise SettingsError(key, f"expected a number, got {type(value).__name__} {value!r}")
    value = _finite_float(key, value)
    if not math.isfinite(value):
        raise SettingsError(key, f"expected a finite number, got {value!r}")
    if low is not None and value < low:
        raise SettingsError(key, f"must be at least {low:g}, got {value:g}")
    if high is not None and value > high:
        raise SettingsError(key, f"must be at most {high:g}, got {value:g}")
    return value


def _finite_float(key: str, value: int | float) -> float:
    """float(value), with a whole number too large for a float named as the key's problem (not an OverflowError)."""
    try:
        return float(value)
    except OverflowError:
        raise SettingsError(key, f"the number is too large ({len(str(abs(value)))} digits)") from None


def _str(key: str, value: Any, *, allow_none: bool = False) -> str | None:
    if value is None:
        if allow_none:
            return None
        raise SettingsError(key, "expected text, got null")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise SettingsError(key, f"expected text, got {type(value).__name__} {value!r}")
    return value if isinstance(value, str) else str(value)


def _schedule(key: str, value: Any) -> str:
    """Schedules are strings; a bare number from an API client is a constant schedule."""
    if isinstance(value, bool):
        raise SettingsError(key, f"expected a schedule string like '0: (1.0)', got {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(_finite_float(key, value)):
            raise SettingsError(key, f"expected a finite number, got {value!r}")
        return f"0: ({value})"
    if not isinstance(value, str):
        raise SettingsError(key, f"expected a schedule string like '0: (1.0)', got {type(value).__name__}")
    return value


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        return value.strip().lower() in ("true", "1", "yes", "on")
    raise SettingsError(key, f"expected true or false, got {value!r}")


def _prompts(key: str, value: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(value, str):
        # Deforum's UI keeps animation_prompts as JSON text.
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise SettingsError(key, f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(value, Mapping):
        raise SettingsError(key, f"expected an object of frame: prompt pairs, got {type(value).__name__}")
    if not value:
        raise SettingsError(key, "no prompts given; add at least one, e.g. {\"0\": \"a cat\"}")
    out = []
    for frame, text in value.items():
        if not isinstance(text, str):
            raise SettingsError(f"{key}[{frame!r}]", f"expected prompt text, got {type(text).__name__}")
        check_prompt_length(f"{key}[{str(frame)!r}]", text)
        out.append((str(frame), text))
    return tuple(out)


def check_prompt_length(key: str, text: str) -> str:
    """Refuse a prompt longer than MAX_PROMPT_CHARS, naming its key."""
    if len(text) > MAX_PROMPT_CHARS:
        raise SettingsError(key, f"at most {MAX_PROMPT_CHARS} characters per prompt, got {len(text)}")
    return text


def is_parseq_manifest(data: Mapping[str, Any]) -> bool:
    """Parseq's export: `rendered_frames` per frame and `meta.generated_by` "sd_parseq"."""
    meta = data.get("meta")
    by = str(meta.get("generated_by", "")) if isinstance(meta, Mapping) else ""
    return "rendered_frames" in data or "parseq" in by.lower()


ManifestLoader = Callable[[str], Any]


def settings_from_dict(data: Mapping[str, Any], *,
                       load_manifest: ManifestLoader | None = None) -> DeforumSettings:
    """Build settings from a Deforum settings object; unknown keys are kept verbatim.

    A `parseq_manifest` (or a Parseq manifest given as the settings: then Deforum's
    defaults plus the manifest) sets what it manages (core/parseq.py); `load_manifest`
    reads one named by a file path or URL, under the caller's rules.
    """
    if not isinstance(data, Mapping):
        raise SettingsError("", f"settings must be a JSON object, got {type(data).__name__}")
    if is_parseq_manifest(data):
        data = {parseq.KEY: dict(data)}
    settings = _from_dict(data)
    if not parseq.requested(data.get(parseq.KEY)):
        return settings
    try:
        manifest, source = parseq.resolve(data[parseq.KEY], load_manifest)
        values, summary = parseq.overrides(data, manifest, max_frames=settings.max_frames, source=source)
    except parseq.ParseqError as e:
        raise SettingsError(e.key, str(e)) from None
    try:
        settings = _from_dict({**data, **values, parseq.KEY: manifest})
    except SettingsError as e:
        if e.key.split("[", 1)[0] in values:  # a value the manifest set
            raise SettingsError(parseq.KEY, f"{e.key}: {e.problem}") from None
        raise
    return replace(settings, parseq=replace(summary, fps=settings.fps))


def _from_dict(data: Mapping[str, Any]) -> DeforumSettings:
    values: dict[str, Any] = {}
    take = data.__getitem__

    prompts_key = "prompts"
    for candidate in ("prompts", "animation_prompts"):
        if candidate in data:
            prompts_key = candidate
            values["prompts"] = _prompts(candidate, take(candidate))
            break
    values["prompts_key"] = prompts_key
    # Newer Deforum saves positive_prompts/negative_prompts, older animation_prompts_*.
    for name, old in (("positive_prompts", "animation_prompts_positive"), ("negative_prompts", "animation_prompts_negative")):
        new_value = _str(name, data[name], allow_none=True) if name in data else None
        old_value = _str(old, data[old], allow_none=True) if old in data else None
        values[name] = check_prompt_length(name, new_value or old_value or "")

    ints = {
        "W": dict(low=16, high=MAX_SIDE),
        "H": dict(low=16, high=MAX_SIDE),
        "max_frames": dict(low=1, high=MAX_FRAMES_LIMIT),
        "seed": dict(low=-1, high=2**32 - 1),
        "seed_iter_N": dict(low=1),
        "steps": dict(low=1, high=1000),
    }
    for key, bounds in ints.items():
        if key in data:
            values[key] = _int(key, take(key), **bounds)
    if "fps" in data:
        fps = _float("fps", take("fps"), low=MIN_FPS, high=MAX_FPS)
        values["fps"] = int(fps) if fps.is_integer() else fps
    for key in ("shake_intensity", "shake_speed"):
        if key in data:
            values[key] = _float(key, take(key), low=0)
    for key in ("seed_schedule", "strength_schedule", "cfg_scale_schedule", *CAMERA_KEYS):
        if key in data:
            values[key] = _schedule(key, take(key))
    for key in ("batch_name", "resume_timestring", "soundtrack_path", "add_soundtrack", "shake_name"):
        if key in data:
            text = _str(key, take(key), allow_none=True)
            values[key] = "" if text is None else text
    if values.get("resume_timestring") and not _TIMESTRING.fullmatch(values["resume_timestring"]):
        raise SettingsError("resume_timestring", "expected the 14-digit timestring of a render (YYYYmmddHHMMSS), "
                                                 f"got {values['resume_timestring']!r}")
    if "init_image" in data:
        values["init_image"] = _str("init_image", take("init_image"), allow_none=True)
    for key in ("resume_from_timestring", "use_init"):
        if key in data:
            values[key] = _bool(key, take(key))
    if "seed_behavior" in data:
        behavior = _str("seed_behavior", take("seed_behavior"))
        if behavior not in SEED_BEHAVIORS:
            raise SettingsError("seed_behavior", f"unknown value {behavior!r}; expected one of {', '.join(SEED_BEHAVIORS)}")
        values["seed_behavior"] = behavior
    if "animation_mode" in data:
        mode = _str("animation_mode", take("animation_mode"))
        if mode not in ANIMATION_MODES:
            raise SettingsError("animation_mode", f"unknown value {mode!r}; expected one of {', '.join(ANIMATION_MODES)}")
        values["animation_mode"] = mode

    wan = {k: v for k, v in data.items() if _is_wan(k)}
    settings = DeforumSettings(**values, wan=MappingProxyType(wan), raw=MappingProxyType(dict(data)))
    return replace(settings, loaded=MappingProxyType(_typed_to_raw(settings)))


def loads_settings(text: str, *, source: str = "settings",
                   load_manifest: ManifestLoader | None = None) -> DeforumSettings:
    """Parse settings JSON text; `source` names it in errors."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise SettingsError("", f"{source}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    return settings_from_dict(data, load_manifest=load_manifest)


def load_settings(source: str | Path | Mapping[str, Any], *,
                  load_manifest: ManifestLoader | None = None) -> DeforumSettings:
    """Load a Deforum settings file (`.txt`/`.json`), a JSON string or a dict (`load_manifest`: settings_from_dict)."""
    if isinstance(source, Mapping):
        return settings_from_dict(source, load_manifest=load_manifest)
    if isinstance(source, str) and source.lstrip().startswith("{"):
        return loads_settings(source, load_manifest=load_manifest)
    path = Path(source).expanduser()
    if not path.is_file():
        raise SettingsError("", f"settings file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise SettingsError("", f"cannot read settings file {path}: {e}") from None
    return loads_settings(text, source=str(path), load_manifest=load_manifest)
