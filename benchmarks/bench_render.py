"""Render overhead with tiny models: wall time against time inside diffusers calls.

    python benchmarks/bench_render.py [--repeats 3] [--size 128] [--steps 4] [--model vace]

Each repeat renders ../shared/deforum-settings/a1111-deforum-default.txt (120 frames
at 15 fps) in a fresh process, so peak RSS is per job. It prints, side by side:
wall time of render() (model load, every clip, frame writing, mp4) against the sum
of time inside pipeline calls, the overhead ratio, model loads per job,
generated/output frames and peak RSS, then the medians.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = REPO.parent / "shared" / "deforum-settings" / "a1111-deforum-default.txt"


def one(args: argparse.Namespace) -> None:
    from deforum_wan.core.plan import PlanOptions
    from deforum_wan.renderer.render import RenderJob, render
    from deforum_wan.core.settings import load_settings

    job = RenderJob(settings=load_settings(args.settings), model=args.model_dir, outdir=args.outdir,
                    options=PlanOptions(steps=args.steps, width=args.size, height=args.size, seed=1))
    result = render(job)
    m = result.plan.metrics
    print(json.dumps({
        "wall": result.wall_seconds, "pipeline": result.pipeline_seconds, "loads": result.model_loads,
        "load": result.load_seconds, "encode": result.encode_seconds,
        "generated": m.generated_frames, "output": m.output_frames, "clips": m.clip_count,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "frames_on_disk": result.frames_on_disk,
    }))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--model", default="vace", help="tiny model kind")
    parser.add_argument("--settings", default=str(SETTINGS))
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--outdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args)
        return

    from deforum_wan.renderer.tiny import make_tiny_models

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_tiny_models(Path(tmp) / "models", [args.model])[args.model]
        rows = []
        for i in range(args.repeats):
            cmd = [sys.executable, __file__, "--one", "--model-dir", str(model_dir), "--outdir", str(Path(tmp) / f"out{i}"),
                   "--size", str(args.size), "--steps", str(args.steps), "--settings", args.settings]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if out.returncode != 0:
                sys.exit(out.stderr[-3000:])
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"tiny {args.model}, {args.size}x{args.size}, {args.steps} steps, {Path(args.settings).name}")
    # Loop overhead: what the render loop adds around the pipeline calls (plan, colour
    # matching, resampling, handing frames to the writer), without the one-off model
    # load and the mp4 encode, which are reported on their own.
    for r in rows:
        r["loop"] = (r["wall"] - r["load"] - r["encode"]) / r["pipeline"] - 1
        r["total"] = r["wall"] / r["pipeline"] - 1
    print(f"{'run':>4} {'wall s':>7} {'pipeline s':>10} {'load s':>7} {'mp4 s':>6} {'loop ovh':>9} {'total ovh':>10} "
          f"{'loads':>6} {'gen/out':>8} {'peak RSS MiB':>13}")
    med = lambda key: statistics.median(r[key] for r in rows)  # noqa: E731
    for label, r in [*((str(i), r) for i, r in enumerate(rows)), ("med", {k: med(k) for k in rows[0]})]:
        print(f"{label:>4} {r['wall']:>7.2f} {r['pipeline']:>10.2f} {r['load']:>7.2f} {r['encode']:>6.2f} {r['loop']:>8.1%} "
              f"{r['total']:>9.1%} {r['loads']:>6.0f} {r['generated'] / r['output']:>8.3f} {r['peak_rss_mib']:>13.0f}")
    print(f"frames on disk per job: {rows[0]['frames_on_disk']} of {rows[0]['output']}, clips {rows[0]['clips']}")


if __name__ == "__main__":
    main()
