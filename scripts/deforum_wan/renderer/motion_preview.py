"""The camera preview: the init image (or a test card) flown along the settings' camera path, as an mp4, in seconds.

No model runs: every frame is the previous one warped by Deforum's per-frame
camera move (`core.warp.fly`), so what a settings file does to the picture can be
seen before a render. The video has the settings' fps and frame count at a small
size (the long side at most `max_side`, aspect kept), with a strip at the top that
shows the frame, the time, the clip and the prompt in force; it flashes where a
clip starts and is underlined where a prompt keyframe takes over. `frames_dir`
also keeps the bare warped frames under Deforum's names, to set beside Deforum's
own warp. numpy, PIL and ffmpeg only: no torch.
"""
from __future__ import annotations

import os
import secrets
import subprocess
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from . import fetch, outputs
from .frames import fit_image

if TYPE_CHECKING:  # pragma: no cover
    from ..core.plan import ClipPlan
    from ..core.settings import DeforumSettings

DEFAULT_MAX_SIDE = 384  # the long side: 3D bicubic warps of 384 px take about 0.04 s a frame on one core
PREVIEW_TIMESTRING = "00000000000000"  # the plain frames' names: {timestring}_{index:09}.png
FLASH_FRAMES = 3  # frames the strip stays lit after a clip starts
_BACKGROUND = (18, 20, 28)
_CENTRE_DOT = (255, 255, 255)  # nothing else on the card is this white: tests find the centre by it


class PreviewError(ValueError):
    """A preview that cannot be made, named for the user."""


@dataclass(frozen=True)
class FrameMark:
    """What the strip of one frame says."""

    frame: int
    clip: int  # plan clip index
    clip_start: bool  # the first frame of a clip (frame 0 included)
    since_clip: int  # frames since the clip started
    prompt_key: str
    prompt: str
    prompt_start: bool = False  # a prompt keyframe takes over here (inside a clip when prompts were merged)


@dataclass(frozen=True)
class PreviewResult:
    video: Path
    frames: int
    fps: float
    width: int
    height: int
    source: str  # "image", "init_image" or "test card"
    frames_dir: Path | None = None


# ---------------------------------------------------------------------------
# Size, source picture, test card


def preview_size(width: int, height: int, max_side: int = DEFAULT_MAX_SIDE) -> tuple[int, int]:
    """width x height scaled down (never up) so the long side is at most max_side; even sides for yuv420p."""
    if max_side < 16:
        raise PreviewError(f"--max-side must be at least 16, got {max_side}")
    scale = min(1.0, max_side / max(width, height))
    even = lambda v: max(2, int(round(v * scale / 2)) * 2)  # noqa: E731
    return even(width), even(height)


def make_test_card(width: int, height: int) -> np.ndarray:
    """Coloured dots on a grid of thin lines over a dark background, a centre cross and a white centre dot."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(img)
    step = max(8, min(width, height) // 8)
    cx, cy = width // 2, height // 2
    xs = range(cx % step, width, step)
    ys = range(cy % step, height, step)
    for x in xs:
        draw.line([(x, 0), (x, height)], fill=(55, 60, 75))
    for y in ys:
        draw.line([(0, y), (width, y)], fill=(55, 60, 75))
    r = max(2, step // 6)
    for y in ys:
        for x in xs:
            hue = int(255 * (x / max(1, width) + y / max(1, height)) / 2)
            colour = _hue(hue)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    arm = max(6, min(width, height) // 4)
    draw.line([(cx - arm, cy), (cx + arm, cy)], fill=(240, 200, 40), width=max(1, r // 2))
    draw.line([(cx, cy - arm), (cx, cy + arm)], fill=(240, 200, 40), width=max(1, r // 2))
    big = r + max(1, r // 2)
    draw.ellipse([cx - big, cy - big, cx + big, cy + big], fill=_CENTRE_DOT)
    return np.asarray(img)


def _hue(h: int) -> tuple[int, int, int]:
    import colorsys

    red, green, blue = colorsys.hsv_to_rgb((h % 256) / 256, 0.75, 0.95)
    return int(red * 230), int(green * 230), int(blue * 230)  # never the centre dot's white


def centre_dot(image: np.ndarray) -> tuple[float, float] | None:
    """(x, y) of the test card's white centre dot in a frame, or None when it is gone."""
    mask = (image >= 235).all(axis=-1)
    if not mask.any():
        return None
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())


def source_image(settings: "DeforumSettings", image: str | None, width: int, height: int) -> tuple[np.ndarray, str]:
    """The picture to fly: `image`, else the settings' init_image when use_init, else the test card."""
    chosen, source = image, "image"
    if not chosen and settings.use_init and settings.init_image and str(settings.init_image).strip().lower() != "none":
        chosen, source = str(settings.init_image), "init_image"
    if not chosen:
        return make_test_card(width, height), "test card"
    return fit_image(_read_image(chosen, source), width, height), source


def _read_image(where: str, field: str) -> np.ndarray:
    import io

    from PIL import Image

    try:
        if fetch.is_url(where):
            pil = Image.open(io.BytesIO(fetch.fetch(where.strip(), fetch.IMAGE).data))
        else:
            pil = Image.open(Path(where).expanduser())
        return np.asarray(pil.convert("RGB"))
    except Exception as exc:  # any unreadable picture is the user's to fix
        raise PreviewError(f"{field} {where!r} cannot be read: {exc}") from None


# ---------------------------------------------------------------------------
# The warp and the strip


def plain_frames(settings: "DeforumSettings", image: np.ndarray) -> Iterator[np.ndarray]:
    """Exactly max_frames frames: frame 0 is `image`, each next one the previous warped by that frame's camera
    move (Deforum's cumulative warp, core.warp.fly)."""
    from ..core.warp import fly, scaled_path

    total = settings.max_frames
    yield image
    shown = 1
    path = scaled_path(settings, image.shape[1], image.shape[0])
    for index, warped, _revealed in fly(image, 0, total - 1, path) if total > 1 else ():
        if index < shown:  # frame 0 (the image itself) when fly yields it
            continue
        if index >= total:
            break
        yield np.ascontiguousarray(warped, dtype=np.uint8)
        shown += 1
    if shown != total:
        raise PreviewError(f"the camera path gave {shown} of {total} frames")


def frame_marks(settings: "DeforumSettings", plan: "ClipPlan") -> list[FrameMark]:
    """For every output frame: its clip, whether a clip starts there, and the prompt keyframe in force."""
    from ..core.prompts import active_keyframe, prompt_keyframes, split_negative

    keyframes = prompt_keyframes(settings)
    starts = sorted((c.output_start, c.index) for c in plan.clips)
    marks, k = [], 0
    for frame in range(settings.max_frames):
        while k + 1 < len(starts) and starts[k + 1][0] <= frame:
            k += 1
        start, clip = starts[k] if starts else (0, 0)
        kf = active_keyframe(keyframes, frame) if keyframes else None
        text = " ".join(split_negative(kf.text).positive.split()) if kf else ""
        changed = bool(marks) and kf is not None and marks[-1].prompt_key != kf.key
        marks.append(FrameMark(frame, clip, frame == start, frame - start, kf.key if kf else "", text, changed))
    return marks


def strip_height(width: int, height: int) -> int:
    """Rows the burn-in covers at the top of a frame: two lines of text and the marker line."""
    return min(height, 2 * _font_size(width, height) + 9)


def _font_size(width: int, height: int) -> int:
    return max(8, min(18, min(width, height * 2) // 34))


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font
    except TypeError:  # pragma: no cover - older Pillow: the fixed bitmap font
        return ImageFont.load_default()


def burn_in(image: np.ndarray, mark: FrameMark, fps: float, total: int, clips: int) -> np.ndarray:
    """The frame with the strip drawn over its top rows (strip_height); the rows below are untouched."""
    from PIL import Image, ImageDraw

    h, w = image.shape[:2]
    rows = strip_height(w, h)
    size = _font_size(w, h)
    out = image.copy()
    flash = mark.since_clip < FLASH_FRAMES and (mark.frame > 0 or clips > 1)
    tint = np.array((200, 150, 20) if flash else (0, 0, 0), dtype=np.float32)
    top = out[:rows].astype(np.float32)
    out[:rows] = (top * 0.35 + tint * 0.65).round().astype(np.uint8)
    strip = Image.fromarray(out[:rows])
    draw = ImageDraw.Draw(strip)
    font = _font(size)
    line1 = f"{mark.frame}/{total - 1}  {mark.frame / fps:6.2f}s  clip {mark.clip} ({clips} clips)"
    if mark.clip_start and mark.frame > 0:
        line1 += "  << new clip"
    if mark.prompt_start:
        line1 += f"  << prompt {mark.prompt_key}"
    line2 = f"[{mark.prompt_key}] {mark.prompt}"
    draw.text((3, 1), _fit(draw, line1, font, w - 6), fill=(255, 255, 255) if not flash else (0, 0, 0), font=font)
    draw.text((3, 2 + size), _fit(draw, line2, font, w - 6), fill=(210, 215, 225) if not flash else (20, 20, 20),
              font=font)
    if mark.clip_start or mark.prompt_start:  # red: a clip starts; cyan: only the prompt changes
        draw.rectangle([0, rows - 3, w, rows - 1], fill=(255, 70, 40) if mark.clip_start else (40, 220, 255))
    out[:rows] = np.asarray(strip)
    return out


def _fit(draw, text: str, font, room: int) -> str:
    """`text` cut at a word (with an ellipsis) to fit `room` pixels."""
    if draw.textlength(text, font=font) <= room:
        return text
    words = text.split(" ")
    while len(words) > 1 and draw.textlength(" ".join(words) + "…", font=font) > room:
        words.pop()
    return " ".join(words) + "…"


# ---------------------------------------------------------------------------
# Files


def default_out(settings_path: str | Path, cwd: str | Path | None = None) -> Path:
    return Path(cwd or os.getcwd()) / "outputs" / "preview" / f"{Path(settings_path).stem}_camera.mp4"


def check_out(path: str | Path) -> Path:
    """An .mp4 path that is not an existing file of another kind (or a folder)."""
    path = Path(path).expanduser()
    if path.suffix.lower() != ".mp4":
        raise PreviewError(f"the preview is an .mp4; {str(path)!r} would be another kind of file")
    if path.is_dir():
        raise PreviewError(f"{str(path)!r} is a folder")
    if path.exists():
        with open(path, "rb") as f:
            head = f.read(12)
        if head[4:8] != b"ftyp":
            raise PreviewError(f"{str(path)!r} exists and is not an mp4 video; not overwriting it")
    return path


def _fps_arg(fps: float) -> str:
    frac = Fraction(fps).limit_denominator(1001)
    return f"{frac.numerator}/{frac.denominator}"


def write_mp4(frames: Iterator[np.ndarray], path: Path, width: int, height: int, fps: float, count: int) -> Path:
    """Raw RGB frames piped into ffmpeg: H.264, yuv420p, exactly `count` frames at `fps`; renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.stem}.{secrets.token_hex(4)}.tmp.mp4"
    rate = _fps_arg(fps)
    cmd = [outputs.ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{width}x{height}", "-framerate", rate, "-i", "-", "-frames:v", str(count),
           "-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "veryfast", "-crf", "17", "-r", rate,
           "-movflags", "+faststart", str(tmp)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    written = 0
    try:
        for frame in frames:
            proc.stdin.write(np.ascontiguousarray(frame, dtype=np.uint8).tobytes())
            written += 1
        proc.stdin.close()
        error = proc.stderr.read().decode("utf-8", "replace")
        if proc.wait() != 0 or written != count:
            raise PreviewError(f"ffmpeg could not encode {path.name}: "
                               f"{error.strip().splitlines()[-1] if error.strip() else f'{written}/{count} frames'}")
        os.replace(tmp, path)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        tmp.unlink(missing_ok=True)
        raise
    finally:
        proc.stderr.close()
    return path


# ---------------------------------------------------------------------------
# The whole preview


def render_preview(settings: "DeforumSettings", plan: "ClipPlan", out: str | Path, *, image: str | None = None,
                   max_side: int = DEFAULT_MAX_SIDE, frames_dir: str | Path | None = None) -> PreviewResult:
    """Fly the picture along the whole camera path into `out` (an mp4 with the strip); plain PNGs into frames_dir."""
    out = check_out(out)
    width, height = preview_size(settings.W, settings.H, max_side)
    picture, source = source_image(settings, image, width, height)
    marks = frame_marks(settings, plan)
    total, clips = settings.max_frames, len(plan.clips)
    folder = Path(frames_dir).expanduser() if frames_dir else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)

    def shown() -> Iterator[np.ndarray]:
        for mark, frame in zip(marks, plain_frames(settings, picture)):
            if folder is not None:
                outputs.write_png(folder / outputs.frame_name(PREVIEW_TIMESTRING, mark.frame), frame, compress_level=1)
            yield burn_in(frame, mark, settings.fps, total, clips)

    write_mp4(shown(), out, width, height, settings.fps, total)
    return PreviewResult(out, total, settings.fps, width, height, source, folder)


TAB_PREFIX = "deforum-wan-camera-"
TAB_KEEP_SECONDS = 3600  # the tab's older previews (the browser has long loaded them) are removed


def tab_preview(settings: "DeforumSettings", plan: "ClipPlan", max_side: int = DEFAULT_MAX_SIDE) -> str:
    """The tab's preview: a new mp4 in a temporary folder of its own; its path. Previews older than an hour go."""
    import shutil
    import time

    for old in Path(tempfile.gettempdir()).glob(f"{TAB_PREFIX}*"):
        try:
            if old.is_dir() and not old.is_symlink() and time.time() - old.stat().st_mtime > TAB_KEEP_SECONDS:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            continue
    folder = Path(tempfile.mkdtemp(prefix=TAB_PREFIX))
    return str(render_preview(settings, plan, folder / "camera.mp4", max_side=max_side).video)
