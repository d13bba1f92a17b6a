"""The clip plan: how a Deforum timeline becomes a chain of Wan clips, frame-exact.

Deforum's timeline has `max_frames` frames at the settings' `fps`. Wan renders clips
of 4n+1 frames at its own native rate (16 fps for Wan 2.1, 24 for Wan 2.2 TI2V-5B).
Near that rate output frames are Wan frames one for one; further off, the plan maps
every output frame to the Wan frame it shows or the point between two that an
interpolated frame shows (choices.resolve_timing), so a 60 fps file takes its real
wall-clock length. That arithmetic is `timeline.py`'s; this module gives the clips
it cuts their modes, prompts, camera words, seeds and costs.

Segments run between prompt keyframes, so each prompt change lands on its keyframe,
unless prompts change faster than min_clip_seconds: such segments are merged into
one clip that lists them. A segment longer than the model's largest clip becomes
several chained clips. Every clip after the first continues the previous one from
the last frames the viewer saw: I2V from its last frame, VACE from its last K
frames; those K leading frames duplicate what is already on screen and are dropped
at the join. Wan frame counts are rounded *up* to 4n+1, never down: surplus frames
at a segment's end are generated and dropped, and the plan counts them.

Size, steps, guidance, flow shift, timing, colour, video, speed preset and cache are
resolved by choices.py (the user's, else the model's official values, cited in
specs.py and speed.py) and each is kept in `ClipPlan.choices` with its source;
prompts lose their A1111 syntax (prompts.plain_prompt), and each clip lists what was
taken out. Every Deforum key that changes a render is reported (coverage.py).

The plan is immutable, pure, and round-trips through JSON, so it can be shown
before rendering, saved beside the frames, and re-checked on resume.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from fractions import Fraction
from typing import Any

import numpy as np

from .choices import (
    CONTINUITY, DEFAULT_VACE_OVERLAP, ColorChoice, Choice, apply_preset, clip_limit, guide_scales, negative_choice,
    resolve_cache, resolve_color, resolve_continuity, resolve_init_mode, resolve_motion, resolve_sampling, resolve_size,
    resolve_timing, resolve_video, round_to_multiple, scale_by_schedules, vace_overlap,
)
from .choices import checked_number as _number, first as _first, wan_option as _wan_option
from .coverage import format_key_report, key_report
from .guided import KeptImage, describe_kept, keep_guided_images, keep_init_image
from .movement import SCHEDULE_KEYS, CameraPath, describe_movement
from .prompts import plain_prompt, prompt_at, prompt_keyframes
from .schedules import parse_schedule
from .seeds import frame_seeds
from .settings import MAX_FPS, MIN_FPS, DeforumSettings
from .specs import T2V, VACE, ModelSpec
from .timeline import (
    MIN_CLIP_FRAMES, ClipFrames, ClipGapError, PlanError, Segment, SegmentFrames, group_segments, map_segment,
    split_segment,
)
from .video_input import VIDEO_INPUT, check_options, plan_notes, restyle_clips, video_color, video_timing, with_source

# PlanError, MIN_CLIP_FRAMES and split_segment live in timeline.py (the frame arithmetic) and are part of this API.
__all__ = [
    "CONTINUITY", "DEFAULT_VACE_OVERLAP", "MIN_CLIP_FRAMES", "PLAN_VERSION", "Choice", "Clip", "ClipPlan", "PlanError",
    "PlanMetrics", "PlanOptions", "camera_path", "format_plan", "plan_clips", "round_to_multiple", "split_segment",
]

PLAN_VERSION = 1
# Prompt segments shorter than this are merged into one clip: each clip costs a join and its 4n+1 rounding,
# and Wan needs a couple of seconds to show a scene (its clips are 5 s at most).
DEFAULT_MIN_CLIP_SECONDS = 2.0


@dataclass(frozen=True)
class PlanOptions:
    """Choices the user makes on top of the settings file (CLI flags, tab controls, `wan_*` keys)."""

    continuity: str = "auto"  # auto | i2v | vace | none
    overlap: int | None = None  # VACE: known frames carried into the next clip
    extra_modes: tuple[str, ...] = ()  # modes a second model (e.g. a separate I2V model) adds
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance: float | None = None
    flow_shift: float | None = None
    max_clip_frames: int | None = None
    guidance_2: float | None = None  # two-expert models: the low-noise expert's guidance
    exact_size: bool = False  # render the settings' W/H (rounded to the model's multiple), not the trained size
    sensitivity: float = 1.0
    language: str = "en"
    timing: str | None = None  # auto | native | interpolate | blend | nearest (choices.resolve_timing)
    fps_tolerance: float | None = None  # auto timing maps 1:1 within this fraction of the model's rate
    min_clip_seconds: float | None = None  # merge prompt segments shorter than this; 0 keeps every cut
    color_match: bool = True  # False turns matching off whatever color_coherence says
    preset: str | None = None  # quality | fast | turbo (core/speed.py): a step-distill LoRA's sampling values
    cache: str | None = None  # NAME[:THRESHOLD]: a diffusers step cache on the transformer(s)
    loras: tuple[str, ...] = ()  # NAME_OR_FILE[:WEIGHT[:WEIGHT_2]] for every clip (checked by renderer/loras.py)
    motion: str | None = None  # words | guide | both (choices.resolve_motion)
    seed: int | None = None  # the resolved base seed when settings.seed is -1
    video: Any = None  # Video Input mode: the probed source (core.video_input.VideoSource), None until read


@dataclass(frozen=True)
class Clip:
    """One Wan pipeline call and the output frames it supplies."""

    index: int
    segment: int
    mode: str  # t2v | i2v | vace
    num_frames: int  # Wan frames generated, 4n+1
    overlap: int  # leading frames that repeat the previous clip (dropped at the join)
    output_start: int  # first output frame (Deforum index) this clip supplies
    output_end: int  # one past the last
    # For each output frame: (Wan frame, next Wan frame, weight of the next one).
    sources: tuple[tuple[int, int, float], ...]
    prompt: str
    negative_prompt: str
    prompt_key: str
    movement: str
    seed: int
    steps: int
    guidance: float
    flow_shift: float
    enhanced_prompt: str | None = None
    guidance_2: float | None = None  # the low-noise expert's guidance (two-expert models), else None
    stripped: tuple[str, ...] = ()  # A1111 syntax taken out of the prompt and negative prompt
    loras: tuple[tuple[str, float], ...] = ()  # <lora:name:weight> tags, for LoRA support to come
    shown_end: int = 0  # one past the last Wan frame the timeline uses; the next clip continues from before it
    merged: tuple[str, ...] = ()  # prompt keys merged into this clip (prompts shorter than min_clip_seconds)
    guide_scale: float | None = None  # VACE conditioning scale of the motion guide (from strength_schedule)
    kept: tuple[KeptImage, ...] = ()  # images this clip keeps: guided images, the init image (core/guided.py)
    keep_scale: float | None = None  # VACE conditioning scale with kept images (wins over guide_scale)

    @property
    def cost(self) -> int:
        """Relative cost: Wan frames x denoising steps x transformer passes (2 with guidance above 1: CFG)."""
        guided = self.guidance > 1 or (self.guidance_2 or 0) > 1
        return self.num_frames * self.steps * (2 if guided else 1)

    @property
    def tail_end(self) -> int:
        return self.shown_end or self.num_frames

    @property
    def output_frames(self) -> int:
        return self.output_end - self.output_start

    @property
    def render_prompt(self) -> str:
        """What Wan is given: the enhanced prompt if any, else the prompt with the camera words."""
        if self.enhanced_prompt:
            return self.enhanced_prompt
        if not self.movement:
            return self.prompt
        return f"{self.prompt.rstrip(' ,.')}, {self.movement}" if self.prompt else self.movement


@dataclass(frozen=True)
class PlanMetrics:
    output_frames: int
    generated_frames: int  # Wan frames generated, overlaps and surplus included
    needed_frames: int  # Wan frames the timeline needs at the native rate
    surplus_frames: int  # generated by 4n+1 rounding and dropped
    overlap_frames: int  # repeated at joins and dropped
    clip_count: int
    seconds: float
    cost: int = 0  # Wan frames x steps x passes over all clips
    quality_cost: int = 0  # the same with the model's official steps and guidance (preset quality)
    timeline_frames: int = 0  # Wan frames the whole timeline spans at the model's rate (duration x native fps)

    @property
    def generated_per_output(self) -> float:
        return self.generated_frames / self.output_frames

    @property
    def generated_per_needed(self) -> float:
        return self.generated_frames / max(self.needed_frames, 1)

    @property
    def generated_per_timeline(self) -> float:
        """Wan frames generated per Wan frame of the timeline: what joins, overlaps and rounding cost."""
        return self.generated_frames / max(self.timeline_frames, 1)


@dataclass(frozen=True)
class ClipPlan:
    version: int
    model_kind: str
    native_fps: int
    fps: float
    max_frames: int
    width: int
    height: int
    seed: int
    continuity: str
    color_match: bool
    clips: tuple[Clip, ...]
    metrics: PlanMetrics
    warnings: tuple[str, ...] = ()
    choices: tuple[Choice, ...] = ()
    timing: str = "blend"  # how output frames come from Wan frames (choices.resolve_timing)
    color_space: str | None = None  # RGB | HSV | LAB when clips are matched to a fixed reference
    color_reference: str = "frame0"  # frame0 | image
    color_image: str | None = None  # color_coherence_image_path, for reference "image"
    video: bool = True  # make the mp4 (skip_video_creation turns it off)
    crf: int = 17  # libx264 quality (ffmpeg_crf)
    ffmpeg_preset: str = "slow"  # libx264 preset (Deforum's ffmpeg_preset)
    keys: str = ""  # the Deforum keys set away from their defaults: used, mapped (to what) or ignored (why)
    preset: str = "quality"
    scheduler: str | None = None  # a preset's scheduler class (diffusers), else the model's own
    scheduler_options: dict = field(default_factory=dict)
    cache: str | None = None  # NAME:THRESHOLD of the step cache, if any
    loras: tuple[str, ...] = ()  # the user's LoRAs (prompt tags are per clip)
    motion: str = "words"  # words | guide | both
    bootstrap: bool = False  # the first clip starts from the first frame of a short T2V render (guide, no init image)

    def clip_for_frame(self, frame: int) -> Clip:
        for clip in self.clips:
            if clip.output_start <= frame < clip.output_end:
                return clip
        raise IndexError(f"frame {frame} is outside the plan's {self.max_frames} frames")

    def with_prompts(self, prompts: dict[int, str]) -> "ClipPlan":
        """A copy with enhanced prompts for the given clip indices."""
        clips = tuple(replace(c, enhanced_prompt=prompts.get(c.index, c.enhanced_prompt)) for c in self.clips)
        return replace(self, clips=clips)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["clips"] = [{**asdict(c), "sources": [list(s) for s in c.sources]} for c in self.clips]
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ClipPlan":
        if data.get("version") != PLAN_VERSION:
            raise PlanError(f"plan version {data.get('version')!r} is not supported (expected {PLAN_VERSION})")
        clips = tuple(
            Clip(**{**c, "sources": tuple((int(a), int(b), float(w)) for a, b, w in c["sources"]),
                    "stripped": tuple(c.get("stripped", ())), "merged": tuple(c.get("merged", ())),
                    "loras": tuple((str(n), float(w)) for n, w in c.get("loras", ())),
                    "kept": tuple(KeptImage(**k) for k in c.get("kept", ()))}) for c in data["clips"]
        )
        metrics = PlanMetrics(**data["metrics"])
        rest = {f.name: data[f.name] for f in fields(cls)
                if f.name in data and f.name not in ("clips", "metrics", "warnings", "choices", "loras")}
        rest["loras"] = tuple(data.get("loras", ()))
        return cls(**rest, clips=clips, metrics=metrics, warnings=tuple(data.get("warnings", ())),
                   choices=tuple(Choice(**c) for c in data.get("choices", ())))

    @classmethod
    def from_json(cls, text: str) -> "ClipPlan":
        return cls.from_dict(json.loads(text))


# ---------------------------------------------------------------- helpers


def camera_path(settings: DeforumSettings) -> CameraPath:
    """Parse the camera schedules of `settings` into per-frame arrays."""
    schedules = {k: parse_schedule(getattr(settings, k), settings.max_frames, settings.seed, key=k)
                 for k in SCHEDULE_KEYS}
    zoom = schedules["zoom"]
    if settings.animation_mode != "2D":
        schedules["zoom"] = np.ones_like(zoom)  # only Deforum's 2D warp reads zoom
    elif (zoom <= 0).any():
        frame = int((zoom <= 0).argmax())
        raise PlanError(f"zoom: the zoom factor at frame {frame} is {zoom[frame]:g}; it must be above 0 "
                        "(1.0 = no zoom, 1.02 = zoom in)")
    return CameraPath.from_schedules(
        schedules,
        settings.animation_mode,
        shake_name=settings.shake_name,
        shake_intensity=settings.shake_intensity,
        shake_speed=settings.shake_speed,
    )


# ---------------------------------------------------------------- planning


@dataclass(frozen=True)
class _Choices:
    """The options resolved against the settings and the model: what every clip is planned with."""

    continuity: str  # i2v | vace | none
    width: int
    height: int
    max_clip: int  # largest clip, 4n+1
    overlap: int  # frames each chained clip repeats: VACE's K, I2V's 1, 0 for independent clips
    steps: int
    guidance: float
    guidance_2: float | None
    flow_shift: float
    sensitivity: float
    language: str
    init_mode: str | None  # how the first clip starts from the init image, if it does
    culprit: str  # the option to name when clips are too short to reach the next output frame
    warnings: tuple[str, ...]
    choices: tuple[Choice, ...]  # size, steps, guidance(_2), flow shift, timing, colour: value and source
    negative_prompt: str  # the model's official negative prompt, for clips whose settings give none
    prompt_steps: int  # Deforum's steps, which [from:to:when] prompt editing counts in
    timing: str  # native | interpolate | blend | nearest
    rate: Fraction  # Wan frames per output frame
    min_clip_frames: int  # output frames below which prompt segments are merged
    color: ColorChoice
    preset: Any  # core.speed.Preset
    cache: str | None
    motion: str
    bootstrap: bool  # init_mode VACE from a short T2V render's first frame, not from an init image


def _min_clip_frames(settings: DeforumSettings, options: PlanOptions) -> tuple[int, Choice]:
    """Output frames a clip should at least span: min_clip_seconds (option, `wan_min_clip_seconds`, default)."""
    raw = _first(options.min_clip_seconds, _wan_option(settings, "min_clip_seconds"))
    where = ("option: min_clip_seconds" if options.min_clip_seconds is not None
             else "settings: wan_min_clip_seconds" if raw is not None else "default")
    seconds = _number("min_clip_seconds", _first(raw, DEFAULT_MIN_CLIP_SECONDS), float, 0, 3600)
    note = "every prompt change cuts a clip" if seconds == 0 else "shorter prompt segments are merged into one clip"
    return round(seconds * settings.fps), Choice("min_clip_seconds", seconds, f"{where}: {note}")


def _choices(settings: DeforumSettings, model: ModelSpec, options: PlanOptions) -> _Choices:
    """Check and resolve every option, in a fixed order so the first bad one is the one named."""
    modes = set(model.modes) | set(options.extra_modes)
    continuity, warnings = resolve_continuity(options, modes)
    width, height, notes, size = resolve_size(settings, options, model)
    max_clip = clip_limit(settings, options, model)
    overlap = vace_overlap(settings, options, continuity, max_clip)
    steps, guidance, guidance_2, flow_shift, choices, sampling_notes = resolve_sampling(settings, model, options,
                                                                                       width, height)
    values = {"steps": steps, "guidance": guidance, "guidance_2": guidance_2, "flow_shift": flow_shift}
    values, choices, preset_notes, preset = apply_preset(options.preset, options, model, values, choices,
                                                         bool(options.loras))
    steps, guidance, guidance_2, flow_shift = (values[k] for k in ("steps", "guidance", "guidance_2", "flow_shift"))
    cache, cache_choice = resolve_cache(options, model)
    motion, motion_choice = resolve_motion(settings, options, continuity)
    _check_fps(settings)
    video = settings.animation_mode == VIDEO_INPUT
    timing, rate, timing_choice, timing_notes = (video_timing(settings) if video
                                                 else resolve_timing(settings, options, model))
    min_frames, min_choice = _min_clip_frames(settings, options)
    color, color_notes = video_color(*resolve_color(settings, options)) if video else resolve_color(settings, options)
    sensitivity = _number("sensitivity", options.sensitivity, float, 0.01, 100)
    init_mode, init_notes = (None, []) if video else resolve_init_mode(settings, model, modes)
    bootstrap = motion != "words" and init_mode is None  # the guide needs a picture: a short T2V render's frame 0
    init_mode = VACE if bootstrap else init_mode
    culprit = "max_clip_frames" if max_clip < model.max_frames else "overlap" if continuity == VACE else "fps"
    notes = warnings + notes + sampling_notes + preset_notes + timing_notes + color_notes + init_notes
    extra = (Choice("preset", preset.name, preset.label),) if preset.name != "quality" else ()
    extra += (cache_choice,) if cache_choice else ()
    extra += (motion_choice,) if motion != "words" else ()
    extra += (Choice("parseq", settings.parseq.value, settings.parseq.describe()),) if settings.parseq else ()
    return _Choices(continuity, width, height, max_clip, overlap, steps, guidance, guidance_2, flow_shift, sensitivity,
                    options.language, init_mode, culprit, tuple(notes),
                    (size, *choices, *extra, timing_choice, min_choice, color.choice), model.negative_prompt,
                    settings.steps, timing, rate, min_frames, color, preset, cache, motion, bootstrap)


def _check_fps(settings: DeforumSettings) -> None:
    if not MIN_FPS <= settings.fps <= MAX_FPS:  # settings_from_dict checks this; a hand-built one may not
        raise PlanError(f"fps: must be between {MIN_FPS} and {MAX_FPS}, got {settings.fps!r}")


def _map_segment(segment: Segment, choices: _Choices, fps: float) -> SegmentFrames:
    """`map_segment`, with a clip too short to reach the next output frame named by the option behind it."""
    try:
        return map_segment(segment)
    except ClipGapError as gap:
        raise PlanError(f"{choices.culprit}: at {fps:g} fps {gap}; allow longer clips (max_clip_frames), "
                        "fewer overlap frames or continuity none") from None


@dataclass(frozen=True)
class _Timeline:
    """Per-frame data the clips read: parsed once from the settings."""

    settings: DeforumSettings
    seeds: Any  # Deforum's seed at every frame
    keyframes: list  # prompt keyframes, in frame order
    path: CameraPath

    def segments(self) -> list[tuple[int, int, int]]:
        """(keyframe index, first output frame, one past the last) for each prompt that shows a frame."""
        bounds = [0] + [kf.frame for kf in self.keyframes[1:]] + [self.settings.max_frames]
        return [(seg, a, b) for seg, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])) if b > a]


def _merged_text(texts: list[str], joiner: str) -> str:
    """Distinct prompt texts in order, one sentence each, for a clip that spans several prompts."""
    distinct = [t for t in dict.fromkeys(t.strip() for t in texts) if t]
    return joiner.join(t.rstrip(" ,.") if i < len(distinct) - 1 else t for i, t in enumerate(distinct))


def _clip(index: int, members: list[tuple[int, int, int]], frames: ClipFrames, mode: str, choices: _Choices,
          timeline: _Timeline) -> Clip:
    """A clip of the plan: its frames, with the prompts, camera words and seed of the output frames it shows.

    A clip spanning several (merged) prompt segments gets their prompts in order, joined as sentences.
    """
    settings, start, end = timeline.settings, frames.output_start, frames.output_end
    shown = [(seg, max(a, start)) for seg, a, b in members if a < end and b > start]
    texts = [prompt_at(settings, at, timeline.keyframes) for _, at in shown]
    positives = [plain_prompt(t.positive, choices.prompt_steps) for t in texts]
    negatives = [plain_prompt(t.negative, choices.prompt_steps) for t in texts]
    keys = tuple(dict.fromkeys(timeline.keyframes[seg].key for seg, _ in shown))
    movement = describe_movement(timeline.path, start, end, settings.fps, sensitivity=choices.sensitivity,
                                 language=choices.language)
    negative = _merged_text([n.text for n in negatives], ", ")
    return Clip(
        index=index,
        segment=shown[0][0],
        mode=mode,
        num_frames=frames.num_frames,
        overlap=frames.overlap,
        output_start=start,
        output_end=end,
        sources=frames.sources,
        prompt=_merged_text([p.text for p in positives], ". Then "),
        negative_prompt=negative or choices.negative_prompt,
        prompt_key=keys[0],
        movement=movement.text,
        seed=timeline.seeds[start],
        steps=choices.steps,
        guidance=choices.guidance,
        flow_shift=choices.flow_shift,
        guidance_2=choices.guidance_2,
        stripped=tuple(dict.fromkeys(x for p in positives + negatives for x in p.stripped)),
        loras=tuple(dict.fromkeys(x for p in positives + negatives for x in p.loras)),
        shown_end=frames.shown_end,
        merged=keys if len(keys) > 1 else (),
    )


def _guided(settings: DeforumSettings, clips: list[Clip], motion: str) -> list[Clip]:
    """VACE clips follow a warped motion guide at a scale from strength_schedule; with guide alone their
    prompts lose the camera words. A clip that starts from text has no picture to warp and keeps its words."""
    scales = guide_scales(settings, [(c.output_start, c.output_end) for c in clips])
    return [replace(c, guide_scale=scale, movement="" if motion == "guide" else c.movement) if c.mode == VACE else c
            for c, scale in zip(clips, scales)]


def plan_clips(settings: DeforumSettings, model: ModelSpec, options: PlanOptions = PlanOptions()) -> ClipPlan:
    """Cut the settings' timeline into Wan clips for `model`.

    Resolve the options; parse seeds, prompt keyframes and the camera path once; merge prompt
    segments shorter than min_clip_seconds; map each group's output frames onto a chain of Wan
    clips (`timeline.map_segment`); give each clip the prompts, camera words and seed of the
    output frames it shows. The first clip starts fresh (or from the init image); every later
    one continues the one before.
    """
    video_rows: list[Choice] = []
    if settings.animation_mode == VIDEO_INPUT:  # every clip restyles its span of the source (core/video_input.py)
        options = check_options(settings, model, options)
        video_rows, video_notes = plan_notes(settings, options.video)
        settings = with_source(settings, options.video) if options.video else settings
    choices = _choices(settings, model, options)
    seed = options.seed if options.seed is not None else settings.seed
    timeline = _Timeline(settings, frame_seeds(settings, seed), prompt_keyframes(settings), camera_path(settings))
    chained = T2V if choices.continuity == "none" else choices.continuity
    blend = choices.timing in ("interpolate", "blend")
    segments = timeline.segments()
    groups = group_segments([(a, b) for _, a, b in segments], choices.min_clip_frames)
    clips: list[Clip] = []
    needed = surplus = 0
    for group in groups:
        members = [segments[i] for i in group]
        start, end = members[0][1], members[-1][2]
        first_overlap = choices.overlap if clips else (1 if choices.init_mode else 0)
        segment = Segment(start, end, choices.rate, choices.max_clip, first_overlap, choices.overlap, blend)
        frames = _map_segment(segment, choices, settings.fps)
        needed, surplus = needed + frames.needed, surplus + frames.surplus
        for piece in frames.clips:
            mode = chained if clips else choices.init_mode or T2V
            clips.append(_clip(len(clips), members, piece, mode, choices, timeline))
    clips, scheduled = scale_by_schedules(settings, clips)
    if choices.motion != "words":
        clips = _guided(settings, clips, choices.motion)
    if choices.init_mode == VACE and not choices.bootstrap:
        clips = keep_init_image(settings, clips)
    clips, kept_notes = keep_guided_images(settings, clips, model, set(model.modes) | set(options.extra_modes))
    if settings.animation_mode == VIDEO_INPUT:
        clips = restyle_clips(settings, clips)
        choices = replace(choices, warnings=choices.warnings + tuple(video_notes))

    metrics = PlanMetrics(
        output_frames=settings.max_frames,
        generated_frames=sum(c.num_frames for c in clips),
        needed_frames=needed,
        surplus_frames=surplus,
        overlap_frames=sum(c.overlap for c in clips),
        clip_count=len(clips),
        seconds=settings.max_frames / settings.fps,
        cost=sum(c.cost for c in clips),
        quality_cost=sum(c.num_frames * model.default_steps * (2 if model.default_guidance > 1 else 1) for c in clips),
        timeline_frames=math.ceil(settings.max_frames * choices.rate),
    )
    color = choices.color
    video = resolve_video(settings)
    keys = key_report(settings, choices.motion)
    return ClipPlan(
        version=PLAN_VERSION,
        model_kind=model.kind,
        native_fps=model.native_fps,
        fps=settings.fps,
        max_frames=settings.max_frames,
        width=choices.width,
        height=choices.height,
        seed=seed,
        continuity=choices.continuity,
        color_match=color.space is not None,
        clips=tuple(clips),
        metrics=metrics,
        warnings=choices.warnings + keys.warnings + tuple(kept_notes),
        choices=tuple(video_rows) + choices.choices + tuple(scheduled) + (negative_choice(clips, model), video.choice),
        timing=choices.timing,
        color_space=color.space,
        color_reference=color.reference,
        color_image=color.image,
        video=video.make,
        crf=video.crf,
        ffmpeg_preset=video.preset,
        keys=format_key_report(keys, changed_only=True),
        preset=choices.preset.name,
        scheduler=choices.preset.scheduler,
        scheduler_options=choices.preset.scheduler_options(two_experts=model.default_guidance_2 is not None),
        cache=choices.cache,
        loras=tuple(options.loras),
        motion=choices.motion,
        bootstrap=choices.bootstrap,
    )


def format_plan(plan: ClipPlan, width: int = 120) -> str:
    """The plan as a table a user can read before rendering."""
    m = plan.metrics
    lines = [
        f"{plan.model_kind} at {plan.native_fps} fps -> {plan.max_frames} frames at {plan.fps:g} fps "
        f"({m.seconds:.2f} s), {plan.width}x{plan.height}, continuity {plan.continuity}, timing {plan.timing}",
        f"{m.clip_count} clips, {m.generated_frames} Wan frames generated for a timeline of {m.timeline_frames} "
        f"(x{m.generated_per_timeline:.2f}; {m.needed_frames} needed, {m.overlap_frames} overlap, "
        f"{m.surplus_frames} surplus); cost {m.cost} (Wan frames x steps x passes, 2 with CFG)"
        + (f", x{m.cost / max(m.quality_cost, 1):.2f} of preset quality" if plan.preset != "quality" else ""),
    ]
    for choice in plan.choices:
        value = choice.value if not isinstance(choice.value, float) else f"{choice.value:g}"
        name = choice.name if "_" in choice.name and choice.name.endswith(("_2", "schedule")) else \
            choice.name.replace("_", " ")
        lines.append(f"{name:<18} {value!s:<12} {choice.source}")
    syntax = dict.fromkeys((c.prompt_key, c.stripped, c.loras) for c in plan.clips if c.stripped)
    for key, stripped, loras in syntax:
        lora = f"; LoRA weights for its clips: {', '.join(f'{n}:{w:g}' for n, w in loras)}" if loras else ""
        lines.append(f"prompt {key}: A1111 syntax removed: {' '.join(stripped)}{lora}")
    for c in plan.clips:
        if c.merged:
            lines.append(f"clip {c.index} merges prompts {', '.join(c.merged)} (min clip length "
                         f"{_min_seconds(plan):g} s; 0 keeps every cut)")
    lines += describe_kept(plan.clips)
    if plan.keys:  # the table without its warnings: they follow with the plan's own
        lines += [""] + plan.keys.split("\n\nwarnings:")[0].splitlines()
    if plan.warnings:
        lines += [""] + [f"warning: {w}" for w in plan.warnings]
    header = (f"{'clip':>4} {'frames':>11} {'seconds':>13} {'wan':>4} {'mode':>4} {'seed':>10} {'cost':>5}  "
              "prompt | movement")
    lines += ["", header]
    total = max(m.cost, 1)
    for c in plan.clips:
        t0, t1 = c.output_start / plan.fps, c.output_end / plan.fps
        head = (f"{c.index:>4} {c.output_start:>5}-{c.output_end - 1:<5} {t0:>6.2f}-{t1:<6.2f} {c.num_frames:>4} "
                f"{c.mode:>4} {c.seed:>10} {c.cost / total:>5.0%}  ")
        room = max(width - len(head), 30)
        movement = "; ".join(x for x in (c.movement, c.guide_scale is not None and f"guide x{c.guide_scale:.2f}") if x)
        prompt_room = max(room - len(movement) - 3, 20)
        prompt = c.prompt if len(c.prompt) <= prompt_room else c.prompt[: prompt_room - 1] + "…"
        lines.append(f"{head}{prompt} | {movement}")
    return "\n".join(lines)


def _min_seconds(plan: ClipPlan) -> float:
    return next((float(c.value) for c in plan.choices if c.name == "min_clip_seconds"), DEFAULT_MIN_CLIP_SECONDS)
