"""What a txt2vid request means, checked before anything is queued.

Every bad input comes back as an ApiError: 422 (413 when too large) with the
field named, e.g. `deforum_settings[0].translation_x: cannot evaluate "sin(t"
at frame 12: ...`. The settings go through the same parsers the renderer uses,
so what is accepted here also renders. URLs the render will use (`init_image`
with `use_init`, `soundtrack_path` with `add_soundtrack: File`, `color_coherence_image_path` with
color_coherence Image, each image of `init_images` with `use_looper`, `video_init_path` and `video_mask_path` in
Video Input mode) are fetched here,
through deforum_wan.service.fetch, and replaced by the saved file: the worker and
ffmpeg only ever read local files, and a URL we refuse is a 422 naming its field.

The request and response shapes are pydantic models written with what pydantic
1 (A1111) and 2 (Forge) share; everything deeper is plain Python, so both hosts
answer alike. Nothing here runs on the event loop (api.py hands it to a thread).
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

from pydantic import BaseModel, ValidationError

from ..renderer import fetch
from . import jobs
from .request_errors import ApiError, Loc, field_name  # noqa: F401 - api.py re-exports field_name
from .sources import SourceChecks, inside, switched_on, video_keys
from .overrides import (  # noqa: F401 - api.py re-exports MAX_STEPS
    MAX_SIDE, MAX_STEPS, MIN_SIDE, override_checks, parallel_problem,
)

log = logging.getLogger(__name__)

# Limits, documented in the README.
MAX_BODY_BYTES = 5 * 1024 * 1024  # request body; larger -> 413
MAX_SETTINGS_PER_BATCH = 100
MAX_FRAMES = 10_000  # about 11 minutes at 15 fps
MAX_DEFORUM_STEPS = 1000  # Deforum's own `steps` key (not used by Wan)
MIN_FPS, MAX_FPS = 1.0, 240.0
MAX_TEXT_CHARS = 20_000  # one prompt or schedule string
PROMPT_KEYS = ("prompts", "animation_prompts", "wan_prompts")

_DRIVE = re.compile(r"^[A-Za-z]:")
_TIMESTRING = re.compile(r"^\d{14}$")
# May be data: URLs (or, parseq_manifest, the manifest itself) longer than MAX_TEXT_CHARS.
_DATA_URL_KEYS = ("init_image", "init_images", "video_init_path", "video_mask_path", "parseq_manifest")

PolicySource = Union[fetch.FetchPolicy, Callable[[], fetch.FetchPolicy], None]


class Txt2VidRequest(BaseModel):
    """POST /deforum_wan/txt2vid, as Deforum's POST /deforum_api/batches: settings objects plus overrides."""

    deforum_settings: List[Dict[str, Any]]
    options_overrides: Optional[Dict[str, Any]] = None


class BatchAccepted(BaseModel):
    message: str
    batch_id: str
    job_ids: List[str]


def validate_model(model: type[BaseModel], data: Any) -> BaseModel:
    """Pydantic 2's model_validate or pydantic 1's parse_obj; errors become a 422 naming the field."""
    validate = getattr(model, "model_validate", None) or model.parse_obj
    try:
        return validate(data)
    except ValidationError as exc:
        raise ApiError(422, [(tuple(e["loc"]), e["msg"]) for e in exc.errors()]) from None


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema = getattr(model, "model_json_schema", None) or model.schema
    return schema()


def parse_json_body(raw: bytes) -> Any:
    """The request body as JSON; a 422 naming the body when it is not."""
    if not raw.strip():
        raise ApiError(422, [(("body",), "empty; send a JSON object with deforum_settings")])
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ApiError(422, [(("body",), "not UTF-8 text")]) from None
    except json.JSONDecodeError as exc:
        raise ApiError(422, [(("body",), f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")]) from None
    except RecursionError:
        raise ApiError(422, [(("body",), "JSON nested too deeply")]) from None


# ---------------------------------------------------------------- small checks


def _non_finite(value: Any, loc: list[Any], found: list[tuple[list[Any], str]], depth: int = 0) -> None:
    """NaN/Infinity anywhere in the JSON (Python's json accepts them; they are never valid here)."""
    if depth > 40:
        found.append((loc, "nested too deeply"))
        return
    if isinstance(value, float) and not math.isfinite(value):
        found.append((loc, f"{value} is not a number; use a finite value"))
    elif isinstance(value, dict):
        for k, v in value.items():
            _non_finite(v, [*loc, str(k)], found, depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _non_finite(v, [*loc, i], found, depth + 1)


def _text_limits(data: Mapping[str, Any], loc: tuple[Any, ...]) -> None:
    """No string over MAX_TEXT_CHARS, prompts included (they sit one level down)."""
    for key, value in data.items():
        if isinstance(value, str) and len(value) > MAX_TEXT_CHARS and key not in _DATA_URL_KEYS:
            raise ApiError(422, [((*loc, key), f"at most {MAX_TEXT_CHARS} characters, got {len(value)}")])
        if key in PROMPT_KEYS and isinstance(value, dict):
            for frame, text in value.items():
                if isinstance(text, str) and len(text) > MAX_TEXT_CHARS:
                    raise ApiError(422, [((*loc, key, str(frame)), f"at most {MAX_TEXT_CHARS} characters per prompt, "
                                                                   f"got {len(text)}")])


# ---------------------------------------------------------------- the validator


class Validator(SourceChecks):
    """Checks a txt2vid request against the queue's folders; returns settings ready for the queue.

    `fetch_policy` is a FetchPolicy or a function returning one (the web UI's
    options are read when a URL is fetched, so a changed setting applies at once).
    """

    def __init__(self, queue: jobs.JobQueue, allowed_roots: Sequence[str | os.PathLike[str]] | None = None,
                 model_roots: Sequence[str | os.PathLike[str]] | None = None, fetch_policy: PolicySource = None):
        self.queue = queue
        roots = list(allowed_roots) if allowed_roots else [queue.outdir]
        self.allowed_roots = [Path(r).expanduser().resolve() for r in roots]
        models = list(model_roots) if model_roots else ([queue.models_dir] if queue.models_dir else [])
        self.model_roots = [Path(r).expanduser().resolve() for r in models]
        self._policy = fetch_policy

    def policy(self) -> fetch.FetchPolicy:
        source = self._policy
        return source() if callable(source) else (source or fetch.FetchPolicy())

    @property
    def inputs_folder(self) -> Path:
        """Where data: URLs and fetched URLs are saved for the worker to read."""
        return Path(self.queue.outdir) / "deforum_wan_api_inputs"

    # -- request

    def request(self, body: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """(settings list, options_overrides) ready for JobQueue.submit; ApiError otherwise."""
        if isinstance(body, (bytes, bytearray)):
            body = parse_json_body(bytes(body))
        if not isinstance(body, dict):
            raise ApiError(422, [(("body",), f"the request body must be a JSON object, got {type(body).__name__}")])
        found: list[tuple[list[Any], str]] = []
        _non_finite(body, [], found)
        if found:
            raise ApiError(422, found[:20])
        overrides, spec_info = self.overrides(body.get("options_overrides"))
        raw = body.get("deforum_settings")
        if raw is None:
            raise ApiError(422, [(("deforum_settings",), "missing; give a Deforum settings object or a list of them")])
        items = raw if isinstance(raw, list) else [raw]
        if not items:
            raise ApiError(422, [(("deforum_settings",), "empty list; give at least one settings object")])
        if len(items) > MAX_SETTINGS_PER_BATCH:
            raise ApiError(422, [(("deforum_settings",), f"at most {MAX_SETTINGS_PER_BATCH} settings objects per request")])
        validate_model(Txt2VidRequest, {"deforum_settings": items, "options_overrides": overrides})
        errors: list[tuple[Loc, str]] = []
        checked: list[tuple[tuple[Any, ...], dict[str, Any], Any]] = []
        for i, item in enumerate(items):
            loc: tuple[Any, ...] = ("deforum_settings", i) if isinstance(raw, list) else ("deforum_settings",)
            try:
                data, parsed = self.settings(item, overrides, spec_info, loc)
                checked.append((loc, data, parsed))
            except ApiError as exc:
                errors += exc.errors
            except Exception as exc:  # any parser surprise is still the input's fault, never a 500
                log.debug("unexpected validation error", exc_info=True)
                errors.append((_guess_loc(str(exc), item if isinstance(item, dict) else {}, loc),
                               f"{type(exc).__name__}: {exc}"))
        if errors:
            raise ApiError(422, errors)
        # Only a request that is otherwise valid costs a download.
        fetched: dict[tuple[str, str], str] = {}
        for index, (loc, data, _parsed) in enumerate(checked):  # a Parseq manifest URL: checked again with it
            if fetch.is_url(data.get("parseq_manifest")):
                checked[index] = (loc, *self.with_fetched_manifest(items[index], data, overrides, spec_info, loc,
                                                                   fetched))
        for loc, data, parsed in checked:
            self.fetch_used_urls(data, parsed, loc, fetched)
            if data.get("animation_mode") == "Video Input":
                self.check_video(data, loc)
        return [data for _loc, data, _parsed in checked], overrides

    def overrides(self, raw: Any) -> tuple[dict[str, Any], tuple[Any, tuple[str, ...]]]:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ApiError(422, [(("options_overrides",), f"expected an object, got {type(raw).__name__}")])
        checks = override_checks()
        errors: list[tuple[Loc, str]] = []
        out: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in checks:
                errors.append((("options_overrides", key), f"unknown option; allowed: {', '.join(sorted(checks))}"))
                continue
            if value is None:
                continue
            try:
                out[key] = checks[key](value)
            except ValueError as exc:
                errors.append((("options_overrides", key), str(exc)))
        problem = None if errors else parallel_problem(out)
        if problem:
            errors.append((("options_overrides", "gpus"), problem))
        if errors:
            raise ApiError(422, errors)
        spec_info = self.models(out)
        return out, spec_info

    def _model_info(self, name: str, key: str) -> Any:
        from ..renderer.models import ModelError, find_model

        loc = ("options_overrides", key)
        if "\x00" in name or ".." in re.split(r"[\\/]", name):
            raise ApiError(422, [(loc, "must not contain '..'")])
        candidate = Path(name).expanduser()
        if candidate.is_absolute() or os.sep in name or "/" in name:
            resolved = candidate.resolve()
            if not any(inside(resolved, root) for root in self.model_roots):
                roots = ", ".join(str(r) for r in self.model_roots) or "none configured"
                raise ApiError(422, [(loc, f"model folders must be inside the models folder ({roots})")])
        try:
            return find_model(name, self.queue.models_dir)
        except (ModelError, OSError, ValueError) as exc:
            raise ApiError(422, [(loc, str(exc))]) from None

    def models(self, overrides: dict[str, Any]) -> tuple[Any, tuple[str, ...]]:
        """The ModelSpec to plan with and the extra modes an I2V model adds."""
        from ..core.specs import I2V, MODEL_SPECS

        spec = None
        try:
            model = self.queue.resolve_model(overrides.get("model"))
        except ValueError as exc:
            raise ApiError(422, [(("options_overrides", "model"), str(exc))]) from None
        if model in MODEL_SPECS and "model" not in overrides and not self.queue.models_dir:
            spec = MODEL_SPECS[model]
        else:
            info = self._model_info(model, "model")
            spec = info.spec
            if "model" in overrides:
                overrides["model"] = str(info.path)
        extra: tuple[str, ...] = ()
        if overrides.get("i2v_model"):
            i2v = self._model_info(overrides["i2v_model"], "i2v_model")
            overrides["i2v_model"] = str(i2v.path)
            extra = tuple(i2v.spec.modes)
        if spec.kind == "ti2v-5b":
            extra += (I2V,)
        return spec, extra

    # -- one settings object

    def settings(self, item: Any, overrides: Mapping[str, Any], spec_info: tuple[Any, tuple[str, ...]],
                 loc: tuple[Any, ...]) -> tuple[dict[str, Any], Any]:
        """The settings object as the queue stores it, and the parsed DeforumSettings."""
        from ..core.plan import PlanOptions, plan_clips
        from ..core.prompts import prompt_keyframes
        from ..core.schedules import ScheduleError, parse_schedule
        from ..core import parseq
        from ..core.settings import CAMERA_KEYS, SettingsError, is_parseq_manifest, settings_from_dict

        if not isinstance(item, dict):
            raise ApiError(422, [(loc, f"expected a settings object, got {type(item).__name__}")])
        data = dict(item)
        wan_prompts = data.get("wan_prompts")
        given = is_parseq_manifest(data) or parseq.requested(data.get("parseq_manifest"))  # it may set the prompts
        has_wan_prompts = isinstance(wan_prompts, dict) and bool(wan_prompts)
        if not any(k in data for k in ("prompts", "animation_prompts")) and not has_wan_prompts and not given:
            raise ApiError(422, [((*loc, "prompts"), 'missing; add at least one prompt, e.g. {"0": "a cat"}')])
        _text_limits(data, loc)
        if "batch_name" in data:
            self.check_batch_name(data["batch_name"], (*loc, "batch_name"))
        for key, kind in (("init_image", fetch.IMAGE), ("soundtrack_path", fetch.AUDIO),
                          ("color_coherence_image_path", fetch.IMAGE), *video_keys(data)):
            if key in data:
                data[key] = self.check_source(data[key], (*loc, key), kind)
        if "init_images" in data and switched_on(data.get("use_looper")):  # guided images: each one a source
            data["init_images"] = self.check_guided_images(data["init_images"], (*loc, "init_images"))
        if parseq.requested(data.get("parseq_manifest")):
            data["parseq_manifest"] = self.parseq_source(data["parseq_manifest"], (*loc, "parseq_manifest"))
        pending = fetch.is_url(data.get("parseq_manifest"))  # fetched by `request` once everything else is valid
        try:
            s = settings_from_dict({k: v for k, v in data.items() if not (pending and k == "parseq_manifest")})
        except SettingsError as exc:
            raise ApiError(422, [_settings_error(exc, loc, data)]) from None
        limits = (("max_frames", s.max_frames, 1, MAX_FRAMES), ("W", s.W, MIN_SIDE, MAX_SIDE),
                  ("H", s.H, MIN_SIDE, MAX_SIDE), ("fps", s.fps, MIN_FPS, MAX_FPS),
                  ("steps", s.steps, 1, MAX_DEFORUM_STEPS))
        for key, value, low, high in limits:
            if not low <= value <= high:
                problem = f"must be between {low:g} and {high:g}, got {value:g}"
                if s.parseq and (key, True) in (("max_frames", s.parseq.manages_max_frames),
                                                ("fps", s.parseq.manages_fps)):  # the manifest set it
                    raise ApiError(422, [((*loc, "parseq_manifest"), f"{key} {problem}")])
                raise ApiError(422, [((*loc, key), problem)])
        if s.resume_from_timestring and not _TIMESTRING.match(s.resume_timestring or ""):
            raise ApiError(422, [((*loc, "resume_timestring"), "expected the 14-digit timestring of a render "
                                                                f"(YYYYmmddHHMMSS), got {s.resume_timestring!r}")])
        schedule_keys = list(CAMERA_KEYS) + (["seed_schedule"] if s.seed_behavior == "schedule" else [])
        try:
            for key in schedule_keys:
                parse_schedule(getattr(s, key), s.max_frames, s.seed, key=key)
            prompt_keyframes(s)
            options = {k: overrides[k] for k in jobs.PLAN_OVERRIDES if k in overrides}
            if options.get("seed", -1) == -1:
                # -1 is resolved when the job starts; any concrete seed checks the same things
                options["seed"] = s.seed if s.seed != -1 else 0
            spec, extra = spec_info
            plan_clips(s, spec, PlanOptions(**options, extra_modes=extra))
        except ScheduleError as exc:
            raise ApiError(422, [((*loc, exc.key.split("[", 1)[0]), _after_key(str(exc), exc.key))]) from None
        except SettingsError as exc:
            raise ApiError(422, [_settings_error(exc, loc, data)]) from None
        except ValueError as exc:  # PlanError and friends: "name: problem"
            raise ApiError(422, [_plan_error(str(exc), loc, data, overrides)]) from None
        return data, s

    def check_batch_name(self, value: Any, loc: tuple[Any, ...]) -> None:
        if value is None:
            return
        if not isinstance(value, str):
            raise ApiError(422, [(loc, f"expected text, got {type(value).__name__}")])
        if ".." in value:
            raise ApiError(422, [(loc, "must not contain '..'")])
        if value.startswith(("/", "\\", "~")) or _DRIVE.match(value):
            raise ApiError(422, [(loc, "must be a folder name, not a path")])
        if "\x00" in value:
            raise ApiError(422, [(loc, "must not contain NUL characters")])
        if len(value) > 200:
            raise ApiError(422, [(loc, "at most 200 characters")])

_ALIASES = {"steps": ("wan_steps", "wan_inference_steps"), "guidance": ("wan_guidance", "wan_guidance_scale"),
            "overlap": ("wan_overlap", "wan_frame_overlap", "max_clip_frames", "wan_max_clip_frames"),
            "max_clip_frames": ("wan_max_clip_frames", "overlap", "wan_overlap", "wan_frame_overlap"),
            "resolution": ("wan_resolution",)}


_MISSING_FIELDS = ("init_image", "use_init")


def _settings_key(name: str, data: Mapping[str, Any], overrides: Mapping[str, Any] = ()) -> tuple[str, ...] | None:
    """The key the user wrote for an option a parser names (`steps` -> options_overrides.steps or wan_steps)."""
    candidates = (name, f"wan_{name}", *_ALIASES.get(name.removeprefix("wan_"), ()))
    for key in candidates:
        if key in overrides:
            return ("options_overrides", key)
    for key in candidates:
        if key in data:
            return (key,)
    return None


def _settings_error(exc: Any, loc: tuple[Any, ...], data: Mapping[str, Any]) -> tuple[Loc, str]:
    key = exc.key.split("[", 1)[0] if exc.key else ""
    if key:
        return (*loc, key), exc.problem
    return _guess_loc(str(exc), data, loc), str(exc)


def _plan_error(text: str, loc: tuple[Any, ...], data: Mapping[str, Any], overrides: Mapping[str, Any]) -> tuple[Loc, str]:
    name, _, rest = text.partition(": ")
    if rest and re.fullmatch(r"[A-Za-z_]\w*", name):
        where = _settings_key(name, data, overrides)
        if where is not None:
            return ((*where,) if where[0] == "options_overrides" else (*loc, *where)), rest
        if name in _MISSING_FIELDS:  # a field the settings should have given (an I2V model's init_image)
            return (*loc, name), rest
    return _guess_loc(text, data, loc, overrides), text


def _guess_loc(text: str, data: Mapping[str, Any], loc: tuple[Any, ...],
               overrides: Mapping[str, Any] = ()) -> tuple[Any, ...]:
    """The field a message mentions (longest key first); the settings object when it mentions none."""
    for key in sorted(overrides, key=len, reverse=True):
        if re.search(rf"\b{re.escape(key)}\b", text):
            return ("options_overrides", key)
    for key in sorted((k for k in data if isinstance(k, str)), key=len, reverse=True):
        if re.search(rf"\b{re.escape(key)}\b", text):
            return (*loc, key)
    return loc


def _after_key(message: str, key: str) -> str:
    prefix = f"{key}: "
    return message[len(prefix):] if message.startswith(prefix) else message

