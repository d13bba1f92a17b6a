"""Benchmark: one batched generate call for every clip against one call per clip.

Plans a Deforum settings file (default: forge-deforum-default.txt, 18 clips),
loads a Qwen chat model once (default: a tiny random Qwen2 built in a temporary
folder, so nothing is downloaded) and times the enhancer's raw generation two
ways, with no cache: all prompts in one left-padded batch, and one prompt per
call. Prints the median prompts per second of each over several repeats and
their ratio.

    python benchmarks/bench_enhance.py [SETTINGS] [--qwen FOLDER] [--repeats 5] [--max-new-tokens 32]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

try:
    from deforum_wan.enhance import options, rewrite
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from deforum_wan.enhance import options, rewrite

from deforum_wan.core.plan import PlanOptions, plan_clips
from deforum_wan.core.settings import load_settings
from deforum_wan.core.specs import MODEL_SPECS

DEFAULT_SETTINGS = Path(__file__).resolve().parents[1].parent / "shared" / "deforum-settings" / "forge-deforum-default.txt"


def requests_for(settings_path: Path) -> list[options.EnhanceRequest]:
    """One request per clip of the plan, as enhance_plan builds them."""
    settings = load_settings(settings_path)
    plan = plan_clips(settings, MODEL_SPECS["t2v"], PlanOptions(seed=1))
    return [options.EnhanceRequest(prompt=c.prompt, movement=c.movement) for c in plan.clips if c.prompt.strip()]


def median_seconds(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("settings", nargs="?", default=str(DEFAULT_SETTINGS))
    parser.add_argument("--qwen", help="chat model folder (default: a tiny random Qwen2 built for the run)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    requests = requests_for(Path(args.settings))
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.qwen
        if folder is None:
            from deforum_wan.renderer.tiny import make_tiny_models

            folder = str(make_tiny_models(tmp, ["qwen"])["qwen"])
        enhancer = rewrite.QwenEnhancer(folder, device=args.device, max_new_tokens=args.max_new_tokens,
                                        timeout_seconds=None)
        enhancer.load()
        try:
            enhancer.generate(requests[:2])  # warm-up: first-call allocations and kernel choices
            batched = median_seconds(lambda: enhancer.generate(requests), args.repeats)
            single = median_seconds(lambda: [enhancer.generate([r]) for r in requests], args.repeats)
        finally:
            enhancer.close()

    n = len(requests)
    print(f"model {enhancer.info.label}, {n} prompts, max_new_tokens {args.max_new_tokens}, "
          f"median of {args.repeats}, device {args.device}, cache off")
    print(f"{'mode':<12} {'seconds':>9} {'prompts/s':>10}")
    print(f"{'batched':<12} {batched:>9.3f} {n / batched:>10.2f}")
    print(f"{'one-by-one':<12} {single:>9.3f} {n / single:>10.2f}")
    print(f"ratio batched/one-by-one: {single / batched:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
