"""Parseq manifests: per-frame values that take over a Deforum settings file's schedules.

Parseq (sd-parseq.web.app) exports a JSON manifest whose `rendered_frames` hold one
value per frame for every field it manages. Deforum reads it in
`scripts/deforum_helpers/parseq_adapter.py` (deforum-art/sd-webui-deforum@3224268,
with `render.py` of the same commit). `overrides` does what that adapter does, as a
pure function from the settings and a manifest to the settings keys it sets, and
core/settings.py builds the settings with them, so plan, camera words, motion guide,
camera plot and `inspect` all see the Parseq values:

* each managed field becomes its Deforum schedule written out per frame,
  ``0:(v0), 1:(v1), ...`` with each value's shortest exact decimal (no exponent,
  so `schedules.parse_schedule` reads it as a plain number, bit for bit);
* movement fields (`angle`, `zoom`, `translation_*`, `rotation_3d_*`,
  `perspective_flip_theta/phi/gamma`) take `<field>_delta` when `parseq_use_deltas`
  is on (Deforum's default) and `<field>` when off; with deltas on and no
  `<field>_delta` in the manifest, Deforum keeps the settings' own schedule, and so
  do we (`ParseqAnimKeysDecorator`);
* `deforum_prompt` ("positive --neg negative") replaces the prompts, a keyframe
  wherever it changes; Deforum does not add positive/negative_prompts to them;
* `seed` makes Deforum read the seed schedule on every frame (render.py: seed_behavior
  "schedule" or `manages_seed()`), and turns subseed scheduling on;
* with `parseq_non_schedule_overrides` on (the default) the manifest's frame count
  becomes `max_frames` and `options.output_fps`/`options.cadence` become `fps` and
  `diffusion_cadence`; otherwise the settings' values stay, the last frame's values
  hold past the manifest's end and frames past `max_frames` are unused;
* render.py sets `anim_args.flip_2d_perspective = True` with Parseq, but at that commit
  nothing reads it (the warp reads `enable_perspective_flip`; the old name is only
  renamed when a settings file is loaded, deprecation_utils.py), so the flip stays
  as the settings say.

Deliberate differences, all where Deforum would warn, crash or render NaN: frames must
be numbered 0..n-1 in order, every frame must carry frame 0's fields, values read must
be finite numbers (text for prompts and the text schedules), and a field Deforum does
not know is an error naming it (Parseq's own `*_pc`, `*_delta` and `prompt_weight_N`
are known). Every error names frame and field (a SettingsError on `parseq_manifest`).
Reading a file or URL is the caller's job (renderer/manifest.py, service/validation.py).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping

import numpy as np

KEY = "parseq_manifest"
#: Largest manifest read from text, a file or a URL. Parseq writes each value with its
#: `_delta` and `_pc`: about 2 KB a frame with everything managed, so this holds
#: several thousand frames.
MAX_MANIFEST_BYTES = 32 * 1024 * 1024

# ParseqAnimKeysDecorator@3224268: movement fields, read as `<field>_delta` with deltas on.
MOVEMENT = ("angle", "zoom", "translation_x", "translation_y", "translation_z", "rotation_3d_x", "rotation_3d_y",
            "rotation_3d_z", "perspective_flip_theta", "perspective_flip_phi", "perspective_flip_gamma")
_HYBRID = ("hybrid_comp_alpha", "hybrid_comp_mask_blend_alpha", "hybrid_comp_mask_contrast",
           "hybrid_comp_mask_auto_contrast_cutoff_high", "hybrid_comp_mask_auto_contrast_cutoff_low",
           "hybrid_flow_factor")
#: Parseq field -> the Deforum keys it overrides. The decorator names most; the rest are
#: found by its fallback, which strips `_series`/`_schedule` from DeformAnimKeys',
#: LooperAnimKeys' and ControlNetKeys' attribute names (animation_key_frames.py@3224268).
NUMERIC_FIELDS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    **{f: (f,) for f in MOVEMENT}, "perspective_flip_fv": ("perspective_flip_fv",),
    "noise": ("noise_schedule",), "strength": ("strength_schedule", "image_strength_schedule"),
    "contrast": ("contrast_schedule",), "scale": ("cfg_scale_schedule",), "steps_schedule": ("steps_schedule",),
    "seed": ("seed_schedule",), "fov": ("fov_schedule",), "near": ("near_schedule",), "far": ("far_schedule",),
    "subseed": ("subseed_schedule",), "subseed_strength": ("subseed_strength_schedule",),
    "antiblur_kernel": ("kernel_schedule",), "antiblur_sigma": ("sigma_schedule",),
    "antiblur_amount": ("amount_schedule",), "antiblur_threshold": ("threshold_schedule",),
    "transform_center_x": ("transform_center_x",), "transform_center_y": ("transform_center_y",),
    "ddim_eta": ("ddim_eta_schedule",), "ancestral_eta": ("ancestral_eta_schedule",),
    "pix2pix_img_cfg_scale": ("pix2pix_img_cfg_scale_schedule",), "clipskip": ("clipskip_schedule",),
    "noise_multiplier": ("noise_multiplier_schedule",), "aspect_ratio": ("aspect_ratio_schedule",),
    "cadence_flow_factor": ("cadence_flow_factor_schedule",), "redo_flow_factor": ("redo_flow_factor_schedule",),
    **{f: (f"{f}_schedule",) for f in _HYBRID},
    "guided_blendFactorMax": ("blendFactorMax",), "guided_blendFactorSlope": ("blendFactorSlope",),
    "guided_tweening_frames": ("tweening_frames_schedule",),
    "guided_color_correction_factor": ("color_correction_factor",),
    **{f"cn_{i}_{p}": (f"cn_{i}_{p}",) for i in range(1, 6) for p in ("weight", "guidance_start", "guidance_end")},
})
TEXT_FIELDS: Mapping[str, str] = MappingProxyType({
    "sampler_schedule": "sampler_schedule", "checkpoint": "checkpoint_schedule", "mask": "mask_schedule",
    "noise_mask": "noise_mask_schedule"})
PROMPT_FIELD = "deforum_prompt"
_PARSEQ_ONLY = re.compile(r"prompt_weight_\d+")


class ParseqError(ValueError):
    """A manifest problem; core/settings.py reports it as a SettingsError on `key`."""

    def __init__(self, problem: str, key: str = KEY):
        self.key = key
        super().__init__(problem)


@dataclass(frozen=True)
class ParseqSummary:
    """What a manifest drives, for `plan`, `inspect` and the tab."""

    frames: int  # rendered frames in the manifest
    max_frames: int  # the render's frame count
    fps: float  # the render's
    manages_max_frames: bool
    manages_fps: bool
    use_deltas: bool
    managed: tuple[str, ...]  # the Deforum keys Parseq sets ("prompts" for deforum_prompt)
    kept: tuple[str, ...] = ()  # movement fields left to the settings (deltas on, no `_delta` given)
    cadence: int | None = None
    source: str = "inline"

    @property
    def value(self) -> str:
        return f"{self.frames} frames"

    def describe(self) -> str:
        frames = "its frame count" if self.manages_max_frames else f"max_frames {self.max_frames} from the settings"
        fps = f"{self.fps:g} fps from the manifest" if self.manages_fps else f"{self.fps:g} fps from the settings"
        kept = (f"; the settings keep {', '.join(self.kept)} (no *_delta values with deltas on)" if self.kept else "")
        where = "" if self.source == "inline" else f" ({self.source})"
        return (f"Parseq{where} drives the render: {self.frames} frames, {frames}, {fps}, deltas "
                f"{'on' if self.use_deltas else 'off'}; manages {', '.join(self.managed) or 'nothing'}{kept}")


def requested(value: Any) -> bool:
    """Whether a `parseq_manifest` value asks for Parseq (Deforum: a non-blank value)."""
    return not (value is None or value is False or (isinstance(value, str) and not value.strip()))


def reference(value: Any) -> str | None:
    """The file path or URL a `parseq_manifest` names, or None when it is the manifest itself."""
    if isinstance(value, Mapping):
        return None
    if not isinstance(value, str):
        raise ParseqError(f"expected the manifest (JSON), a file path or an http(s) URL, got {type(value).__name__}")
    return None if value.strip().startswith("{") else value.strip()


def manifest_from_text(text: str | bytes, where: str = "the manifest") -> Any:
    """Parse manifest JSON, refusing more than MAX_MANIFEST_BYTES."""
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_MANIFEST_BYTES:
        raise ParseqError(f"{where} is {size} bytes; at most {MAX_MANIFEST_BYTES}")
    try:
        return json.loads(text.decode("utf-8-sig") if isinstance(text, bytes) else text)
    except UnicodeDecodeError:
        raise ParseqError(f"{where} is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ParseqError(f"{where} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise ParseqError(f"{where} is JSON nested too deeply") from None


def resolve(value: Any, load: Callable[[str], Any] | None) -> tuple[Any, str]:
    """(manifest, where it came from): inline JSON/object as is, a path or URL through `load`."""
    ref = reference(value)
    if ref is None:
        return (value if isinstance(value, Mapping) else manifest_from_text(value)), "inline"
    if load is None:
        raise ParseqError(f"{ref!r} must be read before the settings are parsed (the command line, the API "
                          "and the tab read files and http(s) URLs); or give the manifest itself")
    return load(ref), ref


def _bool(data: Mapping[str, Any], key: str) -> bool:
    value = data.get(key, True)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    raise ParseqError(f"expected true or false, got {value!r}", key=key)


def _known(field: str) -> bool:
    base = re.sub(r"_(delta|pc)$", "", field)
    return (field in ("frame", PROMPT_FIELD) or base in NUMERIC_FIELDS or field in TEXT_FIELDS
            or _PARSEQ_ONLY.fullmatch(base) is not None)


def _frames(manifest: Any) -> list[Mapping[str, Any]]:
    if not isinstance(manifest, Mapping):
        raise ParseqError(f"expected a JSON object with rendered_frames, got {type(manifest).__name__}")
    frames = manifest.get("rendered_frames")
    if frames is None:
        raise ParseqError("no rendered_frames: export the manifest from Parseq with its rendered frames")
    if not isinstance(frames, list) or not frames:
        raise ParseqError("rendered_frames is empty; Parseq writes one entry per frame")
    fields = None
    for i, frame in enumerate(frames):
        if not isinstance(frame, Mapping):
            raise ParseqError(f"rendered_frames[{i}]: expected an object, got {type(frame).__name__}")
        number = frame.get("frame")
        if isinstance(number, bool) or not isinstance(number, (int, float)) or number != i:
            raise ParseqError(f"rendered_frames[{i}].frame is {number!r}; frames must be numbered 0 to "
                                     f"{len(frames) - 1} in order")
        if fields is None:
            fields = set(frame)
            unknown = sorted(f for f in fields if not isinstance(f, str) or not _known(f))
            if unknown:
                raise ParseqError(f"rendered_frames[0] has {unknown[0]!r}, a field Deforum does not read; "
                                         "remove it from Parseq's managed fields")
        else:
            missing = fields - set(frame)
            if missing:
                raise ParseqError(f"rendered_frames[{i}] (frame {i}) has no {sorted(missing)[0]!r}; every "
                                         "frame must carry frame 0's fields")
    return frames


def _numbers(frames: list[Mapping[str, Any]], field: str) -> list[float | int]:
    out = []
    for i, frame in enumerate(frames):
        v = frame[field]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ParseqError(f"rendered_frames[{i}].{field} (frame {i}): expected a number, got {v!r}")
        out.append(v)
    return out


def _texts(frames: list[Mapping[str, Any]], field: str) -> list[str]:
    out = []
    for i, frame in enumerate(frames):
        v = frame[field]
        if not isinstance(v, str):
            raise ParseqError(f"rendered_frames[{i}].{field} (frame {i}): expected text, got {v!r}")
        if field != PROMPT_FIELD and any(c in v for c in "\"'()"):
            raise ParseqError(f"rendered_frames[{i}].{field} (frame {i}): quotes and parentheses cannot be "
                                     f"part of a schedule value, got {v!r}")
        out.append(v)
    return out


def number_text(value: float | int) -> str:
    """The shortest decimal that reads back as exactly `value`, without an exponent (a plain schedule number)."""
    if isinstance(value, int):
        return str(value)
    return np.format_float_positional(value, unique=True, trim="-")


def per_frame(values: list[Any], count: int, text: bool = False) -> str:
    """`0:(v0), 1:(v1), ...` for the first `count` values; the schedule holds the last one beyond them."""
    if text:
        return ", ".join(f'{i}:("{v}")' for i, v in enumerate(values[:count]))
    return ", ".join(f"{i}:({number_text(v)})" for i, v in enumerate(values[:count]))


def _options(manifest: Mapping[str, Any]) -> tuple[float | None, int | None]:
    options = manifest.get("options") or {}
    if not isinstance(options, Mapping):
        raise ParseqError(f"options: expected an object, got {type(options).__name__}")
    fps, cadence = options.get("output_fps"), options.get("cadence")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps >= 0):
        raise ParseqError(f"options.output_fps: expected a frame rate, got {fps!r}")  # settings.py checks its range
    if cadence is not None and (isinstance(cadence, bool) or not isinstance(cadence, (int, float))
                                or cadence < 1 or not float(cadence).is_integer()):
        raise ParseqError(f"options.cadence: expected a whole number from 1, got {cadence!r}")
    return fps or None, (int(cadence) if cadence else None)


def overrides(data: Mapping[str, Any], manifest: Any, *, max_frames: int,
              source: str = "inline") -> tuple[dict[str, Any], ParseqSummary]:
    """The settings keys `manifest` sets, given the settings `data` (their `max_frames` parsed), and a summary.

    core/settings.py builds the settings from `data` updated with these, the manifest
    kept inline: saved (to_dict) and loaded again, they give the same render.
    """
    frames = _frames(manifest)
    use_deltas = _bool(data, "parseq_use_deltas")
    managing = _bool(data, "parseq_non_schedule_overrides")
    fps, cadence = _options(manifest)
    n = len(frames)
    count = n if managing else max_frames
    present = set(frames[0])
    out: dict[str, Any] = {}
    managed: list[str] = []
    kept: list[str] = []
    for field, keys in NUMERIC_FIELDS.items():
        read = f"{field}_delta" if use_deltas and field in MOVEMENT else field
        if read not in present:
            if field in MOVEMENT and field in present:
                kept.append(field)
            continue
        out.update(dict.fromkeys(keys, per_frame(_numbers(frames, read), count)))
        managed.extend(keys)
    for field, key in TEXT_FIELDS.items():
        if field in present:
            out[key] = per_frame(_texts(frames, field), count, text=True)
            managed.append(key)
    if "seed" in present:  # render.py: manages_seed() reads the seed schedule every frame, with subseeds on
        out.update(seed_behavior="schedule", enable_subseed_scheduling=True)
    if PROMPT_FIELD in present:  # render.py: Parseq's prompts are used as they are, without the global wrappers
        texts = _texts(frames, PROMPT_FIELD)[:count]
        key = "animation_prompts" if "animation_prompts" in data and "prompts" not in data else "prompts"
        out[key] = {str(i): t for i, t in enumerate(texts) if i == 0 or t != texts[i - 1]}
        out.update({k: "" for k in ("positive_prompts", "negative_prompts", "animation_prompts_positive",
                                    "animation_prompts_negative") if k in data or k.endswith("_prompts")})
        managed.insert(0, "prompts")
    out["max_frames"] = count
    if managing and fps:
        out["fps"] = int(fps) if float(fps).is_integer() else float(fps)
    if managing and cadence:
        out["diffusion_cadence"] = cadence
    summary = ParseqSummary(frames=n, max_frames=count, fps=0.0, manages_max_frames=managing,
                            manages_fps=bool(managing and fps), use_deltas=use_deltas, managed=tuple(managed),
                            kept=tuple(kept), cadence=cadence if managing else None, source=source)
    return out, summary
