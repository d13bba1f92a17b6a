"""Benchmark: vectorised schedule evaluation against Deforum-style per-frame loops.

Evaluates every schedule of a Deforum settings file (keys ending in
``_schedule`` plus the camera keys) at 10,000 frames, both with
``parse_schedule`` (one numexpr call per keyframe) and with the frame-by-frame
reference loop that mirrors Deforum, and prints median frames per second for
both. It first checks that every schedule in every settings file given parses.
Then it times camera schedules full of sum/prod/min/max (vectorised now, frame
by frame before) and the costliest schedule the expression budget accepts.

    python benchmarks/bench_schedules.py [SETTINGS_FILE_OR_DIR ...]
        [--frames 10000] [--repeats 7]

By default it reads ../shared/deforum-settings next to the repository and
times forge-deforum-default.txt.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

try:
    from deforum_wan.core import schedules
    from deforum_wan.core.settings import CAMERA_KEYS as SETTINGS_CAMERA_KEYS
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from deforum_wan.core import schedules
    from deforum_wan.core.settings import CAMERA_KEYS as SETTINGS_CAMERA_KEYS

DEFAULT_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "deforum-settings"
DEFAULT_FILE = "forge-deforum-default.txt"
CAMERA_KEYS = frozenset(SETTINGS_CAMERA_KEYS) - {"fov_schedule"}


def schedule_entries(settings: dict) -> dict[str, str]:
    """The settings entries that are schedule strings."""
    return {
        name: value
        for name, value in settings.items()
        if isinstance(value, str)
        and (name.endswith("_schedule") or name in CAMERA_KEYS or name.startswith("perspective_flip_"))
    }


def check_file(path: Path, frames: int) -> list[str]:
    """Parse every schedule of one file at its own length and at ``frames``;
    return the problems found."""
    settings = json.loads(path.read_text(encoding="utf-8"))
    seed = int(settings.get("seed", -1))
    problems = []
    for max_frames in sorted({1, int(settings.get("max_frames", 120)), frames}):
        for name, value in schedule_entries(settings).items():
            try:
                if name in schedules.STRING_SCHEDULE_KEYS:
                    schedules.parse_string_schedule(value, max_frames, key=name)
                else:
                    schedules.parse_schedule(value, max_frames, seed, key=name)
            except schedules.ScheduleError as error:
                problems.append(f"{path.name} (max_frames={max_frames}): {error}")
    return problems


def time_all(
    parse: Callable[..., object], entries: dict[str, str], frames: int, seed: int
) -> float:
    start = time.perf_counter()
    for name, value in entries.items():
        parse(value, frames, seed, key=name)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="settings files or folders")
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)

    files: list[Path] = []
    for path in args.paths or [DEFAULT_DIR]:
        files.extend(sorted(path.glob("*.txt")) if path.is_dir() else [path])
    if not files:
        print("no settings files found", file=sys.stderr)
        return 2
    timed = next((f for f in files if f.name == DEFAULT_FILE), files[0])

    problems = [problem for path in files for problem in check_file(path, args.frames)]
    for path in files:
        print(f"checked {path.name}: {len(schedule_entries(json.loads(path.read_text())))} schedules")
    for problem in problems:
        print(f"  FAILS {problem}")
    if not problems:
        print("every schedule parses")

    settings = json.loads(timed.read_text(encoding="utf-8"))
    seed = int(settings.get("seed", -1))
    entries = schedule_entries(settings)
    numeric = {k: v for k, v in entries.items() if k not in schedules.STRING_SCHEDULE_KEYS}
    strings = {k: v for k, v in entries.items() if k in schedules.STRING_SCHEDULE_KEYS}
    frames = args.frames

    vectorised, per_frame = [], []
    for _ in range(args.repeats):
        vectorised.append(time_all(schedules.parse_schedule, numeric, frames, seed))
        per_frame.append(time_all(schedules._parse_schedule_per_frame, numeric, frames, seed))
    string_times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for name, value in strings.items():
            schedules.parse_string_schedule(value, frames, key=name)
        string_times.append(time.perf_counter() - start)

    vec, loop = statistics.median(vectorised), statistics.median(per_frame)
    print()
    print(
        f"{timed.name}: {len(numeric)} numeric schedules "
        f"({sum(1 for v in numeric.values() if _has_expression(v))} with expressions), "
        f"{len(strings)} string schedules, {frames} frames, {args.repeats} repeats (medians)"
    )
    print(f"  {'path':<12}{'seconds':>12}{'frames/s':>16}")
    print(f"  {'vectorised':<12}{vec:>12.4f}{frames / vec:>16,.0f}")
    print(f"  {'per-frame':<12}{loop:>12.4f}{frames / loop:>16,.0f}")
    print(f"  ratio (vectorised / per-frame throughput): {loop / vec:,.1f}x")
    for name, value in numeric.items():
        if not _has_expression(value):
            continue
        one = {name: value}
        vec_one = statistics.median(
            time_all(schedules.parse_schedule, one, frames, seed) for _ in range(args.repeats)
        )
        loop_one = statistics.median(
            time_all(schedules._parse_schedule_per_frame, one, frames, seed) for _ in range(args.repeats)
        )
        print(
            f"  {name}: vectorised {frames / vec_one:,.0f} frames/s, "
            f"per-frame {frames / loop_one:,.0f} frames/s, ratio {loop_one / vec_one:,.0f}x"
        )
    strings_median = statistics.median(string_times)
    print(f"  string schedules: {strings_median:.4f} s ({frames / strings_median:,.0f} frames/s)")
    print()
    bench_costly_inputs(frames, args.repeats)
    return 1 if problems else 0


def reduction_request() -> dict[str, str]:
    """Camera schedules full of sum/prod/min/max, like the 4.7 KB request the issue timed at 16.5 s."""
    keys = sorted(CAMERA_KEYS)
    return {
        key: ", ".join(
            f"{k * 900}:({fn}(sin(t/{k + i + 2})*{i + 1}.5 + cos(t/{k + 3})))"
            for k, fn in enumerate(["sum", "prod", "min", "max"] * 3)
        )
        for i, key in enumerate(keys)
    }


def budget_schedule(salt: int) -> str:
    """The costliest schedule accepted: distinct expressions up to the expression budget (`salt` makes
    them new to every cache)."""
    from deforum_wan.core.expressions import EXPRESSION_BUDGET, check_expression

    pieces, nodes = [], 0
    while True:
        value = f"sin(t/{len(pieces) + 2})*{salt}.5 + cos(t/7)*2 - t/100"
        piece = f"{len(pieces)}:({value})"
        cost = check_expression(value, ("t", "max_f", "s"), key="translation_x").nodes
        if nodes + cost > EXPRESSION_BUDGET:
            return ", ".join(pieces)
        pieces.append(piece)
        nodes += cost


def bench_costly_inputs(frames: int, repeats: int) -> None:
    """Reductions (vectorised now, frame by frame before) and the costliest accepted schedule."""
    request = reduction_request()
    size = sum(len(v) for v in request.values())
    vectorised = statistics.median(time_all(schedules.parse_schedule, request, frames, 7) for _ in range(repeats))
    per_frame = statistics.median(
        time_all(schedules._parse_schedule_per_frame, request, frames, 7) for _ in range(max(1, repeats // 3))
    )
    print(f"reductions: {len(request)} schedules, {size / 1000:.1f} KB of text, {frames} frames (medians)")
    print(f"  vectorised {vectorised:.4f} s, frame by frame (the old path) {per_frame:.3f} s, "
          f"ratio {per_frame / vectorised:,.0f}x")
    costs = []
    for salt in range(repeats):
        text = budget_schedule(salt)
        costs.append(time_all(schedules.parse_schedule, {"translation_x": text}, frames, 7))
    print(f"costliest accepted schedule ({len(text)} characters of distinct expressions, cold caches): "
          f"{statistics.median(costs):.3f} s")


def _has_expression(text: str) -> bool:
    return any(c.isalpha() for c in text.translate(str.maketrans("", "", "'\"")))


if __name__ == "__main__":
    sys.exit(main())
