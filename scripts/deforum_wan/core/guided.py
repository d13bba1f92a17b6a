"""Images the clips keep: Deforum's Guided Images (use_looper, init_images) and the init image's strength.

Deforum (deforum-art/sd-webui-deforum@3224268, generate.py `generate_inner`) reads
`init_images` as JSON of frame -> image: a key is a whole number, or an expression of
`max_f` (max_frames - 1) evaluated with numexpr and truncated by `int()`; each frame's
img2img init is blended towards the image in force (blendFactorMax, blendFactorSlope,
tweening_frames_schedule, color_correction_factor) at strength image_strength_schedule
(it replaces strength_schedule: `args.strength = loop_args.imageStrength`), in 2D and
3D modes only (render.py and generate.py test `animation_mode in ['2D', '3D']`).

Wan renders whole clips, so an image becomes a known frame: the clip whose output
frames include the image's frame keeps the image at the Wan frame that output frame
shows (`Clip.sources`). A VACE clip keeps it anywhere (mask black there); an FLF2V
clip takes it as its first or last image; anything else cannot honour it and the plan
says so. Keys are evaluated by schedules.evaluate_frame_key (the checked expressions
of expressions.py): nothing here reaches eval.

Strength mappings (documented in coverage.py and the README too):
* image_strength_schedule -> the VACE conditioning scale of each clip that keeps a
  guided image: its mean over the clip's output frames / 0.75 (Deforum's default,
  args.py LoopArgs, so the default gives VACE's own 1.0), within 0..2;
* strength (the init image's img2img strength, 0..1, args.py DeforumArgs default 0.8)
  -> the conditioning scale of a VACE first clip that starts from the init image:
  strength / 0.8, so Deforum's default is VACE's 1.0 and strength 0 ignores the image.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Mapping

from .choices import checked_number, truthy
from .schedules import evaluate_frame_key, parse_schedule
from .expressions import ExpressionBudget
from .specs import I2V, T2V, VACE, ModelSpec
from .timeline import PlanError

if TYPE_CHECKING:  # pragma: no cover
    from .plan import Clip
    from .settings import DeforumSettings

DEFORUM_IMAGE_STRENGTH = 0.75  # args.py@3224268 LoopArgs: image_strength_schedule "0:(0.75)"
DEFORUM_INIT_STRENGTH = 0.8  # args.py@3224268 DeforumArgs: strength 0.8
MAX_GUIDED_IMAGES = 100  # more keyframe images than this is no longer guidance
KEEP, FIRST, LAST, INIT = "keep", "first", "last", "init"  # VACE kept frame; first / last image; init image
GUIDED_MODES = ("2D", "3D")  # Deforum reads init_images in these modes only


@dataclass(frozen=True)
class GuidedImage:
    """One init_images entry: the key as written, the output frame it resolves to, the image path or URL."""

    key: str
    frame: int
    source: str

    @property
    def field(self) -> str:
        return f'init_images["{self.key}"]'


@dataclass(frozen=True)
class KeptImage:
    """An image a clip keeps: which field gave it, at which output frame and Wan frame, and how."""

    field: str  # init_images["max_f/4-5"]
    source: str
    frame: int  # output frame (Deforum index)
    wan_frame: int  # frame of the clip's Wan render
    role: str  # keep (VACE, mask black) | first | last (an I2V clip's start / FLF2V's end image) | init


def guided_on(settings: DeforumSettings) -> bool:
    """use_looper on, in a mode where Deforum reads init_images."""
    return truthy(settings.raw.get("use_looper")) and settings.animation_mode in GUIDED_MODES


def parse_init_images(value: Any, max_frames: int, seed: int = -1) -> tuple[GuidedImage, ...]:
    """init_images (JSON text or an object of frame key -> image) as images in frame order.

    A key that cannot be evaluated, a frame outside 0..max_frames-1, two keys on one frame,
    or a value that is not a path or URL is a PlanError naming init_images["key"].
    """
    data: Any = value
    if isinstance(value, str):
        try:
            data = json.loads(value)
        except json.JSONDecodeError as exc:
            raise PlanError(f"init_images: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                            'expected {"0": "first.png", "max_f/2": "middle.png"}') from None
    if not isinstance(data, Mapping):
        raise PlanError(f"init_images: expected an object of frame -> image, got {type(data).__name__}")
    if not data:
        raise PlanError("init_images: use_looper is on but init_images lists no image")
    if len(data) > MAX_GUIDED_IMAGES:
        raise PlanError(f"init_images: at most {MAX_GUIDED_IMAGES} images, got {len(data)}")
    budget = ExpressionBudget()
    images: dict[int, GuidedImage] = {}
    for key, source in data.items():
        key = str(key)
        field = f'init_images["{key}"]'
        if not isinstance(source, str) or not source.strip():
            raise PlanError(f"{field}: expected an image path or URL, got {source!r}")
        frame = evaluate_frame_key(key, max_frames, seed, key=field, budget=budget)
        if not 0 <= frame < max_frames:
            raise PlanError(f"{field}: frame {frame} is outside the animation's frames 0..{max_frames - 1}")
        if frame in images:
            raise PlanError(f'{field}: frame {frame} already has an image (init_images["{images[frame].key}"])')
        images[frame] = GuidedImage(key, frame, source.strip())
    return tuple(images[f] for f in sorted(images))


def _wan_frame(clip: Clip, frame: int) -> int:
    """The Wan frame an output frame shows (the nearer of two it falls between), never one the clip repeats."""
    a, b, weight = clip.sources[frame - clip.output_start]
    return max(b if weight >= 0.5 else a, clip.overlap)


def _place(clip: Clip, image: GuidedImage, model: ModelSpec) -> tuple[KeptImage | None, str | None]:
    """How `clip` can keep `image`: a KeptImage, or a warning why it cannot."""
    wan = _wan_frame(clip, image.frame)
    where = f"{image.field} at output frame {image.frame} (clip {clip.index}, Wan frame {wan})"
    if clip.mode == VACE:
        return KeptImage(image.field, image.source, image.frame, wan, KEEP), None
    if clip.mode == I2V and model.kind == "flf2v":
        if wan == clip.num_frames - 1:
            return KeptImage(image.field, image.source, image.frame, wan, LAST), None
        if clip.index == 0 and image.frame == clip.output_start:
            return KeptImage(image.field, image.source, image.frame, 0, FIRST), None
        return None, (f"{where} is not used: {model.label} takes an image only as a clip's first or last frame "
                      f"(Wan frames 0 and {clip.num_frames - 1}); move it to a clip's end or use a VACE model")
    if clip.mode == I2V and clip.index == 0 and image.frame == clip.output_start:
        return KeptImage(image.field, image.source, image.frame, 0, FIRST), None
    kind = "an I2V clip keeps no image inside it" if clip.mode == I2V else "a T2V clip keeps no image"
    return None, f"{where} is not used: {kind}; a VACE model keeps guided images at any frame"


def keep_guided_images(settings: DeforumSettings, clips: list[Clip], model: ModelSpec,
                       modes: set[str] | None = None) -> tuple[list[Clip], list[str]]:
    """Each clip with the guided images it keeps (and their conditioning scale), and warnings for the rest.

    A first clip that would start from text becomes a VACE clip when the job has VACE and an image
    falls in it, so it can keep that image; without VACE but with I2V (`modes`: the model's and a
    second model's), an image at frame 0 makes it an I2V clip started from that image.
    """
    modes = set(model.modes) if modes is None else modes
    if not truthy(settings.raw.get("use_looper")):
        return clips, []
    if settings.animation_mode not in GUIDED_MODES:
        return clips, [f"use_looper is ignored in animation_mode {settings.animation_mode}, as in Deforum "
                       "(guided images work in 2D and 3D)"]
    images = parse_init_images(settings.raw.get("init_images", ""), settings.max_frames, settings.seed)
    text = settings.raw.get("image_strength_schedule") or f"0:({DEFORUM_IMAGE_STRENGTH})"
    strength = parse_schedule(str(text), settings.max_frames, settings.seed, key="image_strength_schedule")
    out, notes = [], []
    for clip in clips:
        mine = [g for g in images if clip.output_start <= g.frame < clip.output_end]
        if mine and clip.mode == T2V and clip.index == 0 and VACE in modes:
            clip = replace(clip, mode=VACE)
        elif mine and clip.mode == T2V and clip.index == 0 and I2V in modes and mine[0].frame == clip.output_start:
            clip = replace(clip, mode=I2V)
        kept = []
        for image in mine:
            placed, note = _place(clip, image, model)
            kept += [placed] if placed else []
            notes += [note] if note else []
        if kept:
            scale = None
            if clip.mode == VACE:
                mean = float(strength[clip.output_start:clip.output_end].mean())
                scale = round(min(2.0, max(0.0, mean / DEFORUM_IMAGE_STRENGTH)), 3)
            clip = replace(clip, kept=clip.kept + tuple(kept), keep_scale=scale)
        out.append(clip)
    return out, notes


def init_strength_scale(settings: DeforumSettings) -> float:
    """A VACE first clip's conditioning scale from Deforum's `strength` (0..1): strength / 0.8."""
    raw = settings.raw.get("strength", DEFORUM_INIT_STRENGTH)
    strength = checked_number("strength", DEFORUM_INIT_STRENGTH if raw in (None, "") else raw, float, 0, 1)
    return round(strength / DEFORUM_INIT_STRENGTH, 3)


def keep_init_image(settings: DeforumSettings, clips: list[Clip]) -> list[Clip]:
    """A VACE first clip started from the init image keeps it at Wan frame 0 (before output frame 0, as an
    I2V start image is), at a conditioning scale from `strength`. Call only when the plan starts from it."""
    if not clips or clips[0].mode != VACE or clips[0].overlap != 1:
        return clips
    first = clips[0]
    kept = KeptImage("init_image", str(settings.init_image), first.output_start, 0, INIT)
    return [replace(first, kept=(kept,) + first.kept, keep_scale=init_strength_scale(settings)), *clips[1:]]


def describe_kept(clips: tuple[Clip, ...] | list[Clip]) -> list[str]:
    """Plan lines: "clip N keeps init_images[...] at output frame F (Wan frame W)", and each clip's scale."""
    how = {KEEP: "", FIRST: " as its start image", LAST: " as its last image"}
    lines = []
    for clip in clips:
        for k in clip.kept:
            lines.append(f"clip {clip.index} keeps init_image as its Wan frame 0 (mask keep)" if k.role == INIT else
                         f"clip {clip.index} keeps {k.field} at output frame {k.frame} (Wan frame {k.wan_frame})"
                         f"{how[k.role]}")
        if clip.keep_scale is not None:
            guided = any(k.role != INIT for k in clip.kept)
            source = (f"image_strength_schedule mean / {DEFORUM_IMAGE_STRENGTH:g}" if guided else
                      f"strength / {DEFORUM_INIT_STRENGTH:g}")
            lines.append(f"clip {clip.index} VACE conditioning scale {clip.keep_scale:g} ({source})")
    return lines


_BETWEEN = "Wan generates the frames between kept images: nothing is blended into each frame's start picture"
#: What a Wan render does with each Guided Images key (coverage.py reports it): status and note.
LOOP_NOTES = {
    "use_looper": ("mapped", "guided images become known frames of the clips showing their frames (VACE keeps "
                             "them anywhere, FLF2V at a clip's first/last frame); 2D/3D only, as in Deforum"),
    "init_images": ("used", "frame -> image; frame keys are checked expressions of max_f (= max_frames - 1)"),
    "image_strength_schedule": ("mapped", "VACE conditioning scale of each clip keeping a guided image = its mean "
                                          "over the clip / 0.75 (Deforum's default gives VACE's 1.0), within 0..2"),
    "image_keyframe_strength_schedule": ("ignored", "a kept frame is kept whole: VACE's mask is binary "
                                                    "(WanVACEPipeline thresholds it at 0.5), so no per-keyframe "
                                                    "strength"),
    "blendFactorMax": ("ignored", _BETWEEN), "blendFactorSlope": ("ignored", _BETWEEN),
    "tweening_frames_schedule": ("ignored", _BETWEEN),
    "color_correction_factor": ("ignored", "colours follow color_coherence's one reference, kept frames included"),
}
STRENGTH_NOTE = ("a VACE first clip keeps the init image at conditioning scale strength / 0.8 (Deforum's default "
                 "is VACE's 1.0); I2V/FLF2V/TI2V start from the image itself")
