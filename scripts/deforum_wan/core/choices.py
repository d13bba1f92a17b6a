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
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from .schedules import parse_schedule
from .settings import DeforumSettings
from .specs import I2V, NEG_SHARED, T2V, VACE, ModelSpec, is_480p, trained_size
from .timeline import MIN_CLIP_FRAMES, PlanError, wan_rate

if TYPE_CHECKING:  # pragma: no cover
    from .plan import Clip, PlanOptions

MIN_SIDE, MAX_SIDE = 16, 4096  # Wan render size, per side
CONTINUITY = ("auto", "i2v", "vace", "none")
DEFAULT_VACE_OVERLAP = 5  # about a third of a second at 16 fps: enough to carry motion on
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


TIMINGS = ("auto", "native", "interpolate", "blend", "nearest")
# Within 10% of the model's rate, output frames are Wan frames one for one: 15 fps on Wan 2.1's 16 plays
# its motion at 0.94x speed and keeps Deforum's duration; further off, frames are interpolated.
DEFAULT_FPS_TOLERANCE = 0.1


def resolve_timing(settings: DeforumSettings, options: PlanOptions, model: ModelSpec,
                   ) -> tuple[str, Fraction, Choice, list[str]]:
    """How output frames at the settings' fps are made from Wan frames at the model's rate.

    native: one Wan frame per output frame (the clip plays at fps, so motion runs at fps/native
    speed); interpolate: Wan renders the settings' duration at its own rate and motion-compensated
    interpolation makes the frames in between; blend: crossfades of two Wan frames (ghosts
    anything that moves; kept only as an explicit choice); nearest: the nearest Wan frame
    (repeats or skips frames). auto: native within the tolerance, else interpolate.
    """
    raw = first(options.timing, wan_option(settings, "timing"))
    where = "option: timing" if options.timing is not None else "settings: wan_timing" if raw is not None else None
    timing = str(raw if raw is not None else "auto").strip().lower()
    if timing not in TIMINGS:
        field = "timing" if options.timing is not None else "wan_timing"
        raise PlanError(f"{field}: expected one of {', '.join(TIMINGS)}, got {raw!r}")
    tolerance = checked_number("fps_tolerance", first(options.fps_tolerance, DEFAULT_FPS_TOLERANCE), float, 0, 1)
    fps, native = float(settings.fps), model.native_fps
    off = fps / native - 1
    warnings: list[str] = []
    if timing == "auto":
        timing = "native" if abs(off) <= tolerance + 1e-9 else "interpolate"
        where = (f"auto: {fps:g} fps is within {tolerance:.0%} of {model.label}'s {native} fps" if timing == "native"
                 else f"auto: {fps:g} fps is more than {tolerance:.0%} from {model.label}'s {native} fps "
                      f"(--fps-tolerance)")
    if timing == "native":
        note = (f"one Wan frame per output frame; motion plays at {fps / native:.2f}x the model's speed, the "
                f"duration stays {settings.max_frames / fps:.2f} s")
        if abs(off) > 0.25:
            warnings.append(f"timing native at {fps:g} fps on a {native} fps model: motion plays at "
                            f"{fps / native:.2f}x speed")
        return timing, Fraction(1), Choice("timing", timing, f"{where}: {note}"), warnings
    rate = wan_rate(native, fps)
    notes = {
        "interpolate": f"Wan renders {settings.max_frames / fps:.2f} s at {native} fps; motion-compensated "
                       "interpolation (ffmpeg minterpolate) makes the frames in between",
        "blend": "in-between frames crossfade two Wan frames (moving things ghost)",
        "nearest": "each output frame shows the nearest Wan frame",
    }
    if timing == "blend":
        warnings.append("timing blend: in-between frames are crossfades, so anything that moves ghosts; "
                        "timing interpolate avoids that")
    return timing, rate, Choice("timing", timing, f"{where}: {notes[timing]}"), warnings


# Deforum's color_coherence values, old and new spellings, to the colour space matched in.
_COLOR_SPACES = {"rgb": "RGB", "hsv": "HSV", "lab": "LAB", "match frame 0 rgb": "RGB", "match frame 0 hsv": "HSV",
                 "match frame 0 lab": "LAB"}
DEFAULT_COLOR_COHERENCE = "LAB"  # Deforum's default (args.py)


@dataclass(frozen=True)
class ColorChoice:
    """Colour matching as Deforum's color_coherence asks: the space, and the fixed reference every clip matches."""

    space: str | None  # RGB | HSV | LAB; None: no matching
    reference: str  # "frame0" (the first frame, or the init image when the render starts from one) | "image"
    image: str | None  # color_coherence_image_path, for reference "image"
    choice: Choice


def resolve_color(settings: DeforumSettings, options: PlanOptions) -> tuple[ColorChoice, list[str]]:
    """color_coherence mapped onto matching to a fixed reference, so drift cannot build up clip after clip."""
    raw = settings.raw.get("color_coherence", DEFAULT_COLOR_COHERENCE)
    text = str(raw if raw is not None else "None").strip()
    key = text.lower()
    if not options.color_match:
        return ColorChoice(None, "frame0", None, Choice("color_match", "off", "option: color_match off")), []
    if key in ("none", ""):
        return ColorChoice(None, "frame0", None, Choice("color_match", "off", "settings: color_coherence None")), []
    if key == "video input":
        return (ColorChoice(None, "frame0", None, Choice("color_match", "off", "settings: color_coherence Video "
                                                         "Input (not supported)")),
                ["color_coherence 'Video Input' is not supported: colour matching is off"])
    if key == "image":
        path = str(settings.raw.get("color_coherence_image_path") or "").strip()
        if not path:
            raise PlanError("color_coherence_image_path: color_coherence is 'Image' but no image path is set")
        space = "LAB"
        return ColorChoice(space, "image", path, Choice("color_match", f"{space} to image",
                                                        "settings: color_coherence Image, color_coherence_image_path")), []
    if key not in _COLOR_SPACES:
        raise PlanError(f"color_coherence: expected None, RGB, HSV, LAB, Image or Video Input, got {raw!r}")
    space = _COLOR_SPACES[key]
    where = "settings: color_coherence" if "color_coherence" in settings.raw else "Deforum's default color_coherence"
    return ColorChoice(space, "frame0", None, Choice("color_match", f"{space} to frame 0",
                                                     f"{where} {text}: every clip matched to the first frame")), []


def schedule_ratios(values: Any, spans: list[tuple[int, int]], key: str) -> list[float] | None:
    """Each span's mean of a Deforum schedule over its value at frame 0; None for a constant schedule.

    Deforum's cfg and steps values are an image model's, not Wan's, so their shape is followed and their
    units are not: the model's guidance (or steps) is scaled by how far the schedule moved from its start.
    """
    values = [float(v) for v in values]
    if max(values) == min(values):
        return None
    if values[0] <= 0:
        raise PlanError(f"{key}: its value at frame 0 is {values[0]:g}; it must be above 0 to scale the model's "
                        "values by the schedule's changes")
    return [sum(values[a:b]) / max(b - a, 1) / values[0] for a, b in spans]


X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")
DEFAULT_CRF, DEFAULT_PRESET = 17, "slow"  # Deforum's defaults (video_audio_utilities.get_ffmpeg_params)


@dataclass(frozen=True)
class VideoChoice:
    """The mp4 as Deforum's video settings ask for it: made or skipped, x264 quality and speed."""

    make: bool
    crf: int
    preset: str
    choice: Choice


def resolve_video(settings: DeforumSettings) -> VideoChoice:
    """skip_video_creation, ffmpeg_crf and ffmpeg_preset, checked (a preset reaches ffmpeg only from an allowlist)."""
    raw = settings.raw
    skip = raw.get("skip_video_creation")
    make = not (skip is True or str(skip).strip().lower() in ("true", "1", "yes", "on"))
    crf_raw = raw.get("ffmpeg_crf")
    crf = DEFAULT_CRF if crf_raw in (None, "") else checked_number("ffmpeg_crf", crf_raw, int, 0, 51)
    preset_raw = raw.get("ffmpeg_preset")
    preset = DEFAULT_PRESET if preset_raw in (None, "") else str(preset_raw).strip().lower()
    if preset not in X264_PRESETS:
        raise PlanError(f"ffmpeg_preset: expected one of {', '.join(X264_PRESETS)}, got {preset_raw!r}")
    if not make:
        return VideoChoice(False, crf, preset, Choice("video", "none", "settings: skip_video_creation"))
    where = "settings: ffmpeg_crf/ffmpeg_preset" if crf_raw not in (None, "") or preset_raw not in (None, "") \
        else "Deforum's defaults"
    return VideoChoice(True, crf, preset, Choice("video", f"crf {crf}, {preset}", f"{where} (libx264 mp4)"))


def scale_by_schedules(settings: DeforumSettings, clips: list[Clip]) -> tuple[list[Clip], list[Choice]]:
    """Deforum's cfg_scale_schedule (and steps_schedule, when enabled) applied per clip, relative to frame 0.

    Their units are an image model's, so the shape is followed: a clip whose frames average 1.2x the
    schedule's first value gets 1.2x the model's guidance (or steps). A constant schedule changes nothing.
    """
    spans = [(c.output_start, c.output_end) for c in clips]
    notes: list[Choice] = []
    cfg = parse_schedule(settings.cfg_scale_schedule, settings.max_frames, settings.seed, key="cfg_scale_schedule")
    ratios = schedule_ratios(cfg, spans, "cfg_scale_schedule")
    if ratios is not None:
        clips = [replace(c, guidance=round(min(30.0, c.guidance * r), 2),
                         guidance_2=None if c.guidance_2 is None else round(min(30.0, c.guidance_2 * r), 2))
                 for c, r in zip(clips, ratios)]
        notes.append(Choice("cfg_scale_schedule", f"x{min(ratios):.2f}-x{max(ratios):.2f}",
                            "settings: guidance scaled per clip by the schedule relative to frame 0"))
    steps_text = settings.raw.get("steps_schedule")
    if truthy(settings.raw.get("enable_steps_scheduling")) and steps_text:
        values = parse_schedule(str(steps_text), settings.max_frames, settings.seed, key="steps_schedule")
        ratios = schedule_ratios(values, spans, "steps_schedule")
        if ratios is not None:
            clips = [replace(c, steps=max(1, min(200, round(c.steps * r)))) for c, r in zip(clips, ratios)]
            notes.append(Choice("steps_schedule", f"x{min(ratios):.2f}-x{max(ratios):.2f}",
                                "settings: steps scaled per clip by the schedule relative to frame 0"))
    return clips, notes


def truthy(value: Any) -> bool:
    return value is True or str(value).strip().lower() in ("true", "1", "yes", "on")


def apply_preset(name: str | None, options: PlanOptions, model: ModelSpec, values: dict[str, Any],
                 choices: list[Choice], has_lora: bool = False) -> tuple[dict[str, Any], list[Choice], list[str], Any]:
    """A speed preset's steps, guidance(_2) and flow shift in place of the plan's, except where an option was given.

    `values` holds steps, guidance, guidance_2 and flow_shift as resolved so far; their Choices are
    rewritten to cite the preset. fast and turbo are a step-distill LoRA's published values: without
    that LoRA a base model renders a blur, which the plan says.
    """
    from .speed import resolve_preset

    try:
        preset = resolve_preset(name)
    except ValueError as exc:
        raise PlanError(str(exc)) from None
    if preset.name == "quality":
        return values, choices, [], preset
    explicit = {"steps": options.steps, "guidance": options.guidance, "guidance_2": options.guidance_2,
                "flow_shift": options.flow_shift}
    values = dict(values)
    by_name = {c.name: i for i, c in enumerate(choices)}
    for field in ("steps", "guidance", "guidance_2", "flow_shift"):
        value = getattr(preset, field)
        if value is None or explicit[field] is not None or (field == "guidance_2" and values[field] is None):
            continue
        values[field] = value
        if field in by_name:
            choices[by_name[field]] = Choice(field, value, f"preset {preset.name}: {preset.source(field)}")
    notes = [f"preset {preset.name} uses the values its step-distill LoRA was published with ({preset.loras}); "
             "without that LoRA the model renders a blur"] if preset.needs_lora and not has_lora else []
    return values, choices, notes, preset


def resolve_cache(options: PlanOptions, model: ModelSpec) -> tuple[str | None, Choice | None]:
    """The step cache, checked against the model kind before anything loads."""
    from .speed import cache_support, parse_cache

    try:
        spec = parse_cache(options.cache)
    except ValueError as exc:
        raise PlanError(str(exc)) from None
    if spec is None:
        return None, None
    why = cache_support(spec.name, model.kind)
    if why:
        raise PlanError(f"cache: {spec.name} does not work on {model.label} ({model.kind}): {why}")
    return str(spec), Choice("cache", str(spec), f"option: cache ({spec.info.label}: {spec.info.meaning})")


MOTIONS = ("words", "guide", "both")
# Deforum's default strength (args.py strength_schedule "0: (0.65)") maps to VACE's default conditioning scale 1.0.
DEFORUM_STRENGTH = 0.65


def resolve_motion(settings: DeforumSettings, options: PlanOptions, continuity: str) -> tuple[str, Choice]:
    """How the camera schedules reach the picture: camera words in the prompt, a warped motion guide for VACE
    (renderer/guide.py), or both. The guide needs clips that VACE continues."""
    raw = first(options.motion, wan_option(settings, "motion"))
    field = "motion" if options.motion is not None else "wan_motion"
    motion = str(raw if raw is not None else "words").strip().lower()
    if motion not in MOTIONS:
        raise PlanError(f"{field}: expected one of {', '.join(MOTIONS)}, got {raw!r}")
    if motion != "words" and continuity != "vace":
        raise PlanError(f"{field}: {motion} needs a VACE model that continues clips (continuity vace); this job's "
                        f"continuity is {continuity}")
    notes = {"words": "camera words in each clip's prompt",
             "guide": "each VACE clip follows the previous clip's last frame warped along the camera path "
                      "(Deforum's warp); no camera words",
             "both": "camera words and the warped motion guide"}
    where = f"option: {field}" if raw is not None else "default"
    return motion, Choice("motion", motion, f"{where}: {notes[motion]}")


def guide_scales(settings: DeforumSettings, spans: list[tuple[int, int]]) -> list[float]:
    """VACE conditioning scale per clip from Deforum's strength_schedule: its mean over the clip's frames
    divided by Deforum's default 0.65 (so the default is VACE's own 1.0), within 0..2. Higher strength keeps
    more of the warped picture in Deforum; a higher scale makes VACE follow the guide more closely."""
    values = parse_schedule(settings.strength_schedule, settings.max_frames, settings.seed, key="strength_schedule")
    scales = []
    for a, b in spans:
        mean = float(values[a:b].mean()) if b > a else float(values[a])
        scales.append(round(min(2.0, max(0.0, mean / DEFORUM_STRENGTH)), 3))
    return scales


def resolve_continuity(options: PlanOptions, modes: set[str]) -> tuple[str, list[str]]:
    if options.continuity not in CONTINUITY:
        raise PlanError(f"continuity: expected one of {', '.join(CONTINUITY)}, got {options.continuity!r}")
    if options.continuity == "auto":
        for mode in (VACE, I2V):
            if mode in modes:
                return mode, []
        return "none", ["this model cannot continue a clip (no I2V or VACE): clips are independent T2V renders"]
    if options.continuity != "none" and options.continuity not in modes:
        raise PlanError(
            f"continuity: {options.continuity} needs a model that supports it; this job supports {', '.join(sorted(modes))}"
        )
    if options.continuity == "none" and T2V not in modes:
        raise PlanError("continuity: none starts every clip from text, which this model cannot (it needs a start "
                        "image); use continuity auto or i2v")
    return options.continuity, []


def clip_limit(settings: DeforumSettings, options: PlanOptions, model: ModelSpec) -> int:
    """Largest clip: the option, else `wan_max_clip_frames`, else the model's; rounded down to 4n+1."""
    max_clip = model.max_frames
    wan_max = wan_option(settings, "max_clip_frames")
    if options.max_clip_frames is not None or wan_max is not None:
        max_clip = checked_number("max_clip_frames", first(options.max_clip_frames, wan_max), int, MIN_CLIP_FRAMES,
                           model.max_frames)
    return max_clip - (max_clip - 1) % 4


def vace_overlap(settings: DeforumSettings, options: PlanOptions, continuity: str, max_clip: int) -> int:
    """Frames each chained clip repeats: VACE's K (option, `wan_overlap`, else the default), I2V 1, none 0."""
    if continuity == VACE:
        raw = first(options.overlap, wan_option(settings, "overlap", "frame_overlap"),
                     min(DEFAULT_VACE_OVERLAP, max_clip - 4))
        return checked_number("overlap", raw, int, 1, max_clip - 4)
    return 0 if continuity == "none" else 1


def resolve_init_mode(settings: DeforumSettings, model: ModelSpec, modes: set[str]) -> tuple[str | None, list[str]]:
    """I2V (else VACE) when the settings start from an init image the model can take, else None.

    A model that cannot start a clip from text (I2V, FLF2V, I2V-A14B) needs the init image: without
    one the plan fails here, naming the field, before any model is loaded.
    """
    init = settings.init_image
    has_image = bool(init and str(init).strip().lower() not in ("", "none"))
    if not (settings.use_init and has_image):
        if T2V not in modes:
            field, why = ("use_init", "init_image is set but use_init is off") if has_image else (
                "init_image", "no init_image is set")
            raise PlanError(f"{field}: {model.label} ({model.kind}) cannot start a clip from text, and {why}; give "
                            "the first clip an image (init_image with use_init on), or choose a model that starts "
                            "from text (vace, t2v, ti2v-5b, a14b-t2v)")
        return None, []
    mode = I2V if I2V in modes else VACE if VACE in modes else None
    if mode is None:
        return None, ["init_image is set but this model cannot start from an image: the first clip is T2V"]
    return mode, []
