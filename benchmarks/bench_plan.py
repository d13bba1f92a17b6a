"""Benchmark: planning time against timeline length (it must grow linearly).

Plans a two-prompt timeline of N frames at 15 fps for a VACE model (chained
clips) for each N, and prints the median of a few runs, the peak memory of one
run and the growth ratio per 10x more frames (10 means linear, 100 quadratic).
With ``--against REV`` it runs the same measurements on the package as it was
at git revision REV (exported to a temporary folder), side by side.

    python benchmarks/bench_plan.py [--frames 1000 10000 100000] [--repeats 3]
        [--against REV]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import tracemalloc
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(frames: list[int], repeats: int) -> dict[int, tuple[float, float]]:
    """{frames: (median seconds, peak MB)} with whichever deforum_wan is importable."""
    from deforum_wan.core.plan import PlanOptions, plan_clips
    from deforum_wan.core.settings import settings_from_dict
    from deforum_wan.core.specs import MODEL_SPECS

    results = {}
    for n in frames:
        s = settings_from_dict({"prompts": {"0": "a cat", str(n // 2): "a dog"}, "max_frames": n, "fps": 15,
                                "seed": 1, "animation_mode": "3D"})
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            plan_clips(s, MODEL_SPECS["vace"], PlanOptions(seed=1))
            times.append(time.perf_counter() - start)
        tracemalloc.start()
        plan_clips(s, MODEL_SPECS["vace"], PlanOptions(seed=1))
        peak = tracemalloc.get_traced_memory()[1] / 1e6
        tracemalloc.stop()
        results[n] = (statistics.median(times), peak)
    return results


def measure_revision(rev: str, frames: list[int], repeats: int) -> dict[int, tuple[float, float]]:
    """The same measurements in a subprocess importing the package as of `rev`."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "scripts/deforum_wan"],
                             check=True, capture_output=True).stdout
    with tempfile.TemporaryDirectory() as folder:
        tarfile.open(fileobj=BytesIO(archive)).extractall(folder)
        code = (f"import json, sys; sys.path.insert(0, {str(Path(folder) / 'scripts')!r}); "
                f"sys.path.insert(1, {str(Path(__file__).parent)!r}); import bench_plan; "
                f"print(json.dumps(bench_plan.measure({frames!r}, {repeats})))")
        out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return {int(k): tuple(v) for k, v in json.loads(out.splitlines()[-1]).items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--against", metavar="REV", help="also measure the package at this git revision")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "scripts"))

    now = measure(args.frames, args.repeats)
    then = measure_revision(args.against, args.frames, args.repeats) if args.against else None
    print(f"plan_clips, VACE, 15 fps, two prompts; median of {args.repeats} runs, peak memory of one")
    header = f"{'frames':>9} {'seconds':>9} {'x per 10x':>10} {'peak MB':>8}"
    if then:
        header += f" | {args.against[:10]:>10} {'x per 10x':>10} {'peak MB':>8} {'speed-up':>9}"
    print(header)
    previous: dict[str, float] = {}
    for n in args.frames:
        seconds, peak = now[n]
        growth = f"{seconds / previous['now']:.1f}" if "now" in previous else ""
        line = f"{n:>9} {seconds:>9.3f} {growth:>10} {peak:>8.1f}"
        previous["now"] = seconds
        if then:
            old_seconds, old_peak = then[n]
            old_growth = f"{old_seconds / previous['then']:.1f}" if "then" in previous else ""
            line += f" | {old_seconds:>10.3f} {old_growth:>10} {old_peak:>8.1f} {old_seconds / seconds:>8.1f}x"
            previous["then"] = old_seconds
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
