"""Deforum's output conventions: folders, file names, atomic writes, the mp4.

Deforum users find their results in `<outdir>/<batch_name>/` as
`{timestring}_{index:09}.png`, `{timestring}_settings.txt` and `{timestring}.mp4`,
and resume a render by its timestring. We write the same names so Deforum's own
tools (resume, video upscaling, frame interpolation) work on our output.

Every file is written to a temporary name and renamed, so a render killed at any
moment leaves only whole frames behind, and resume can trust what it finds. Files
get the permissions any other program's files get under the user's umask (0644
usually), as Deforum's own do.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import fetch

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from ..core.settings import DeforumSettings

TIMESTRING_FORMAT = "%Y%m%d%H%M%S"
_TIMESTRING = re.compile(r"^\d{14}$")
# Deforum's own substitution (general_utils.substitute_placeholders) replaces these.
_UNSAFE = re.compile(r'[<>:"/\\|?*\s,]')
_PLACEHOLDER = re.compile(r"{(\w+)}")


class OutputError(ValueError):
    """An output path or file problem, named for the user."""


def new_timestring(now: float | None = None) -> str:
    return time.strftime(TIMESTRING_FORMAT, time.localtime(now))


def check_timestring(timestring: str) -> str:
    if not isinstance(timestring, str) or not _TIMESTRING.match(timestring):
        raise OutputError(f"timestring must be 14 digits (YYYYmmddHHMMSS), got {timestring!r}")
    return timestring


def batch_folder_name(batch_name: str, timestring: str, values: dict[str, Any] | None = None) -> str:
    """`batch_name` with `{timestring}` (and other `{key}`s) substituted, made safe as one folder name.

    Separators, `..` and drive letters are neutralised, so a batch name can never
    point outside the output folder.
    """
    values = {"timestring": timestring, **{k.lower(): v for k, v in (values or {}).items()}}

    def sub(match: re.Match[str]) -> str:
        key = match.group(1).lower()
        return str(values[key]) if key in values else match.group(0)

    name = _PLACEHOLDER.sub(sub, batch_name or "")
    name = _UNSAFE.sub("_", name)
    name = "".join(ch if ch.isprintable() else "_" for ch in name)
    name = name.replace("..", "_").strip(". ")
    if not name:
        name = f"Deforum_{timestring}"
    return name[:200]


def batch_dir(outdir: str | Path, settings: "DeforumSettings", timestring: str) -> Path:
    """The batch folder for `settings` inside `outdir`; guaranteed to stay inside it."""
    root = Path(outdir).expanduser().resolve()
    values = {"seed": settings.seed, "w": settings.W, "h": settings.H}
    folder = (root / batch_folder_name(settings.batch_name, timestring, values)).resolve()
    if folder.parent != root:
        raise OutputError(f"batch_name {settings.batch_name!r} would leave the output folder {root}")
    return folder


def frame_name(timestring: str, index: int) -> str:
    return f"{timestring}_{index:09}.png"


def settings_file(folder: Path, timestring: str) -> Path:
    return folder / f"{timestring}_settings.txt"


def plan_file(folder: Path, timestring: str) -> Path:
    return folder / f"{timestring}_wan_plan.json"


def video_file(folder: Path, timestring: str) -> Path:
    return folder / f"{timestring}.mp4"


def existing_frames(folder: str | Path, timestring: str) -> list[int]:
    """Indices of the frames of `timestring` already on disk, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = re.compile(rf"^{re.escape(timestring)}_(\d{{9}})\.png$")
    found = []
    for entry in os.scandir(folder):
        m = pattern.match(entry.name)
        if m and entry.is_file() and entry.stat().st_size > 0:
            found.append(int(m.group(1)))
    return sorted(found)


def contiguous_frames(folder: str | Path, timestring: str) -> int:
    """How many frames from index 0 on are on disk without a gap: where a resume starts."""
    count = 0
    for index in existing_frames(folder, timestring):
        if index != count:
            break
        count += 1
    return count


def find_timestrings(folder: str | Path) -> list[str]:
    """Timestrings that have frames in `folder`, newest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stamps = {m.group(1) for e in os.scandir(folder) if (m := re.match(r"^(\d{14})_\d{9}\.png$", e.name))}
    return sorted(stamps, reverse=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder and a rename.

    The temporary file is created with mode 0666 and the kernel applies the umask,
    as it does for Deforum's files (mkstemp would make every file 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _attempt in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - 100 random names taken
        raise OutputError(f"cannot create a temporary file in {path.parent}")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_png(path: Path, image: "np.ndarray", compress_level: int = 4) -> Path:
    """Save an HxWx3 uint8 image as PNG, atomically."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=compress_level)
    return atomic_write_bytes(path, buf.getvalue())


def write_frame(folder: Path, timestring: str, index: int, image: "np.ndarray") -> Path:
    """One output frame under Deforum's name."""
    return write_png(folder / frame_name(timestring, index), image)


def save_settings(settings: "DeforumSettings", folder: Path, timestring: str) -> Path:
    """`{timestring}_settings.txt`, loadable by Deforum itself."""
    return atomic_write_text(settings_file(folder, timestring), settings.to_json())


def save_json(path: Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=4, ensure_ascii=False))


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def stitch_video(
    folder: Path,
    timestring: str,
    fps: float,
    frame_count: int,
    *,
    soundtrack: str | None = None,
    crf: int = 17,
    preset: str = "slow",
) -> tuple[Path, list[str]]:
    """Encode frames 0..frame_count-1 into `{timestring}.mp4` (H.264, yuv420p, exactly `fps`).

    crf and preset are Deforum's ffmpeg_crf and ffmpeg_preset (checked against x264's presets by the plan).

    Returns the path and any warnings (a soundtrack that could not be added is a
    warning, not a lost video).
    """
    warnings: list[str] = []
    have = contiguous_frames(folder, timestring)
    if have < frame_count:
        raise OutputError(f"cannot make the video: only {have} of {frame_count} frames are in {folder}")
    out = video_file(folder, timestring)
    base = [
        ffmpeg_exe(), "-y", "-loglevel", "error", "-protocol_whitelist", "file",
        "-framerate", _fps_arg(fps), "-start_number", "0",
        "-i", str(folder / f"{timestring}_%09d.png"),
    ]
    video_opts = [
        "-frames:v", str(frame_count),
        "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2",
        "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", str(int(crf)), "-preset", _preset(preset),
        "-r", _fps_arg(fps),
    ]
    tmp = folder / f".{timestring}.tmp.mp4"
    audio = _soundtrack_input(soundtrack, warnings)
    if audio:
        # A local file only (see _soundtrack_input); the whitelist keeps ffmpeg from following
        # any URL a file might name inside (playlists, references).
        cmd = (base + ["-protocol_whitelist", "file", "-i", audio] + video_opts
               + ["-map", "0:v:0", "-map", "1:a:0", "-c:a", "aac", "-shortest", str(tmp)])
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode == 0:
            os.replace(tmp, out)
            return out, warnings
        warnings.append(f"soundtrack {soundtrack!r} could not be added: {_last_line(result.stderr)}; video saved without sound")
    result = subprocess.run(base + video_opts + [str(tmp)], capture_output=True, text=True)
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"ffmpeg could not encode {out.name}: {_last_line(result.stderr)}")
    os.replace(tmp, out)
    return out, warnings


def _preset(preset: str) -> str:
    from ..core.choices import X264_PRESETS

    if preset not in X264_PRESETS:
        raise OutputError(f"ffmpeg_preset: expected one of {', '.join(X264_PRESETS)}, got {preset!r}")
    return preset


def probe_video(path: str | Path) -> tuple[int, float]:
    """Frame count and frame rate of a video, read by ffmpeg itself."""
    import imageio_ffmpeg

    frames, _secs = imageio_ffmpeg.count_frames_and_secs(str(path))
    result = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True)
    m = re.search(r"(\d+(?:\.\d+)?) fps", result.stderr)
    fps = float(m.group(1)) if m else float("nan")
    return frames, fps


def _fps_arg(fps: float) -> str:
    from fractions import Fraction

    frac = Fraction(fps).limit_denominator(1001)
    return f"{frac.numerator}/{frac.denominator}"


def _soundtrack_input(soundtrack: str | None, warnings: list[str]) -> str | None:
    """A readable local file, or None with a warning. ffmpeg never gets a URL: the render fetches
    a URL soundtrack itself (deforum_wan.service.fetch) and passes the file it saved."""
    if not soundtrack or soundtrack.strip().lower() in ("", "none"):
        return None
    if re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*://", soundtrack.strip()) or soundtrack.strip().lower().startswith("data:"):
        warnings.append(f"soundtrack_path {soundtrack!r} is a URL; only local files go to ffmpeg; "
                        "video saved without sound")
        return None
    path = Path(soundtrack).expanduser()
    if not (path.is_file() and os.access(path, os.R_OK)):
        warnings.append(f"soundtrack_path {soundtrack!r} is not a readable file; video saved without sound")
        return None
    try:
        with open(path, "rb") as f:
            fetch.check_audio(f.read(16))  # a playlist or other text could make ffmpeg open further files or URLs
    except (OSError, fetch.FetchError) as exc:
        warnings.append(f"soundtrack_path {soundtrack!r}: {exc}; video saved without sound")
        return None
    return str(path)


def _last_line(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no error output"


def remove_stale_temp_files(folder: Path) -> None:
    """Drop temporary files a killed writer left behind; they are never whole frames."""
    if not folder.is_dir():
        return
    for entry in os.scandir(folder):
        if entry.name.startswith(".") and entry.name.endswith((".tmp", ".tmp.mp4")):
            Path(entry.path).unlink(missing_ok=True)


def save_input(data: bytes, suffix: str, folder: str | Path) -> Path:
    """Keep an input (a downloaded or data: URL image or soundtrack) under a name made from its hash:
    the same content is one file, however often it is sent."""
    path = Path(folder) / f"{hashlib.sha256(data).hexdigest()[:24]}{suffix}"
    if not path.is_file():
        atomic_write_bytes(path, data)
    return path


def fetch_to_file(url: str, kind: str, folder: str | Path, policy: fetch.FetchPolicy | None = None) -> Path:
    """`fetch.fetch` the URL and keep it with save_input."""
    fetched = fetch.fetch(url, kind, policy)
    return save_input(fetched.data, fetched.suffix, folder)


# -- what a resumable render keeps beside its frames, and its soundtrack


def tails_dir(folder: Path, timestring: str) -> Path:
    return folder / f"{timestring}_wan_tails"


def _tail_file(folder: Path, timestring: str, clip: int, k: int) -> Path:
    return tails_dir(folder, timestring) / f"clip{clip:05}_{k:03}.png"


def save_tail(folder: Path, timestring: str, clip: int, frames: "np.ndarray") -> None:
    """Keep a clip's last Wan frames: the next clip continues from them, also after a restart."""
    for k, frame in enumerate(frames):
        write_png(_tail_file(folder, timestring, clip, k), frame, compress_level=1)


def load_tail(folder: Path, timestring: str, clip: int, count: int) -> "np.ndarray | None":
    import numpy as np
    from PIL import Image

    paths = [_tail_file(folder, timestring, clip, k) for k in range(count)]
    if not all(p.is_file() for p in paths):
        return None
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


def soundtrack_of(settings: DeforumSettings) -> str | None:
    """Deforum adds `soundtrack_path` when `add_soundtrack` is 'File', and `video_init_path`'s sound when it is
    'Init Video' (video_audio_utilities.py@3224268 get_ffmpeg_paths)."""
    if settings.add_soundtrack == "Init Video":
        return str(settings.raw.get("video_init_path") or "").strip() or None
    return settings.soundtrack_path or None if settings.add_soundtrack == "File" else None


def local_soundtrack(soundtrack: str | None, folder: Path, timestring: str, notes: list[str]) -> str | None:
    """A URL soundtrack fetched to a temporary file beside the frames (ffmpeg only reads local files)."""
    if not soundtrack or not fetch.is_url(soundtrack):
        return soundtrack
    try:
        fetched = fetch.fetch(soundtrack.strip(), fetch.AUDIO)
    except fetch.FetchError as exc:
        notes.append(f"soundtrack_path {soundtrack!r} was not fetched: {exc}; video saved without sound")
        return None
    path = folder / f".{timestring}_soundtrack{fetched.suffix}.tmp"
    atomic_write_bytes(path, fetched.data)
    return str(path)
