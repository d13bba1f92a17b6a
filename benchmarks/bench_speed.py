"""What the distillation presets and step caches save per clip, on a tiny model.

    python benchmarks/bench_speed.py [--repeats 5] [--model t2v] [--frames 33] [--size 64] [--threads 1]

One clip of the tiny model per setting, all settings taking turns in every repeat (so
drift hits them alike):

  quality     the model's official steps and guidance (Wan2.1 T2V: 50 steps, guidance 5)
  fast, turbo the preset's steps, no guidance, its sampler (FlowMatchEulerDiscreteScheduler)
  <cache>     each step cache the model kind supports, at its default threshold, on the
              quality settings

For each it prints the medians of: transformer passes (calls of the transformer), block
work (calls of the Linear layers inside the transformer blocks: what a cache skips),
seconds inside the transformer, and seconds of the whole pipeline call (text encoder and
VAE included), each with its ratio to quality. Torch runs on --threads threads.

Tiny random weights: the presets' savings are the same on a real model (fixed steps and
passes), and so are MagCache's and TaylorSeer's (their skips follow a schedule: calibrated
ratios, a fixed interval). First Block Cache and SeaCache decide from the activations, so a
trained model skips differently; at their defaults they may skip nothing here. The
presets' quality needs their LoRAs, which a tiny model does not have: only cost is measured.
"""
from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np


@contextlib.contextmanager
def meters(modules: list[Any]) -> Iterator[dict[str, float]]:
    """Count transformer passes, block-layer calls and seconds inside the transformers while in the block."""
    import torch

    seen = {"passes": 0, "block_work": 0, "transformer_s": 0.0}
    started: list[float] = []

    def before(*_: Any) -> None:
        started.append(time.perf_counter())

    def after(*_: Any) -> None:
        seen["passes"] += 1
        seen["transformer_s"] += time.perf_counter() - started.pop()

    def layer(*_: Any) -> None:
        seen["block_work"] += 1

    handles = []
    for module in modules:
        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
        handles += [sub.register_forward_hook(layer) for name, sub in module.named_modules()
                    if isinstance(sub, torch.nn.Linear) and re.match(r"(vace_)?blocks\.\d+\.", name)]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def sampler(pipe: Any, preset: Any, two_experts: bool) -> Iterator[None]:
    """The preset's scheduler on `pipe` for the duration (the model's own for presets that keep it)."""
    if preset.scheduler is None:
        yield
        return
    import diffusers

    original = pipe.scheduler
    pipe.scheduler = getattr(diffusers, preset.scheduler)(num_train_timesteps=1000,
                                                          **preset.scheduler_options(two_experts))
    try:
        yield
    finally:
        pipe.scheduler = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", default="t2v", help="tiny model kind (t2v, ti2v-5b, a14b-t2v, vace, ...)")
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    import torch

    from deforum_wan.core.speed import CACHES, PRESETS, cache_support, parse_cache, preset_cost
    from deforum_wan.renderer.caches import apply_cache, remove_cache, transformers_of
    from deforum_wan.renderer.loading import load_pipelines
    from deforum_wan.renderer.models import classify_model
    from deforum_wan.renderer.pipelines import ClipRequest
    from deforum_wan.renderer.tiny import make_tiny_models

    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory()
    info = classify_model(make_tiny_models(Path(tmp.name), [args.model])[args.model])
    pipes = load_pipelines(info, device="cpu")
    modules = transformers_of(*pipes.pipes())
    pipe = pipes.main if "t2v" in pipes.modes else pipes.pipes()[0]
    two_experts = len(modules) > 1
    steps, guidance = info.spec.default_steps, info.spec.default_guidance
    known = np.stack([np.full((args.size, args.size, 3), 40 * i, np.uint8) for i in range(3)])
    image = np.random.default_rng(0).integers(0, 256, size=(args.size, args.size, 3), dtype=np.uint8)

    def clip(n_steps: int, scale: float) -> None:
        request = dict(prompt="a red fox runs through a snowy forest", negative_prompt="blurry", seed=1,
                       num_frames=args.frames, width=args.size, height=args.size, steps=n_steps, guidance=scale)
        if "t2v" in pipes.modes:
            pipes.t2v(ClipRequest(**request))
        elif "i2v" in pipes.modes:
            pipes.i2v(ClipRequest(image=image, **request))
        else:
            pipes.vace(ClipRequest(known_frames=known, **request))

    settings: list[tuple[str, Any, Any]] = [(name, PRESETS[name], None) for name in ("quality", "fast", "turbo")]
    skipped = []
    for name in CACHES:
        if cache_support(name, info.kind) is None:
            settings.append((name, PRESETS["quality"], parse_cache(name)))
        else:
            skipped.append(name)

    def once(preset: Any, spec: Any) -> dict[str, float]:
        n_steps = preset.steps or steps
        scale = preset.guidance if preset.guidance is not None else guidance
        if spec is not None:
            apply_cache(modules, spec, n_steps)
        try:
            with sampler(pipe, preset, two_experts), meters(modules) as seen:
                start = time.perf_counter()
                clip(n_steps, scale)
                seen["pipeline_s"] = time.perf_counter() - start
        finally:
            remove_cache(modules)
        return seen

    once(PRESETS["turbo"], None)  # warm-up: lazy imports, allocator growth
    rows: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in settings}
    for _ in range(args.repeats):
        for name, preset, spec in settings:
            rows[name].append(once(preset, spec))
    pipes.free()
    tmp.cleanup()

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[name])

    print(f"tiny {args.model}, {args.frames} frames, {args.size}x{args.size}, quality = {steps} steps, guidance "
          f"{guidance:g}; medians of {args.repeats} repeats, {args.threads} torch thread(s)")
    print(f"{'setting':>16} {'steps':>5} {'cost':>5} {'passes':>6} {'ratio':>6} {'block work':>10} {'ratio':>6} "
          f"{'transformer s':>13} {'ratio':>6} {'pipeline s':>10} {'ratio':>6}")
    for name, preset, spec in settings:
        label = str(spec) if spec is not None else name
        cost = preset_cost(preset, steps, guidance)
        cells = [f"{label:>16} {preset.steps or steps:>5} {cost:>5g}"]
        for key, width, fmt in (("passes", 6, ".0f"), ("block_work", 10, ".0f"), ("transformer_s", 13, ".3f"),
                                ("pipeline_s", 10, ".3f")):
            value, base = median(name, key), median("quality", key)
            cells.append(f"{value:>{width}{fmt}} {value / base:>6.3f}")
        print(" ".join(cells))
    if skipped:
        print(f"(not on {info.kind} models: {', '.join(skipped)})")


if __name__ == "__main__":
    main()
