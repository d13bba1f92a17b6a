"""Motion-compensated in-between frames, from ffmpeg's `minterpolate` filter.

Wan renders at its native rate (16 fps for Wan 2.1) and Deforum asks for its own
(often 60). An output frame that falls between two Wan frames used to be a
crossfade of them, which shows everything that moves twice, half transparent.
`motion_resample` estimates the motion between the two frames instead and moves
the pixels part of the way, so a moving object is drawn once, where it is.

One ffmpeg process (the binary imageio-ffmpeg ships) does a whole clip: raw RGB
frames in on stdin, raw RGB frames out on stdout, no temporary files. Only the
Wan frames some in-between needs are fed, and whole positions never go through
ffmpeg: they are copied bit for bit.

Where each in-between sits is exact by construction, not by hoping ffmpeg rounds
our way. minterpolate emits one frame per tick of its output clock (`fps=1`: one
tick per second) and places it at alpha = (tick - t_lo) / (t_hi - t_lo) between the
input frames around it (floored to 1/1024). So the wanted positions are put on a
grid origin + n * step (exact fractions, every position within 1/128 of a Wan
frame of its grid point; with the 1/1024 floor, within 1/64), and Wan frame k is
fed at time (k - origin) / step, written as an integer pts in a time base chosen
to make it exact: grid point n then lands on tick n. Usually the grid is the
clip's own output rate (16 -> 60 fps: step 4/15), so ffmpeg interpolates no frame
that is not wanted (ticks on whole Wan frames are plain copies); the fallback is
a grid of 1/d of a Wan frame (d <= 64). `showinfo` before and after the filter reports
every pts ffmpeg saw and made: the input pts are checked, and each output frame is
kept or dropped by the tick ffmpeg reports for it, so a missing or misplaced tick
is an error, never a wrong frame.

Two ffmpeg behaviours are handled here: minterpolate only emits frames up to the
second to last input (one copy of the last frame is appended), and it takes
planar YUV only, so frames go through yuv444p (no chroma subsampling: odd sizes
work and colours stay within 2 levels). Frames are edge-padded to whole 8-pixel
blocks, because pixels outside whole blocks get no motion vector and would be
crossfaded. Scene-change detection stays on: on a detected cut minterpolate
copies the nearer frame (vf_minterpolate.c, interpolate()), it never blends.

Failures raise InterpolationError with ffmpeg's last words; nothing falls back to
blending silently. Only the render loop imports this module.
"""
from __future__ import annotations

import collections
import math
import os
import re
import subprocess
import threading
from fractions import Fraction
from typing import Sequence

import numpy as np

# A position may sit this far (in Wan frames) from its grid point; with the 1/1024
# alpha step that keeps every in-between within 1/64 of a Wan frame of where it belongs.
GRID_TOLERANCE = 1 / 128
MAX_GRID_DIVISIONS = 64  # the fallback grid, 1/64 of a Wan frame, always meets GRID_TOLERANCE
BLOCK = 8  # minterpolate's macroblock size, mb_size below
# Bidirectional estimation on 8-pixel blocks drew the test's moving square with the fewest stray
# pixels (bilateral left ghosts; 16-pixel blocks about twice the stray pixels at the same speed);
# a search range of 64 pixels costs no measurable time. aobmc and vsbmc refine bilateral estimation.
FILTER = ("minterpolate=fps=1:mi_mode=mci:mc_mode=aobmc:me_mode=bidir:vsbmc=1:mb_size=8:search_param=64"
          ":scd=fdiff")
SHOWINFO_WAIT = 60.0  # seconds; a frame's showinfo line is written before the frame itself
_SHOWINFO = re.compile(r"\[showinfo@(in|out) @ [^\]]*\]\s*n:\s*(\d+)\s+pts:\s*(-?\d+)")


class InterpolationError(RuntimeError):
    """ffmpeg could not make the in-between frames; the message carries its last stderr lines."""


def ffmpeg_exe() -> str:
    """The ffmpeg binary imageio-ffmpeg provides (or the one IMAGEIO_FFMPEG_EXE names)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg_available() -> bool:
    """Whether an ffmpeg binary is there to run; it is not started, so this is cheap."""
    try:
        exe = ffmpeg_exe()
    except (ImportError, RuntimeError, OSError):
        return False
    return os.path.isfile(exe) and os.access(exe, os.X_OK)


def motion_resample(frames: np.ndarray, sources: Sequence[tuple[int, int, float]]) -> np.ndarray:
    """Output frames from a clip's Wan frames, as `frames.resample` but motion-compensated.

    frames: uint8 (N, H, W, 3). For each (lo, hi, w): frames[lo] itself when w <= 0 or
    lo == hi, else the frame at fraction w of the way from frames[lo] to frames[hi] = lo + 1.
    Returns uint8 (len(sources), H, W, 3).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (N, H, W, 3), got {frames.dtype} {frames.shape}")
    out = np.empty((len(sources),) + frames.shape[1:], np.uint8)
    between: list[tuple[int, float]] = []  # (output index, position in Wan frames)
    for i, (lo, hi, w) in enumerate(sources):
        if not 0 <= lo < len(frames) or not 0 <= hi < len(frames):
            raise ValueError(f"source {i} = {(lo, hi, w)} names a frame outside 0..{len(frames) - 1}")
        if w <= 0 or lo == hi:
            out[i] = frames[lo]
        elif hi != lo + 1 or w >= 1:
            raise ValueError(f"source {i} = {(lo, hi, w)}: an in-between needs hi == lo + 1 and 0 < w < 1")
        else:
            between.append((i, lo + float(w)))
    if not between:
        return out
    first = min(math.floor(p) for _, p in between)
    last = max(math.floor(p) + 1 for _, p in between)
    origin, step = _grid([p for _, p in between], first)
    wanted: dict[int, list[int]] = collections.defaultdict(list)  # tick -> output indices
    for i, p in between:
        tick = round((Fraction(p) - origin) / step)
        spot = origin + tick * step
        if spot.denominator == 1:  # the grid point is a Wan frame itself (w within the tolerance of 0 or 1)
            out[i] = frames[int(spot)]
        else:
            wanted[tick].append(i)
    if wanted:
        _run_ffmpeg(frames[first:last + 1], first, origin, step, wanted, out)
    return out


def _grid(positions: list[float], first: int) -> tuple[Fraction, Fraction]:
    """(origin, step) of the coarsest grid that holds every position within GRID_TOLERANCE.

    Each grid point is a frame ffmpeg computes, so fewer is faster. A clip's positions
    are evenly spaced (i * native_fps / fps), so their spacing is tried first; then
    1/d of a Wan frame, which for d = 64 holds anything. The origin is moved along the
    grid to within one step at or before `first`, the first fed frame, so pts start near 0.
    """
    ps = sorted(set(positions))
    span = ps[-1] - ps[0]
    candidates = []
    gap = min((b - a for a, b in zip(ps, ps[1:])), default=1.0)
    if gap >= 1 / MAX_GRID_DIVISIONS:
        steps = max(1, round(span / gap))
        step = Fraction(span / steps if span else gap).limit_denominator(1000)
        candidates.append((Fraction(ps[0]).limit_denominator(1000), step))
    candidates += [(Fraction(0), Fraction(1, d)) for d in range(1, MAX_GRID_DIVISIONS + 1)]
    for origin, step in sorted(candidates, key=lambda c: span / c[1]):
        origin -= math.ceil((origin - first) / step) * step
        fits = all(abs(float(origin + round((p - origin) / step) * step) - p) <= GRID_TOLERANCE + 1e-9 for p in ps)
        if fits and origin.denominator * step.numerator < 2**31:  # ffmpeg's time base is a ratio of ints
            return origin, step
    raise AssertionError("the 1/64 grid holds every position")  # pragma: no cover


def _pad(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """The frame grown to height x width by repeating its edges (whole blocks get motion vectors)."""
    h, w = frame.shape[:2]
    if (h, w) == (height, width):
        return np.ascontiguousarray(frame)
    return np.pad(frame, ((0, height - h), (0, width - w), (0, 0)), mode="edge")


def _run_ffmpeg(fed: np.ndarray, first: int, origin: Fraction, step: Fraction,
                wanted: dict[int, list[int]], out: np.ndarray) -> None:
    """Feed Wan frames first.. (`fed`) to minterpolate and put the frames at the wanted ticks into `out`."""
    h, w = fed.shape[1:3]
    height, width = max(4 * BLOCK, -(-h // BLOCK) * BLOCK), max(4 * BLOCK, -(-w // BLOCK) * BLOCK)
    # Wan frame k at tick (k - origin) / step = (k * od - on) * sd / (od * sn): integer pts in time base 1/(od * sn).
    base = origin.denominator * step.numerator
    per_frame = origin.denominator * step.denominator
    offset = (first * origin.denominator - origin.numerator) * step.denominator
    graph = (f"settb=1/{base},setpts=N*{per_frame}+{offset},showinfo@in,format=yuv444p,{FILTER},showinfo@out")
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", "-loglevel", "info",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-framerate", "16", "-i", "pipe:0",
           "-vf", graph, "-an", "-sn", "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except (OSError, ValueError) as exc:
        raise InterpolationError(f"cannot start ffmpeg ({cmd[0]}): {exc}") from exc
    log = _Log(proc)
    feed = threading.Thread(target=_feed, args=(proc, fed, height, width), daemon=True)
    feed.start()
    got: set[int] = set()
    try:
        problem = _read_output(proc, log, (height, width), wanted, out, got)
        if problem and proc.poll() is None:
            proc.kill()  # it writes frames nobody can place
        code = proc.wait()
    finally:
        if proc.poll() is None:  # interrupted on the way
            proc.kill()
            proc.wait()
    feed.join()
    log.join()  # stderr is complete: the message below carries ffmpeg's last lines
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        try:
            pipe.close()
        except OSError:  # unwritten input to an ffmpeg that is gone
            pass
    if problem:
        raise InterpolationError(_message(problem, log))
    if code != 0:
        raise InterpolationError(_message(f"ffmpeg exited with code {code}", log))
    missing = sorted(set(wanted) - got)
    if missing:
        raise InterpolationError(_message(f"ffmpeg made no frame at tick(s) {missing[:8]} "
                                          f"({len(missing)} of {len(wanted)} in-betweens)", log))
    expected = [n * per_frame + offset for n in range(len(fed) + 1)]
    if log.input_pts != expected:  # the frames came out, but not from the times we set
        raise InterpolationError(_message(f"ffmpeg saw input pts {log.input_pts[:8]}..., expected "
                                          f"{expected[:8]}...", log))


def _read_output(proc: subprocess.Popen, log: "_Log", size: tuple[int, int], wanted: dict[int, list[int]],
                 out: np.ndarray, got: set[int]) -> str | None:
    """Read every frame ffmpeg writes and keep those at wanted ticks (by the pts it reports); why it stopped short."""
    height, width = size
    h, w = out.shape[1:3]
    buf = bytearray(height * width * 3)
    n = 0
    while True:
        try:
            if not _read_exactly(proc.stdout, buf):
                return None
        except ValueError as exc:
            return str(exc)
        tick = log.output_pts(n)
        if tick is None:
            return f"ffmpeg reported no timestamp for output frame {n}"
        for i in wanted.get(tick, ()):
            out[i] = np.frombuffer(buf, np.uint8).reshape(height, width, 3)[:h, :w]
            got.add(tick)
        n += 1


def _feed(proc: subprocess.Popen, fed: np.ndarray, height: int, width: int) -> None:
    """Write the frames and one more copy of the last (minterpolate stops one input short), then EOF."""
    try:
        for frame in list(fed) + [fed[-1]]:
            proc.stdin.write(_pad(frame, height, width).data)
        proc.stdin.close()
    except (BrokenPipeError, OSError, ValueError):
        pass  # ffmpeg stopped reading; its exit code and stderr tell why


def _read_exactly(stream, buf: bytearray) -> bool:
    """Fill buf from stream: True when full, False at a clean end; ValueError on a partial frame."""
    view, filled = memoryview(buf), 0
    while filled < len(buf):
        count = stream.readinto(view[filled:])
        if not count:
            if filled:
                raise ValueError(f"ffmpeg's output ended inside a frame ({filled} of {len(buf)} bytes)")
            return False
        filled += count
    return True


class _Log:
    """Reads ffmpeg's stderr as it comes: showinfo's pts, and the last other lines for error messages."""

    def __init__(self, proc: subprocess.Popen):
        self.input_pts: list[int] = []
        self.lines: collections.deque[str] = collections.deque(maxlen=12)
        self._output: dict[int, int] = {}
        self._done = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(proc.stderr,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            m = _SHOWINFO.search(line)
            with self._cond:
                if m and m.group(1) == "in":
                    self.input_pts.append(int(m.group(3)))
                elif m:
                    self._output[int(m.group(2))] = int(m.group(3))
                    self._cond.notify_all()
                elif line and not line.startswith("[showinfo@"):
                    self.lines.append(line)
        with self._cond:
            self._done = True
            self._cond.notify_all()

    def output_pts(self, n: int) -> int | None:
        """The pts showinfo reported for output frame n (it logs a frame before ffmpeg writes it)."""
        with self._cond:
            self._cond.wait_for(lambda: n in self._output or self._done, timeout=SHOWINFO_WAIT)
            return self._output.pop(n, None)

    def join(self) -> None:
        self._thread.join()


def _message(what: str, log: _Log) -> str:
    """The error text: what went wrong, then ffmpeg's last lines (showinfo's left out)."""
    tail = "\n".join(log.lines) or "(nothing)"
    return f"motion interpolation failed: {what}. ffmpeg said:\n{tail}"
