"""Benchmark: motion-compensated in-betweens (ffmpeg minterpolate) against the crossfade they replace.

Resamples one clip of Wan frames onto the output timeline, as the render loop does
for every clip, with `frames.resample` (crossfade) and `interpolate.motion_resample`
(one ffmpeg process per call), taking turns in every repeat so drift on a busy
machine hits both alike. The clip is synthetic but moves like a render: a smooth
texture panning a few pixels per Wan frame with a bright object crossing it.
Prints the median and fastest time per call and per output frame, and the ratio.

    python benchmarks/bench_interpolate.py [--width 832] [--height 480] [--wan-frames 33]
        [--native-fps 16] [--fps 60] [--repeats 3]
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

try:
    from deforum_wan.renderer.frames import resample
    from deforum_wan.renderer.interpolate import motion_resample
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from deforum_wan.renderer.frames import resample
    from deforum_wan.renderer.interpolate import motion_resample


def make_clip(width: int, height: int, count: int, seed: int = 0) -> np.ndarray:
    """`count` frames of a smooth texture panning right and down, with a bright square crossing it."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pan = (5, 2)  # pixels per Wan frame
    big_w, big_h = width + pan[0] * count + 16, height + pan[1] * count + 16
    coarse = rng.integers(0, 256, (big_h // 16 + 1, big_w // 16 + 1, 3), dtype=np.uint8)
    texture = np.asarray(Image.fromarray(coarse).resize((big_w, big_h), Image.BICUBIC))
    side = height // 6
    block = rng.integers(200, 256, (side, side, 3), dtype=np.uint8)
    frames = np.empty((count, height, width, 3), np.uint8)
    for k in range(count):
        frames[k] = texture[pan[1] * k:pan[1] * k + height, pan[0] * k:pan[0] * k + width]
        x = int(width * 0.1 + (width * 0.7) * k / max(count - 1, 1))
        y = height // 3
        frames[k, y:y + side, x:x + side] = block
    return frames


def clip_sources(wan_frames: int, native_fps: int, fps: float) -> list[tuple[int, int, float]]:
    """The clip plan's mapping: output frame i shows Wan position i * native_fps / fps."""
    rate = Fraction(native_fps) / Fraction(fps).limit_denominator(1001)
    sources = []
    for i in range(math.floor((wan_frames - 1) / rate) + 1):
        position = i * rate
        lo = math.floor(position)
        w = round(float(position - lo), 6)
        sources.append((lo, lo + 1 if w else lo, w))
    return sources


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--wan-frames", type=int, default=33)
    parser.add_argument("--native-fps", type=int, default=16)
    parser.add_argument("--fps", type=float, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    frames = make_clip(args.width, args.height, args.wan_frames)
    sources = clip_sources(args.wan_frames, args.native_fps, args.fps)
    between = sum(1 for lo, hi, w in sources if w > 0 and lo != hi)
    methods = {"crossfade": resample, "motion": motion_resample}
    times: dict[str, list[float]] = {name: [] for name in methods}
    motion_resample(frames[:3], [(0, 1, 0.5)])  # warm-up: the binary is in the page cache
    for _ in range(args.repeats):
        for name, fn in methods.items():
            start = time.perf_counter()
            out = fn(frames, sources)
            times[name].append(time.perf_counter() - start)
            assert out.shape == (len(sources),) + frames.shape[1:]

    print(f"{args.wan_frames} Wan frames {args.width}x{args.height} at {args.native_fps} fps -> {args.fps:g} fps: "
          f"{len(sources)} output frames, {between} in-between; median and fastest of {args.repeats} runs")
    print(f"{'method':>10} {'median s':>9} {'fastest s':>10} {'ms/frame':>9} {'ms/in-between':>14}")
    for name in methods:
        median = statistics.median(times[name])
        print(f"{name:>10} {median:>9.3f} {min(times[name]):>10.3f} {1000 * median / len(sources):>9.2f} "
              f"{1000 * median / max(between, 1):>14.2f}")
    ratio = statistics.median(times["motion"]) / statistics.median(times["crossfade"])
    print(f"motion / crossfade: {ratio:.0f}x the time (medians)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
