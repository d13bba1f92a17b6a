"""The txt2vid HTTP API under `/deforum_wan/`, shaped like Deforum's own API.

Deforum's clients post `{"deforum_settings": ..., "options_overrides": ...}` and
poll jobs whose fields are ACCEPTED/SUCCEEDED/..., QUEUED/GENERATING/..., so ours
take and return the same shapes (plus `wan_*` keys, the video path and timings).

A1111 runs fastapi 0.94 with pydantic 1 and Forge runs pydantic 2. The request
and response shapes are pydantic models written with what both versions share
(they check the envelope and document the routes in /docs); everything deeper is
a plain validation layer, so both hosts answer alike. Every bad input comes back as 422 (413 when too large) with
the field named, e.g. `deforum_settings[0].translation_x: cannot evaluate "sin(t"
at frame 12: ...`; the settings go through the same parsers the renderer uses, so
what is accepted here also renders.

Routes exist in the web UI only with `--api` or `--deforum-wan-api` (preload.py),
like Deforum's `--deforum-api`; the standalone app always has them.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ValidationError

from . import jobs

log = logging.getLogger(__name__)

PREFIX = "/deforum_wan"

# Limits, documented in the README.
MAX_BODY_BYTES = 5 * 1024 * 1024  # request body; larger -> 413
MAX_SETTINGS_PER_BATCH = 100
MAX_FRAMES = 10_000  # about 11 minutes at 15 fps
MAX_SIDE = 4096  # W, H, width, height
MIN_SIDE = 16
MAX_STEPS = 200  # Wan denoising steps (options_overrides.steps, wan_steps)
MAX_DEFORUM_STEPS = 1000  # Deforum's own `steps` key (not used by Wan)
MAX_FPS = 240.0
MAX_URL_CHARS = 4096
MAX_TEXT_CHARS = 20_000  # one prompt or schedule string

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
_DRIVE = re.compile(r"^[A-Za-z]:")
_DEVICE = re.compile(r"^(cpu|mps|(cuda|xpu)(:\d{1,2})?)$")
_DATA_URL = re.compile(r"^data:([\w.+\-]+/[\w.+\-]+)?((?:;[\w\-]+=[\w.\-]+)*)(;base64)?,(.*)$", re.S)
_AUDIO_TYPES = {"audio/mpeg": ".mp3", "audio/mp3": ".mp3", "audio/wav": ".wav", "audio/x-wav": ".wav",
                "audio/wave": ".wav", "audio/ogg": ".ogg", "audio/flac": ".flac", "audio/aac": ".aac",
                "audio/mp4": ".m4a", "audio/x-m4a": ".m4a"}


class ApiError(Exception):
    """A request problem for the client: HTTP status and (field, message) pairs."""

    def __init__(self, status: int, errors: Sequence[tuple[Sequence[Any], str]]):
        self.status = status
        self.errors = list(errors)
        super().__init__("; ".join(f"{field_name(loc)}: {msg}" for loc, msg in self.errors))


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


def field_name(loc: Sequence[Any]) -> str:
    """`("deforum_settings", 0, "zoom")` -> `deforum_settings[0].zoom`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def error_response(exc: ApiError) -> JSONResponse:
    """Deforum-style `message` plus FastAPI-style `detail` list, so either kind of client can read it."""
    messages = [f"{field_name(loc)}: {msg}" if loc else msg for loc, msg in exc.errors]
    return JSONResponse(status_code=exc.status, content={
        "message": "Invalid request: " + "; ".join(messages) if exc.status == 422 else "; ".join(messages),
        "errors": messages,
        "detail": [{"loc": ["body", *loc], "msg": msg, "type": "value_error"} for loc, msg in exc.errors],
    })


# ---------------------------------------------------------------- validation (pydantic-free)


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


def _int_option(value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"expected a whole number, got {value!r}")
    value = int(value)
    if not low <= value <= high:
        raise ValueError(f"must be between {low} and {high}, got {value}")
    return value


def _float_option(value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"must be between {low:g} and {high:g}, got {value!r}")
    return value


def _bool_option(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _choice(choices: Iterable[str]) -> Any:
    choices = tuple(choices)

    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    return check


def _text_option(limit: int) -> Any:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected text, got {type(value).__name__}")
        if len(value) > limit:
            raise ValueError(f"at most {limit} characters")
        return value

    return check


def _device(value: Any) -> str:
    if not isinstance(value, str) or not _DEVICE.match(value):
        raise ValueError(f"expected cpu, cuda, cuda:N, mps or xpu, got {value!r}")
    return value


def _override_checks() -> dict[str, Any]:
    from .models import ATTENTION_CHOICES, MEMORY_PROFILES
    from .plan import CONTINUITY

    return {
        "model": _text_option(1000),
        "i2v_model": _text_option(1000),
        "steps": lambda v: _int_option(v, 1, MAX_STEPS),
        "width": lambda v: _int_option(v, MIN_SIDE, MAX_SIDE),
        "height": lambda v: _int_option(v, MIN_SIDE, MAX_SIDE),
        "continuity": _choice(CONTINUITY),
        "overlap": lambda v: _int_option(v, 1, 117),
        "guidance": lambda v: _float_option(v, 0, 30),
        "flow_shift": lambda v: _float_option(v, 0.01, 50),
        "max_clip_frames": lambda v: _int_option(v, 5, 121),
        "seed": lambda v: _int_option(v, -1, 2**32 - 1),
        "sensitivity": lambda v: _float_option(v, 0.01, 100),
        "language": _choice(("en", "zh")),
        "blend": _bool_option,
        "color_match": _bool_option,
        "device": _device,
        "memory_profile": _choice(MEMORY_PROFILES),
        "attention": _choice(ATTENTION_CHOICES),
        "compile": _bool_option,
        "vae_tiling": _bool_option,
        "make_video": _bool_option,
        "enhance": _bool_option,
        "enhance_style": _text_option(2000),
        "enhance_style_strength": lambda v: _float_option(v, 0, 1),
        "enhance_target_language": _choice(("en", "zh")),
    }


class Validator:
    """Checks a txt2vid request against the queue's folders; returns settings ready for the queue."""

    def __init__(self, queue: jobs.JobQueue, allowed_roots: Sequence[str | os.PathLike[str]] | None = None,
                 model_roots: Sequence[str | os.PathLike[str]] | None = None):
        self.queue = queue
        roots = list(allowed_roots) if allowed_roots else [queue.outdir]
        self.allowed_roots = [Path(r).expanduser().resolve() for r in roots]
        models = list(model_roots) if model_roots else ([queue.models_dir] if queue.models_dir else [])
        self.model_roots = [Path(r).expanduser().resolve() for r in models]

    # -- request

    def request(self, body: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        if not isinstance(body, dict):
            raise ApiError(422, [((), f"the request body must be a JSON object, got {type(body).__name__}")])
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
        errors: list[tuple[Sequence[Any], str]] = []
        out: list[dict[str, Any]] = []
        for i, item in enumerate(items):
            loc: tuple[Any, ...] = ("deforum_settings", i) if isinstance(raw, list) else ("deforum_settings",)
            try:
                out.append(self.settings(item, overrides, spec_info, loc))
            except ApiError as exc:
                errors += exc.errors
            except Exception as exc:  # any parser surprise is still the input's fault, never a 500
                log.debug("unexpected validation error", exc_info=True)
                errors.append((loc, f"{type(exc).__name__}: {exc}"))
        if errors:
            raise ApiError(422, errors)
        return out, overrides

    def overrides(self, raw: Any) -> tuple[dict[str, Any], tuple[Any, tuple[str, ...]]]:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ApiError(422, [(("options_overrides",), f"expected an object, got {type(raw).__name__}")])
        checks = _override_checks()
        errors: list[tuple[Sequence[Any], str]] = []
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
        if errors:
            raise ApiError(422, errors)
        spec_info = self.models(out)
        return out, spec_info

    def _model_info(self, name: str, key: str) -> Any:
        from .models import ModelError, find_model

        loc = ("options_overrides", key)
        if "\x00" in name or ".." in re.split(r"[\\/]", name):
            raise ApiError(422, [(loc, "must not contain '..'")])
        candidate = Path(name).expanduser()
        if candidate.is_absolute() or os.sep in name or "/" in name:
            resolved = candidate.resolve()
            if not any(_inside(resolved, root) for root in self.model_roots):
                roots = ", ".join(str(r) for r in self.model_roots) or "none configured"
                raise ApiError(422, [(loc, f"model folders must be inside the models folder ({roots})")])
        try:
            return find_model(name, self.queue.models_dir)
        except (ModelError, OSError, ValueError) as exc:
            raise ApiError(422, [(loc, str(exc))]) from None

    def models(self, overrides: dict[str, Any]) -> tuple[Any, tuple[str, ...]]:
        """The ModelSpec to plan with and the extra modes an I2V model adds."""
        from .specs import I2V, MODEL_SPECS

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
                 loc: tuple[Any, ...]) -> dict[str, Any]:
        from .plan import PlanOptions, plan_clips
        from .prompts import prompt_keyframes
        from .schedules import ScheduleError, parse_schedule
        from .settings import CAMERA_KEYS, SettingsError, settings_from_dict

        if not isinstance(item, dict):
            raise ApiError(422, [(loc, f"expected a settings object, got {type(item).__name__}")])
        data = dict(item)
        wan_prompts = data.get("wan_prompts")
        if not any(k in data for k in ("prompts", "animation_prompts")) and not (isinstance(wan_prompts, dict) and wan_prompts):
            raise ApiError(422, [((*loc, "prompts"), 'missing; add at least one prompt, e.g. {"0": "a cat"}')])
        for key, value in data.items():
            if isinstance(value, str) and len(value) > MAX_TEXT_CHARS and key not in ("init_image",):
                raise ApiError(422, [((*loc, key), f"at most {MAX_TEXT_CHARS} characters")])
        if "batch_name" in data:
            self.check_batch_name(data["batch_name"], (*loc, "batch_name"))
        for key, kind in (("init_image", "image"), ("soundtrack_path", "audio")):
            if key in data:
                data[key] = self.check_source(data[key], (*loc, key), kind)
        try:
            s = settings_from_dict(data)
        except SettingsError as exc:
            key = exc.key.split("[", 1)[0] if exc.key else ""
            raise ApiError(422, [((*loc, key) if key else loc, exc.problem if key else str(exc))]) from None
        limits = (("max_frames", s.max_frames, MAX_FRAMES), ("W", s.W, MAX_SIDE), ("H", s.H, MAX_SIDE),
                  ("fps", s.fps, MAX_FPS), ("steps", s.steps, MAX_DEFORUM_STEPS))
        for key, value, high in limits:
            if value > high:
                raise ApiError(422, [((*loc, key), f"must be at most {high:g}, got {value:g}")])
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
            key = exc.key.split("[", 1)[0] if exc.key else ""
            raise ApiError(422, [((*loc, key) if key else loc, str(exc)[len(key) + 2:] if key else str(exc))]) from None
        except ValueError as exc:  # PlanError and friends: "name: problem"
            text = str(exc)
            name, _, rest = text.partition(": ")
            if rest and re.fullmatch(r"[A-Za-z_]\w*", name):
                where = ("options_overrides", name) if name in overrides else (*loc, _settings_key(name, data))
                raise ApiError(422, [(where, rest)]) from None
            raise ApiError(422, [(loc, text)]) from None
        return data

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

    def check_source(self, value: Any, loc: tuple[Any, ...], kind: str) -> Any:
        """init_image / soundtrack_path: http(s) URL, data URL (saved to a file), or a file inside the allowed folders."""
        if value is None:
            return None
        if not isinstance(value, str):
            raise ApiError(422, [(loc, f"expected text, got {type(value).__name__}")])
        text = value.strip()
        if text.lower() in ("", "none"):
            return value
        if text.lower().startswith("data:"):
            return self.save_data_url(text, loc, kind)
        if _SCHEME.match(text) and not _DRIVE.match(text):
            scheme = text.split(":", 1)[0].lower()
            if scheme not in ("http", "https"):
                raise ApiError(422, [(loc, f"{scheme}: URLs are not allowed; use http(s), a data: URL or a file "
                                           "inside the web UI's output or input folders")])
            from urllib.parse import urlsplit

            parts = urlsplit(text)
            if not parts.netloc or len(text) > MAX_URL_CHARS or any(c in text for c in "\x00\r\n "):
                raise ApiError(422, [(loc, "not a valid http(s) URL")])
            return text
        if "\x00" in text or ".." in re.split(r"[\\/]", text):
            raise ApiError(422, [(loc, "must not contain '..'")])
        if text.startswith("~"):
            raise ApiError(422, [(loc, "paths starting with '~' are not allowed")])
        path = Path(text)
        resolved = (path if path.is_absolute() else Path.cwd() / path).resolve()
        if not any(_inside(resolved, root) for root in self.allowed_roots):
            raise ApiError(422, [(loc, "only http(s) URLs, data: URLs and files inside the web UI's output or "
                                       "input folders are allowed")])
        return str(resolved)

    def save_data_url(self, text: str, loc: tuple[Any, ...], kind: str) -> str:
        match = _DATA_URL.match(text)
        if not match:
            raise ApiError(422, [(loc, "not a valid data: URL")])
        mime, _params, is_b64, payload = match.groups()
        try:
            data = base64.b64decode(payload, validate=True) if is_b64 else payload.encode("utf-8")
        except (binascii.Error, ValueError):
            raise ApiError(422, [(loc, "the data: URL is not valid base64")]) from None
        if not data:
            raise ApiError(422, [(loc, "the data: URL is empty")])
        if kind == "image":
            import io

            from PIL import Image, UnidentifiedImageError

            try:
                with Image.open(io.BytesIO(data)) as image:
                    image.verify()
                    suffix = "." + (image.format or "png").lower()
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
                raise ApiError(422, [(loc, "the data: URL is not an image PIL can read")]) from None
        else:
            if mime not in _AUDIO_TYPES:
                raise ApiError(422, [(loc, f"expected an audio data: URL ({', '.join(sorted(_AUDIO_TYPES))})")])
            suffix = _AUDIO_TYPES[mime]
        from . import outputs

        folder = Path(self.queue.outdir) / "deforum_wan_api_inputs"
        path = folder / f"{hashlib.sha256(data).hexdigest()[:24]}{suffix}"
        if not path.is_file():
            outputs.atomic_write_bytes(path, data)
        return str(path)


def _settings_key(name: str, data: Mapping[str, Any]) -> str:
    """A PlanError names an option (`steps`); point at the settings key the user wrote (`wan_steps`)."""
    for key in (name, f"wan_{name}"):
        if key in data:
            return key
    aliases = {"steps": "wan_inference_steps", "guidance": "wan_guidance_scale", "overlap": "wan_frame_overlap"}
    return aliases.get(name) if aliases.get(name) in data else name


def _after_key(message: str, key: str) -> str:
    prefix = f"{key}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


async def read_json_body(request: Request, limit: int = MAX_BODY_BYTES) -> Any:
    """The JSON body, refusing more than `limit` bytes by Content-Length and while streaming."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise ApiError(400, [((), "invalid Content-Length header")]) from None
        if declared > limit:
            raise ApiError(413, [((), f"request body is {declared} bytes; the limit is {limit} bytes")])
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, [((), f"request body exceeds the limit of {limit} bytes")])
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise ApiError(422, [((), "empty body; send a JSON object with deforum_settings")])
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ApiError(422, [((), "the body is not UTF-8 text")]) from None
    except json.JSONDecodeError as exc:
        raise ApiError(422, [((), f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")]) from None
    except RecursionError:
        raise ApiError(422, [((), "JSON nested too deeply")]) from None


# ---------------------------------------------------------------- routes


def _not_found(kind: str, ident: str) -> JSONResponse:
    return JSONResponse(status_code=404, content={"id": ident, "status": "NOT FOUND", "message": f"{kind} {ident} not found."})


def models_payload(queue: jobs.JobQueue) -> dict[str, Any]:
    """Wan models found in the models folder, and Qwen models when the enhancer can list them."""
    from .models import default_models_dir, scan_models

    root = Path(queue.models_dir) if queue.models_dir else default_models_dir()
    infos, problems = scan_models(root)
    payload: dict[str, Any] = {
        "models_dir": str(root),
        "default_model": queue.default_model,
        "models": [{"name": i.name, "kind": i.kind, "label": i.label, "path": str(i.path), "size_bytes": i.size_bytes,
                    "modes": list(i.spec.modes), "native_fps": i.spec.native_fps} for i in infos],
        "problems": [str(p) for p in problems],
        "qwen_models": [],
    }
    try:
        from .enhance import find_qwen_models

        payload["qwen_models"] = [
            {"name": q.name, "path": str(q.path), "params": q.params, "label": q.label, "source": q.source}
            for q in find_qwen_models(queue.models_dir)
        ]
    except (ImportError, AttributeError):
        pass  # no enhancer in this install
    except Exception:  # the enhancer is optional: its problems never break the models list
        log.debug("qwen model discovery failed", exc_info=True)
    return payload


def route_table(queue: jobs.JobQueue, *, allowed_roots: Sequence[str | os.PathLike[str]] | None = None,
                model_roots: Sequence[str | os.PathLike[str]] | None = None,
                max_body_bytes: int = MAX_BODY_BYTES) -> list[tuple[str, Any, list[str], int]]:
    """(path, endpoint, methods, status) for every route; plain functions, so any fastapi version can mount them."""
    from starlette.concurrency import run_in_threadpool

    validator = Validator(queue, allowed_roots, model_roots)

    async def txt2vid(request: Request) -> JSONResponse:
        try:
            body = await read_json_body(request, max_body_bytes)
            settings_list, overrides = await run_in_threadpool(validator.request, body)
            batch_id, job_ids = await run_in_threadpool(queue.submit, settings_list, overrides)
        except ApiError as exc:
            return error_response(exc)
        except ValueError as exc:
            return error_response(ApiError(422, [((), str(exc))]))
        return JSONResponse(status_code=202, content={"message": "Job(s) accepted", "batch_id": batch_id,
                                                      "job_ids": job_ids})

    def list_jobs() -> JSONResponse:
        return JSONResponse({r.id: r.to_dict() for r in queue.list()})

    def get_job(id: str) -> JSONResponse:  # noqa: A002 - Deforum's parameter name
        record = queue.get(id)
        return JSONResponse(record.to_dict(include_settings=True)) if record else _not_found("Job", id)

    def cancel_job(id: str) -> JSONResponse:  # noqa: A002
        try:
            cancelled = queue.cancel(id)
        except KeyError:
            return _not_found("Job", id)
        if cancelled:
            return JSONResponse({"id": id, "message": "Job cancelled."})
        return JSONResponse(status_code=400, content={
            "id": id, "message": f"Job with ID {id} not in a cancellable state. Has it already finished?"})

    def list_batches() -> JSONResponse:
        return JSONResponse(queue.batches())

    def get_batch(id: str) -> JSONResponse:  # noqa: A002
        records = queue.batch(id)
        return JSONResponse([r.to_dict() for r in records]) if records else _not_found("Batch", id)

    def cancel_batch(id: str) -> JSONResponse:  # noqa: A002
        try:
            ids = queue.cancel_batch(id)
        except KeyError:
            return _not_found("Batch", id)
        return JSONResponse({"ids": ids, "message": f"{len(ids)} job(s) cancelled."})

    def models() -> JSONResponse:
        return JSONResponse(models_payload(queue))

    def video(id: str):  # noqa: A002
        record = queue.get(id)
        if record is None:
            return _not_found("Job", id)
        if record.status != jobs.SUCCEEDED or not record.video or not Path(record.video).is_file():
            return JSONResponse(status_code=404, content={
                "id": id, "status": record.status, "message": "no video yet: the job has not finished successfully"})
        path = Path(record.video)
        return FileResponse(str(path), media_type="video/mp4", filename=path.name)

    return [
        (f"{PREFIX}/txt2vid", txt2vid, ["POST"], 202),
        (f"{PREFIX}/batches", txt2vid, ["POST"], 202),  # Deforum's path for the same request
        (f"{PREFIX}/batches", list_batches, ["GET"], 200),
        (f"{PREFIX}/batches/{{id}}", get_batch, ["GET"], 200),
        (f"{PREFIX}/batches/{{id}}", cancel_batch, ["DELETE"], 200),
        (f"{PREFIX}/jobs", list_jobs, ["GET"], 200),
        (f"{PREFIX}/jobs/{{id}}", get_job, ["GET"], 200),
        (f"{PREFIX}/jobs/{{id}}", cancel_job, ["DELETE"], 200),
        (f"{PREFIX}/jobs/{{id}}/video", video, ["GET"], 200),
        (f"{PREFIX}/models", models, ["GET"], 200),
    ]


def _docs(methods: list[str]) -> dict[str, Any]:
    """The request and response models of the POST routes, for /docs (the endpoints read the body themselves)."""
    if methods != ["POST"]:
        return {}
    body = {"content": {"application/json": {"schema": model_schema(Txt2VidRequest)}}, "required": True}
    return {"openapi_extra": {"requestBody": body}, "response_model": BatchAccepted}


def build_router(queue: jobs.JobQueue, **kwargs: Any) -> APIRouter:
    """The routes as an APIRouter, for apps that prefer `include_router`."""
    router = APIRouter()
    for path, endpoint, methods, status in route_table(queue, **kwargs):
        router.add_api_route(path, endpoint, methods=methods, status_code=status, **_docs(methods))
    return router


def add_routes(app: Any, queue: jobs.JobQueue, *, allowed_roots: Sequence[str | os.PathLike[str]] | None = None,
               model_roots: Sequence[str | os.PathLike[str]] | None = None) -> None:
    """Mount every `/deforum_wan/` route on `app` (FastAPI), backed by `queue`.

    `app.add_api_route` rather than `include_router`: it behaves the same from
    fastapi 0.94 to today, and the routes stay visible in `app.routes`.
    """
    for path, endpoint, methods, status in route_table(queue, allowed_roots=allowed_roots, model_roots=model_roots):
        app.add_api_route(path, endpoint, methods=methods, status_code=status, **_docs(methods))


def api_enabled(cmd_opts: Any) -> bool:
    """The web UI serves our routes only with `--api` or `--deforum-wan-api`."""
    return bool(getattr(cmd_opts, "api", False) or getattr(cmd_opts, "deforum_wan_api", False))


def route_paths(app: Any) -> list[str]:
    """Every route path of `app`, including routes of included routers (newer fastapi nests them)."""
    out: list[str] = []
    pending = list(getattr(app, "routes", ()))
    while pending:
        route = pending.pop(0)
        if getattr(route, "path", None) is not None:
            out.append(str(route.path))
        inner = getattr(route, "original_router", None) or getattr(route, "app", None)
        if inner is not None and inner is not app and hasattr(inner, "routes") and not hasattr(route, "path"):
            pending += list(inner.routes)
    return out


def has_routes(app: Any) -> bool:
    """Whether our routes are mounted on `app`."""
    return any(p.startswith(PREFIX + "/") for p in route_paths(app))


def on_app_started(demo: Any, app: Any) -> None:
    """Web-UI callback: add the routes when the flag is on (once per app)."""
    from modules import shared

    if not api_enabled(shared.cmd_opts):
        return
    if has_routes(app):
        return
    paths = jobs.webui_paths()
    queue = jobs.get_queue(outdir=paths["outdir"], models_dir=paths["models_dir"])
    add_routes(app, queue, allowed_roots=paths["allowed_roots"], model_roots=[paths["models_dir"]])
    log.info("Deforum Wan API: routes under %s/", PREFIX)
