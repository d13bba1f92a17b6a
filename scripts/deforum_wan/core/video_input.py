"""Deforum's Video Input mode: which source frames are kept, and how the plan restyles them.

Deforum extracts frames from `video_init_path` (vid2frames, video_audio_utilities.py@3224268):
it reads from `extract_from_frame` on and keeps source frame `i` when `i % extract_nth_frame == 0`
and `i <= extract_to_frame` (-1: to the end; a `to` at or before `from` is an error). The number
of frames kept becomes `max_frames` (render_modes.py@3224268 render_input_video), and each output
frame is its source frame restyled at the strength schedule (render.py@3224268, "grab init image
for current frame"). The optional mask video (`use_mask_video`, `video_mask_path`) is extracted
with the same rule; white is where the picture changes.

Here every clip is VACE video-to-video: output frame i is extracted frame i, one Wan frame per
source frame, so the video keeps the source's timing: the mp4 plays at the source's fps divided
by extract_nth_frame. Deforum plays the frames at the settings' `fps` instead, which changes the
speed whenever the two differ (and puts its Init Video soundtrack out of step); the plan says so.
The renderer probes the video (renderer/source_video.py) and hands the result in as a
`VideoSource`; this module is the pure arithmetic over it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from .choices import Choice, ColorChoice, checked_number, guide_scales, wan_option
from .settings import MAX_FPS, MIN_FPS, DeforumSettings
from .specs import VACE, ModelSpec
from .timeline import PlanError

if TYPE_CHECKING:  # pragma: no cover
    from .plan import Clip, PlanOptions

VIDEO_INPUT = "Video Input"
MAX_EXTRACTED_FRAMES = 10_000  # output frames one Video Input render may take from its source
_DEFORUM = "Deforum's vid2frames (video_audio_utilities.py@3224268)"


@dataclass(frozen=True)
class Extraction:
    """Deforum's extract_nth_frame / extract_from_frame / extract_to_frame."""

    nth: int = 1
    start: int = 0
    end: int = -1  # the last source frame kept at most (inclusive); -1: the video's end

    def kept(self, total: int) -> range:
        """Source frame numbers kept from a video of `total` frames: Deforum's rule, `i % nth == 0` counted
        from the video's first frame (not from `start`), `start <= i`, and `i <= end` unless end is -1."""
        first = -(-self.start // self.nth) * self.nth
        stop = total if self.end == -1 else min(total, self.end + 1)
        return range(first, max(first, stop), self.nth)

    def describe(self) -> str:
        to = "the end" if self.end == -1 else f"frame {self.end}"
        every = "every frame" if self.nth == 1 else f"one frame in {self.nth} (numbers divisible by {self.nth})"
        return f"from frame {self.start} to {to}, {every}"


def extraction(settings: DeforumSettings) -> Extraction:
    """The settings' extraction keys, checked; errors name the key."""
    raw = settings.raw
    nth = checked_number("extract_nth_frame", raw.get("extract_nth_frame", 1), int, 1, 10_000)
    start = checked_number("extract_from_frame", raw.get("extract_from_frame", 0), int, 0, 10_000_000)
    end = checked_number("extract_to_frame", raw.get("extract_to_frame", -1), int, -1, 10_000_000)
    if end != -1 and end <= start:  # Deforum raises the same (vid2frames)
        raise PlanError(f"extract_to_frame: {end} is not after extract_from_frame {start}; give a later frame, "
                        "or -1 for the end of the video")
    return Extraction(nth, start, end)


def uses_mask(settings: DeforumSettings) -> bool:
    value = settings.raw.get("use_mask_video", False)
    return value is True or str(value).strip().lower() in ("true", "1", "yes", "on")


@dataclass(frozen=True)
class VideoSource:
    """A probed source video (renderer/source_video.py) and the extraction applied to it."""

    path: str
    frames: int  # frames in the source
    fps: float  # the source's frame rate
    width: int
    height: int
    has_audio: bool
    extraction: Extraction
    mask_path: str | None = None  # the mask video, when use_mask_video is on
    mask_frames: int = 0  # frames kept from the mask video by the same extraction

    @property
    def kept(self) -> range:
        return self.extraction.kept(self.frames)

    @property
    def count(self) -> int:
        return len(self.kept)

    @property
    def output_fps(self) -> float:
        """The source's timing: one output frame per kept frame, nth source frames apart."""
        return self.fps / self.extraction.nth

    def source_frame(self, output_frame: int) -> int:
        """The source frame an output frame restyles; past the end, the last one (surplus Wan frames)."""
        kept = self.kept
        return kept[min(max(output_frame, 0), len(kept) - 1)]


def with_source(settings: DeforumSettings, source: VideoSource) -> DeforumSettings:
    """The settings with max_frames = the extracted frame count (as Deforum sets it) and fps = the source's timing."""
    if source.count == 0:
        raise PlanError(f"extract_from_frame: no frames of {source.path} ({source.frames} frames) are kept "
                        f"{source.extraction.describe()}")
    if source.count > MAX_EXTRACTED_FRAMES:
        raise PlanError(f"extract_nth_frame: {source.count} frames would be extracted from {source.path}; at most "
                        f"{MAX_EXTRACTED_FRAMES} (raise extract_nth_frame or narrow extract_from_frame/extract_to_frame)")
    fps = source.output_fps
    if not MIN_FPS <= fps <= MAX_FPS:
        raise PlanError(f"extract_nth_frame: the source's {source.fps:g} fps every {source.extraction.nth}th frame is "
                        f"{fps:g} fps; it must be between {MIN_FPS} and {MAX_FPS}")
    return replace(settings, max_frames=source.count, fps=int(fps) if float(fps).is_integer() else fps)


def check_options(settings: DeforumSettings, model: ModelSpec, options: PlanOptions) -> PlanOptions:
    """The options a Video Input plan runs with: VACE continuity, no camera words or guide, native timing.

    An explicit option that contradicts that is an error naming it; a model without VACE names animation_mode.
    """
    if VACE not in model.modes:
        raise PlanError(f"animation_mode: Video Input restyles the source video with VACE video-to-video; "
                        f"{model.label} ({model.kind}) has no VACE, choose a VACE model (kind vace)")
    if options.continuity not in ("auto", VACE):
        raise PlanError(f"continuity: Video Input chains VACE clips; {options.continuity} does not apply")
    motion = options.motion if options.motion is not None else wan_option(settings, "motion")
    if motion is not None and str(motion).strip().lower() != "words":
        field = "motion" if options.motion is not None else "wan_motion"
        raise PlanError(f"{field}: {motion} does not apply in Video Input mode: the source video is the motion")
    timing = options.timing if options.timing is not None else wan_option(settings, "timing")
    if timing is not None and str(timing).strip().lower() not in ("auto", "native"):
        field = "timing" if options.timing is not None else "wan_timing"
        raise PlanError(f"{field}: Video Input maps each source frame to one Wan frame; {timing} does not apply")
    return replace(options, continuity=VACE, motion="words")


def video_timing(settings: DeforumSettings) -> tuple[str, Fraction, Choice, list[str]]:
    """One Wan frame per extracted frame, whatever the model's native rate: the motion is the source's."""
    return "native", Fraction(1), Choice("timing", "native", f"Video Input: one Wan frame per extracted source "
                                         f"frame, played at {settings.fps:g} fps like the source"), []


def video_color(color: ColorChoice, notes: list[str]) -> tuple[ColorChoice, list[str]]:
    """Deforum matches Video Input frames only to color_coherence Image: its frame-0 sample is taken from a
    generation only without an init (render.py@3224268, "on strength 0, set color match to generation"), and
    Video Input always has one. So each clip keeps its source's colours unless the reference is an image."""
    if color.space is None or color.reference == "image":
        return color, notes
    return ColorChoice(None, "frame0", None, Choice("color_match", "off", "Video Input: each frame keeps its "
                                                    "source's colours, as in Deforum (only color_coherence Image "
                                                    "is matched)")), notes


def restyle_clips(settings: DeforumSettings, clips: list[Clip]) -> list[Clip]:
    """Every clip VACE video-to-video over its span of the source, without camera words.

    The strength schedule becomes each clip's VACE conditioning scale through `choices.guide_scales`
    (its mean over the clip / Deforum's default 0.65, so the default is VACE's own 1.0, within 0..2):
    in Deforum a higher strength keeps more of the source frame, and a higher scale makes VACE follow
    the source video more closely.
    """
    scales = guide_scales(settings, [(c.output_start, c.output_end) for c in clips])
    return [replace(c, mode=VACE, movement="", guide_scale=s) for c, s in zip(clips, scales)]


def plan_notes(settings: DeforumSettings, source: VideoSource | None) -> tuple[list[Choice], list[str]]:
    """The plan's rows for the source, the extraction, the frame rate, the mask and the sound; and warnings."""
    if source is None:
        return [], [f"Video Input: the source video is read when the render starts; until then max_frames "
                    f"({settings.max_frames}) stands in for its extracted frame count"]
    ex, kept = source.extraction, source.kept
    rows = [Choice("video_input", f"{source.count} frames", (
        f"{source.path}: {source.width}x{source.height}, {source.frames} frames at {source.fps:g} fps; "
        f"{ex.describe()} keeps source frames {kept[0]}-{kept[-1]}; max_frames is their count, as in {_DEFORUM}"))]
    notes: list[str] = []
    given = settings.raw.get("fps")
    fps = source.output_fps
    note = f"the source's timing: {source.fps:g} fps / extract_nth_frame {ex.nth}"
    if given is not None and abs(float(given) - fps) > 1e-6:
        note += (f"; the settings' fps {float(given):g} is not used (Deforum plays the frames at it: "
                 f"{float(given) / fps:.2f}x the source's speed)")
    rows.append(Choice("fps", round(fps, 4), note))
    if source.mask_path:
        rows.append(Choice("video_mask", source.mask_path, f"{source.mask_frames} mask frames, same extraction: "
                                                            "white is restyled, black keeps the source (Deforum's mask)"))
    sound = settings.add_soundtrack
    if sound == "Init Video":
        rows.append(Choice("soundtrack", "Init Video", "the source video's audio from its start, cut at the "
                                                       "video's end (Deforum's ffmpeg_stitch_video, -shortest)"))
        if not source.has_audio:
            notes.append(f"add_soundtrack Init Video: {source.path} has no audio track; the mp4 will have no sound")
        elif kept[0] > 0:
            notes.append(f"add_soundtrack Init Video: the sound starts at the source's beginning, as Deforum adds it, "
                         f"so it runs {kept[0] / source.fps:.2f} s ahead of the picture (extract_from_frame "
                         f"{ex.start}; Deforum does not trim it)")
    return rows, notes


def clip_source_frames(clip: Any, source: VideoSource) -> list[int]:
    """Source frame numbers for the clip's Wan frames after its known ones, one per Wan frame.

    Timing is native, so Wan frame j shows output frame `output_start - sources[0][0] + j`; Wan frames
    past the last output frame (4n+1 surplus) take the next source frames, and past the video's end its last.
    """
    offset = clip.output_start - clip.sources[0][0]
    return [source.source_frame(offset + j) for j in range(clip.overlap, clip.num_frames)]
