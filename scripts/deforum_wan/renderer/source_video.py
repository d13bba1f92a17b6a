"""The source and mask videos of Video Input mode: checked before any model loads, read clip by clip.

`open_source` reads `video_init_path` (and `video_mask_path` with `use_mask_video`) from a local
file or an http(s) URL (fetched through renderer/fetch.py, kind VIDEO), and checks what Deforum
would only find out mid-render: the file is a video ffmpeg can read, not too large, keeps at
least one frame after extraction, and a mask video has the source's size and enough frames.
Every problem is an InputError naming its key. ffmpeg (imageio-ffmpeg) only ever opens a local
file whose first bytes are a video container, with `-protocol_whitelist file`, so a playlist or
a reference inside a file cannot make it open anything else.

Each clip then gets its span of the source (core/video_input.py says which frames), fitted to the
plan's size as the init image is (frames.fit_image), as VACE guide frames after the frames it
continues from, with the mask video's frames as VACE masks (white: regenerate) and the strength
schedule as conditioning scale. One ffmpeg process reads forward through the file; a clip that
needs earlier frames (a resumed render, the next clip's overlap) is served from the last clip's
frames or restarts the reader.
"""
from __future__ import annotations

import math
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from . import fetch
from .errors import InputError
from .frames import fit_image
from .outputs import ffmpeg_exe
from ..core.settings import DeforumSettings
from ..core.timeline import PlanError
from ..core.video_input import VIDEO_INPUT, VideoSource, clip_source_frames, extraction, uses_mask, with_source

MAX_SIDE = 8192  # a side of the source video, as for images (fetch.MAX_IMAGE_SIDE)
MAX_PIXELS = 8192 * 4320  # 8K: larger frames cost seconds each to decode and are scaled down to Wan's size anyway
MAX_SOURCE_FRAMES = 200_000  # frames in the source file (about 2 hours at 25 fps); all are decoded once to count
_SAFE_INPUT = ["-protocol_whitelist", "file"]
_PASSTHROUGH = ["-fps_mode", "passthrough"]  # every decoded frame once: no duplicates or drops for the output rate
COUNT_TIMEOUT = 600  # seconds to count a source's frames


class VideoInputError(InputError):
    """A source or mask video that cannot be used; `key` is the settings key to change."""

    def __init__(self, key: str, problem: str):
        self.key = key
        super().__init__(f"{key}: {problem}")


def _probe(path: Path, key: str) -> tuple[int, float, int, int, bool]:
    """(frames, fps, width, height, has audio) of a local video file, or a VideoInputError naming `key`."""
    import imageio_ffmpeg

    if not path.is_file():
        raise VideoInputError(key, f"{str(path)!r} is not a file")
    try:
        with open(path, "rb") as f:
            fetch.check_video(f.read(512))
    except fetch.FetchError as exc:
        raise VideoInputError(key, f"{str(path)!r} is {exc}") from None
    except OSError as exc:
        raise VideoInputError(key, f"{str(path)!r} cannot be read: {exc}") from None
    reader = imageio_ffmpeg.read_frames(str(path), input_params=_SAFE_INPUT)
    try:
        meta = next(reader)
    except (OSError, RuntimeError, StopIteration) as exc:
        raise VideoInputError(key, f"ffmpeg cannot read {str(path)!r} as a video: {_last_line(str(exc))}") from None
    finally:
        reader.close()
    width, height = (int(v) for v in meta.get("size") or (0, 0))
    fps, duration = float(meta.get("fps") or 0), float(meta.get("duration") or 0)
    if width <= 0 or height <= 0 or not math.isfinite(fps) or fps <= 0:
        raise VideoInputError(key, f"{str(path)!r} has no video stream ffmpeg can size and time")
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise VideoInputError(key, f"{str(path)!r} is {width}x{height}; at most {MAX_SIDE} a side and 8K "
                                   f"({MAX_PIXELS} pixels)")
    if duration * fps > MAX_SOURCE_FRAMES:
        raise VideoInputError(key, f"{str(path)!r} has about {round(duration * fps)} frames; at most "
                                   f"{MAX_SOURCE_FRAMES} (cut the part you need first)")
    return _count(path, key), fps, width, height, bool(meta.get("audio_codec"))


def _count(path: Path, key: str) -> int:
    """Frames ffmpeg decodes from the first video stream, as the reader will yield them."""
    cmd = [ffmpeg_exe(), "-hide_banner", *_SAFE_INPUT, "-i", str(path), "-map", "0:v:0", *_PASSTHROUGH, "-f", "null",
           "-"]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=COUNT_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise VideoInputError(key, f"counting the frames of {str(path)!r} took over {COUNT_TIMEOUT} s") from None
    frames = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.startswith("frame=")]
    if result.returncode != 0 or not frames:
        raise VideoInputError(key, f"ffmpeg cannot decode {str(path)!r}: {_last_line(result.stderr)}")
    count = int(frames[-1].split("=", 1)[1].split()[0])
    if count == 0:
        raise VideoInputError(key, f"{str(path)!r} has no video frames")
    return count


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no error output"


class _Reader:
    """Frames of one video by frame number, read forward by one ffmpeg process and fitted by `fit`."""

    def __init__(self, path: Path, size: tuple[int, int], fit: Callable[[np.ndarray], np.ndarray]):
        self.path, self.size, self.fit = path, size, fit
        self._frames: Iterator[Any] | None = None
        self._next = 0
        self._last: dict[int, np.ndarray] = {}  # the previous read, for a next clip that starts inside it

    def read(self, numbers: list[int]) -> list[np.ndarray]:
        found = {n: self._last[n] for n in numbers if n in self._last}
        missing = sorted(set(numbers) - set(found))
        if missing and (self._frames is None or missing[0] < self._next):
            self._restart()
        width, height = self.size
        for wanted in missing:
            while self._next <= wanted:
                try:
                    raw = next(self._frames)  # type: ignore[arg-type]
                except StopIteration:
                    raise InputError(f"{self.path} ended at frame {self._next}, before frame {wanted}") from None
                if self._next == wanted:
                    found[wanted] = self.fit(np.frombuffer(raw, np.uint8).reshape(height, width, 3))
                self._next += 1
        self._last = found
        return [found[n] for n in numbers]

    def _restart(self) -> None:
        import imageio_ffmpeg

        self.close()
        self._frames = imageio_ffmpeg.read_frames(str(self.path), input_params=_SAFE_INPUT,
                                                  output_params=_PASSTHROUGH)
        next(self._frames)  # the metadata
        self._next = 0

    def close(self) -> None:
        if self._frames is not None:
            self._frames.close()  # type: ignore[attr-defined]
            self._frames = None


class SourceVideo:
    """The probed source (and mask) video of one Video Input render; `close` ends its readers and downloads."""

    def __init__(self, settings: DeforumSettings, policy: fetch.FetchPolicy | None = None):
        self._temp: list[Path] = []
        self._readers: dict[tuple[str, int, int], _Reader] = {}
        try:
            ex = extraction(settings)
        except PlanError as exc:
            raise VideoInputError(*str(exc).split(": ", 1)) from None
        try:
            self.path = self._local(settings.raw.get("video_init_path"), "video_init_path", policy)
            frames, fps, width, height, audio = _probe(self.path, "video_init_path")
            kept = len(ex.kept(frames))
            if kept == 0:
                key = "extract_from_frame" if ex.start >= frames else "extract_to_frame"
                raise VideoInputError(key, f"no frames of {str(self.path)!r} ({frames} frames) are kept "
                                           f"{ex.describe()}")
            self.mask_path: Path | None = None
            mask_kept = 0
            if uses_mask(settings):
                self.mask_path = self._local(settings.raw.get("video_mask_path"), "video_mask_path", policy)
                mask_frames, _fps, mask_w, mask_h, _audio = _probe(self.mask_path, "video_mask_path")
                if (mask_w, mask_h) != (width, height):
                    raise VideoInputError("video_mask_path", f"the mask video is {mask_w}x{mask_h}, the source video "
                                                             f"{width}x{height}; they must be the same size")
                mask_kept = len(ex.kept(mask_frames))
                if mask_kept < kept:
                    raise VideoInputError("video_mask_path", f"the mask video keeps {mask_kept} frames {ex.describe()}, "
                                                             f"the source video {kept}; it must cover every one")
            self.source = VideoSource(str(settings.raw.get("video_init_path")), frames, fps, width, height, audio, ex,
                                      str(settings.raw.get("video_mask_path")) if self.mask_path else None, mask_kept)
            try:
                with_source(settings, self.source)  # frame count and frame rate within the limits
            except PlanError as exc:
                raise VideoInputError(*str(exc).split(": ", 1)) from None
        except BaseException:
            self.close()
            raise

    def _local(self, value: Any, key: str, policy: fetch.FetchPolicy | None) -> Path:
        """A local path, or a URL fetched (renderer/fetch.py, kind VIDEO) to a temporary file."""
        text = str(value or "").strip()
        if not text or text.lower() == "none":
            raise VideoInputError(key, "no video is given; set a file path or an http(s) URL")
        if fetch.is_url(text):
            try:
                fetched = fetch.fetch(text, fetch.VIDEO, policy)
            except fetch.FetchError as exc:
                raise VideoInputError(key, f"cannot use {text[:120]}: {exc}") from None
            with tempfile.NamedTemporaryFile(prefix="deforum-wan-video-", suffix=fetched.suffix, delete=False) as f:
                f.write(fetched.data)
            self._temp.append(Path(f.name))
            return Path(f.name)
        if "://" in text:
            raise VideoInputError(key, f"{text[:120]!r}: only http(s) URLs and local files can be read")
        return Path(text).expanduser()

    def frames(self, numbers: list[int], width: int, height: int) -> list[np.ndarray]:
        """Source frames by number, fitted to width x height."""
        return self._reader(self.path, width, height, lambda f: fit_image(f, width, height)).read(numbers)

    def masks(self, numbers: list[int], width: int, height: int) -> list[np.ndarray] | None:
        """Mask frames by number as [H, W] uint8 (255: regenerate), or None without a mask video."""
        if self.mask_path is None:
            return None

        def grey(frame: np.ndarray) -> np.ndarray:
            return fit_image(frame, width, height).mean(axis=-1).round().astype(np.uint8)

        return self._reader(self.mask_path, width, height, grey).read(numbers)

    def _reader(self, path: Path, width: int, height: int, fit: Callable[[np.ndarray], np.ndarray]) -> _Reader:
        key = (str(path), width, height)
        if key not in self._readers:
            size = (self.source.width, self.source.height)
            self._readers[key] = _Reader(path, size, fit)
        return self._readers[key]

    def request(self, plan: Any, clip: Any, tail: np.ndarray | None, request: Any) -> Any:
        """The clip's ClipRequest as VACE video-to-video: known frames, then its source frames and masks."""
        numbers = clip_source_frames(clip, self.source)
        known = list(tail[-clip.overlap:]) if clip.overlap and tail is not None else []
        return replace(request, known_frames=known, guide_frames=self.frames(numbers, plan.width, plan.height),
                       guide_masks=self.masks(numbers, plan.width, plan.height),
                       conditioning_scale=clip.guide_scale)

    def soundtrack(self, settings: DeforumSettings) -> str | None:
        """The local source file when the sound comes from it (add_soundtrack Init Video), else soundtrack_path."""
        from .outputs import soundtrack_of

        return str(self.path) if settings.add_soundtrack == "Init Video" else soundtrack_of(settings)

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()
        for path in self._temp:
            path.unlink(missing_ok=True)
        self._temp.clear()


def open_source(settings: DeforumSettings, policy: fetch.FetchPolicy | None = None) -> SourceVideo | None:
    """The Video Input source of `settings`, probed and checked; None in the other animation modes."""
    if settings.animation_mode != VIDEO_INPUT:
        return None
    return SourceVideo(settings, policy)


def probe_source(settings: DeforumSettings, policy: fetch.FetchPolicy | None = None) -> VideoSource | None:
    """What the plan needs of the source (read, checked, then closed); None outside Video Input mode."""
    source = open_source(settings, policy)
    if source is None:
        return None
    source.close()
    return source.source
