"""What each clip is rendered with, and where each value came from.

Size, steps, guidance (and the second expert's guidance_2), flow shift and negative
prompt are the user's when set (an option, or a `wan_*` key of the settings file), else
the model's official values (specs.py cites them). A size from the settings file goes
to the nearest size the model was trained for at its aspect ratio; the width/height
options or exact_size keep it as given, with a warning when the model was not trained
for it. Each resolved value becomes a `Choice` (value and source) that the plan shows.
"""
from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .settings import DeforumSettings
from .specs import NEG_SHARED, ModelSpec, is_480p, trained_size
from .timeline import PlanError

if TYPE_CHECKING:  # pragma: no cover
    from .plan import Clip, PlanOptions

MIN_SIDE, MAX_SIDE = 16, 4096  # Wan render size, per side
_RESOLUTION = re.compile(r"(\d+)\s*[x×]\s*(\d+)(?:\s*\(.*\))?")  # "864x480", "864x480 (Landscape)"


@dataclass(frozen=True)
class Choice:
    """One resolved render setting and where it came from: the user, the settings, or the model's makers."""

    name: str  # size | steps | guidance | guidance_2 | flow_shift | negative_prompt
    value: Any
    source: str


def round_to_multiple(value: int, multiple: int) -> int:
    """The nearest multiple, at least one multiple."""
    return max(multiple, int(round(value / multiple)) * multiple)


def wan_option(settings: DeforumSettings, *names: str) -> Any:
    """The first of these `wan_*` options that is set (not None or empty)."""
    for name in names:
        value = settings.wan_value(name)
        if value is not None and value != "":
            return value
    return None


def first(*values: Any) -> Any:
    """The first value that is not None."""
    return next((v for v in values if v is not None), None)


def checked_number(name: str, value: Any, kind: type, low: float, high: float) -> Any:
    """A number option within [low, high]; `kind` int also requires a whole number."""
    number: float | int
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise PlanError(f"{name}: expected a number, got {value!r}") from None
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = value if isinstance(value, numbers.Integral) else float(value)
    else:
        raise PlanError(f"{name}: expected a number, got {value!r}")
    if isinstance(number, float) and not math.isfinite(number) or not low <= number <= high:
        raise PlanError(f"{name}: must be between {low:g} and {high:g}, got {value!r}")
    if kind is int:
        if number != int(number):
            raise PlanError(f"{name}: expected a whole number, got {value!r}")
        return int(number)
    return float(number)


def exact_size(settings: DeforumSettings, options: PlanOptions) -> str | None:
    """Where the user insists on the size as given (the option or `wan_exact_size`), else None."""
    if options.exact_size:
        return "exact_size"
    raw = wan_option(settings, "exact_size")
    text = str(raw).strip().lower()
    if raw is None or raw is False or text in ("false", "0", "no", "off"):
        return None
    if raw is True or text in ("true", "1", "yes", "on"):
        return "wan_exact_size"
    raise PlanError(f"wan_exact_size: expected true or false, got {raw!r}")


def resolve_size(settings: DeforumSettings, options: PlanOptions,
                 model: ModelSpec) -> tuple[int, int, list[str], Choice]:
    """Render size: options, else `wan_resolution`, else W/H; a bad side is named by the field it came from.

    A size from the settings file goes to the nearest size the model was trained for at its
    aspect ratio (specs.trained_size). The width/height options, and exact_size, keep it as
    given (in multiples of the model's size multiple), with a warning if it is not a trained size.
    """
    warnings: list[str] = []
    width = ("width", options.width) if options.width is not None else None
    height = ("height", options.height) if options.height is not None else None
    resolution = wan_option(settings, "resolution")
    if resolution is not None and (width is None or height is None):
        match = _RESOLUTION.fullmatch(resolution.strip().lower()) if isinstance(resolution, str) else None
        if match is None:
            raise PlanError(f"wan_resolution: expected WIDTHxHEIGHT such as 832x480, got {resolution!r}")
        width = width or ("wan_resolution", int(match[1]))
        height = height or ("wan_resolution", int(match[2]))
    width = width or ("W", settings.W)
    height = height or ("H", settings.H)
    given = "W/H" if (width[0], height[0]) == ("W", "H") else "/".join(dict.fromkeys((width[0], height[0])))
    width, height = (checked_number(field, value, int, MIN_SIDE, MAX_SIDE) for field, value in (width, height))
    exact = exact_size(settings, options)
    insisted = "width/height option" if options.width is not None or options.height is not None else exact
    trained = ", ".join(f"{w}x{h}" for w, h in model.sizes)
    if model.sizes and not insisted:
        w2, h2 = trained_size(model, width, height)
        if (w2, h2) == (width, height):
            return w2, h2, warnings, Choice("size", f"{w2}x{h2}", f"{given}, a trained size ({model.source('sizes')})")
        tier = "480p" if is_480p(w2, h2) else "720p"
        return w2, h2, warnings, Choice("size", f"{w2}x{h2}", (
            f"{given} {width}x{height} mapped to the nearest size {model.label} was trained for at this aspect "
            f"ratio ({tier}; {model.source('sizes')}: {trained}); exact size (--exact-size, wan_exact_size) "
            f"keeps {width}x{height}"))
    w2, h2 = round_to_multiple(width, model.size_multiple), round_to_multiple(height, model.size_multiple)
    if (w2, h2) != (width, height):
        warnings.append(f"size {width}x{height} rounded to {w2}x{h2}: {model.label} needs multiples of "
                        f"{model.size_multiple}")
    if not model.sizes:
        note = f"{given} as given; trained sizes: {model.source('sizes')}"
        return w2, h2, warnings, Choice("size", f"{w2}x{h2}", note)
    if (w2, h2) not in model.sizes:
        best = "x".join(map(str, trained_size(model, width, height)))
        warnings.append(f"size {w2}x{h2} ({insisted}) is not a size {model.label} was trained for ({trained}); "
                        f"expect weaker images and motion than at {best}, the nearest trained size for this shape")
    return w2, h2, warnings, Choice("size", f"{w2}x{h2}", f"{given} as given ({insisted})")


def user_value(settings: DeforumSettings, option: Any, name: str, keys: tuple[str, ...], kind: type, low: float,
               high: float) -> tuple[Any, str | None]:
    """(value, where it was set): the option, else the first `wan_*` key set; (None, None) when neither is."""
    if option is not None:
        return checked_number(name, option, kind, low, high), f"option: {name}"
    for key in keys:
        value = settings.wan_value(key)
        if value is not None and value != "":
            return checked_number(name, value, kind, low, high), f"settings: wan_{key}"
    return None, None


def resolve_sampling(settings: DeforumSettings, model: ModelSpec, options: PlanOptions, width: int,
                     height: int) -> tuple[int, float, float | None, float, list[Choice], list[str]]:
    """Steps, guidance, guidance_2 and flow shift: the user's, else the model's official values at this size.

    guidance_2 (the low-noise expert's, two-expert models only): its own option or `wan_guidance_2`,
    else the user's guidance for both experts (as diffusers does without guidance_scale_2), else
    the official pair's second value.
    """
    def official(name: str) -> str:
        return "official: " + model.source(name)

    warnings: list[str] = []
    steps, where = user_value(settings, options.steps, "steps", ("steps", "inference_steps"), int, 1, 200)
    if where is None:
        steps, where = model.default_steps, official("steps")
    choices = [Choice("steps", steps, where)]
    guidance, guidance_where = user_value(settings, options.guidance, "guidance", ("guidance", "guidance_scale"),
                                          float, 0, 30)
    if guidance_where is None:
        guidance = model.default_guidance
    choices.append(Choice("guidance", guidance, guidance_where or official("guidance")))
    guidance_2, where = user_value(settings, options.guidance_2, "guidance_2", ("guidance_2",), float, 0, 30)
    if model.default_guidance_2 is None:
        if where:
            warnings.append(f"guidance_2 ({where}) is ignored: {model.label} has one expert, guided by guidance")
        guidance_2 = None
    else:
        if where is None and guidance_where:
            guidance_2, where = guidance, f"{guidance_where} (guidance), for both experts"
        elif where is None:
            guidance_2, where = model.default_guidance_2, official("guidance_2")
        choices.append(Choice("guidance_2", guidance_2, where))
    shift, where = user_value(settings, options.flow_shift, "flow_shift", ("flow_shift",), float, 0.01, 50)
    if where is None:
        shift, cited = model.flow_shift_at(width, height)
        where = "official: " + cited
    choices.append(Choice("flow_shift", shift, where))
    return steps, guidance, guidance_2, shift, choices, warnings


def negative_choice(clips: list[Clip], model: ModelSpec) -> Choice:
    """Which clips take their negative prompt from the settings and which get Wan's default."""
    default = [c.index for c in clips if c.negative_prompt == model.negative_prompt]
    official = f"official: {model.source('negative_prompt') or NEG_SHARED}, as no negative prompt is set"
    if not default:
        return Choice("negative_prompt", "settings", "settings: --neg in prompts, negative_prompts")
    if len(default) == len(clips):
        return Choice("negative_prompt", "Wan default", official)
    return Choice("negative_prompt", f"Wan default for clips {_ranges(default)}, else settings", official)


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)
