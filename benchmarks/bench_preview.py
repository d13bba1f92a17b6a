"""What live previews cost: the same tiny render with previews off, every 4th step and every step.

    python benchmarks/bench_preview.py [--repeats 9] [--size 128] [--steps 8] [--frames 40] [--model vace] [--threads 1]
                                       [--fit-only] [--real-vae]

The model is loaded once and the three settings take turns in every repeat (off,
every 4th, every step, off, ...), so drift hits them alike. For each it prints the
median and the fastest run of the time inside the pipeline calls (where the
preview work happens) with their ratios to "off", and the time spent in the
preview code itself (taking the latent frame off the tensor, projecting, writing
the PNG), measured inside the same runs: on a busy machine that share is steadier
than the difference of two noisy totals. Torch runs on --threads threads (1 by
default: fewer threads swing less when other processes share the cores).

Tiny models have tiny latents (a 128x128 clip is 16x16 latent pixels), so the
relative cost they show only stands for a real render of the same latent size.
The second table therefore times one preview alone on latents of the real sizes,
Wan 2.1 480p (16x21x60x104) and Wan 2.2 TI2V-5B 720p (48x31x44x80): taking the
middle frame off the (CPU) tensor, the projection and resize, and the PNG write.
Divide by a real step's time for the relative cost at that size.

The third table is the one-off cost: fitting the latent -> RGB map from the VAE,
which the first render of a model load pays (the rows above do not: their
warm-up render fitted it) and later loads read from the cache in milliseconds.
It times the tiny model's VAE (the fit, and the cache read), and gives the real
Wan 2.1 and Wan 2.2 VAE architectures' size and the FLOPs of their fit, counted
on the meta device (no weights, instant). --real-vae also times their fit on
this CPU with random weights (same architecture, same cost; about a minute each
on one thread). The cache goes to a temporary folder, never the user's.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

MODES = (("off", 0), ("every 4th", 4), ("every step", 1))
# The real VAEs' architectures (diffusers' AutoencoderKLWan defaults are Wan 2.1's; Wan 2.2's from its
# vae/config.json), with neutral latent statistics: the fit's cost does not depend on them.
REAL_VAES = (
    ("Wan 2.1 VAE (z16, 8x)", {}),
    ("Wan 2.2 VAE (z48, 16x)", {"base_dim": 160, "decoder_base_dim": 256, "z_dim": 48, "in_channels": 12,
                                "out_channels": 12, "patch_size": 2, "scale_factor_spatial": 16, "is_residual": True,
                                "latents_mean": [0.0] * 48, "latents_std": [1.0] * 48}),
)


def _timed(owner: object, name: str, spent: list[float]) -> None:
    """Wrap owner.name so that each call adds its duration to spent[0]."""
    inner = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    setattr(owner, name, wrapper)


def bench_renders(args: argparse.Namespace, tmp: Path, model_dir: Path) -> None:
    from deforum_wan.core.plan import PlanOptions
    from deforum_wan.core.settings import settings_from_dict
    from deforum_wan.renderer import pipelines, preview
    from deforum_wan.renderer.loading import load_pipelines
    from deforum_wan.renderer.models import classify_model
    from deforum_wan.renderer.render import RenderJob, render

    pipes = load_pipelines(classify_model(model_dir), device="cpu")
    settings = settings_from_dict({"prompts": {"0": "a red fox runs", "20": "a blue bird flies"},
                                   "max_frames": args.frames, "fps": 16, "W": args.size, "H": args.size, "seed": 1,
                                   "batch_name": "bench_{timestring}"})
    options = PlanOptions(steps=args.steps, max_clip_frames=args.clip_frames, seed=1)
    spent = [0.0]  # seconds inside the preview code
    _timed(pipelines, "_preview_latent", spent)
    _timed(preview, "preview_image", spent)
    _timed(preview.PreviewFiles, "write", spent)
    fitting = [0.0]  # seconds getting the map from the VAE (the warm-up render's first clip)
    _timed(preview, "map_for_vae", fitting)
    rows: dict[str, list[tuple[float, float, int]]] = {name: [] for name, _ in MODES}

    def once(every: int, outdir: Path) -> tuple[float, float, int]:
        count = [0]

        def on_event(event: dict) -> None:
            count[0] += event["type"] == "preview"

        spent[0] = 0.0
        result = render(RenderJob(settings=settings, model=str(model_dir), outdir=str(outdir), options=options,
                                  make_video=False, preview_every=every), on_event=on_event, pipelines=pipes)
        return result.pipeline_seconds, spent[0], count[0]

    once(4, tmp / "warmup")  # first calls pay for lazy imports and allocator growth, and the map's fit
    fit_seconds = fitting[0]
    for repeat in range(args.repeats):
        for name, every in MODES:
            rows[name].append(once(every, tmp / f"out{repeat}_{every}"))
    pipes.free()

    print(f"tiny {args.model}, {args.size}x{args.size}, {args.frames} frames, clips of {args.clip_frames}, "
          f"{args.steps} steps, {args.repeats} repeats, {args.threads} torch thread(s)")
    print(f"{'previews':>11} {'per render':>10} {'median s':>9} {'ratio':>6} {'fastest s':>9} {'ratio':>6} "
          f"{'in previews ms':>14} {'share':>7}   runs (pipeline s)")
    off = [r[0] for r in rows["off"]]
    for name, _ in MODES:
        pipe_s = [r[0] for r in rows[name]]
        median, fastest = statistics.median(pipe_s), min(pipe_s)
        in_previews = statistics.median(r[1] for r in rows[name])
        share = statistics.median(r[1] / r[0] for r in rows[name])
        runs = " ".join(f"{x:.2f}" for x in pipe_s)
        print(f"{name:>11} {rows[name][0][2]:>10} {median:>9.3f} {median / statistics.median(off):>6.3f} "
              f"{fastest:>9.3f} {fastest / min(off):>6.3f} {in_previews * 1000:>14.1f} {share:>7.2%}   {runs}")
    print(f"(the map from the VAE, once per load: {fit_seconds:.2f} s in the warm-up render, not in the rows; "
          f"{fitting[0] - fit_seconds:.3f} s in all the rows together)")


def bench_projection(args: argparse.Namespace, tmp: Path) -> None:
    import numpy as np
    import torch

    from deforum_wan.renderer import preview

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    maps = {c: preview.LatentRGB(rng.normal(0, 0.1, (c, 3)).astype(np.float32), np.zeros(3, np.float32), s)
            for c, s in ((16, 8), (48, 16))}  # the projection costs the same whatever the fitted numbers
    noise = torch.randn(1, 16, 21, 60, 104)
    # A smooth latent (8x8 blocks) compresses like a real preview; white noise is the PNG encoder's worst case.
    smooth = torch.randn(1, 16, 21, 8, 13).repeat_interleave(8, 3).repeat_interleave(8, 4)[..., :60, :104]
    cases = (("Wan 2.1 480p, noise", noise, (832, 480)), ("Wan 2.1 480p, smooth", smooth, (832, 480)),
             ("Wan 2.2 TI2V-5B 720p, noise", torch.randn(1, 48, 31, 44, 80), (1280, 704)))
    print(f"\none preview alone, median of {args.calls} calls (CPU, {torch.get_num_threads()} torch threads)")
    print(f"{'latents':>45} {'frame off tensor':>17} {'project+resize':>15} {'PNG write':>10} {'total ms':>9} {'image':>9}")
    files = preview.PreviewFiles(tmp, "20000101000000")
    for label, latents, size in cases:
        times: dict[str, list[float]] = {"frame": [], "project": [], "write": []}
        image = None
        for _ in range(args.calls):
            t0 = time.perf_counter()
            frame = preview.middle_frame(latents).detach().float().cpu().numpy()
            t1 = time.perf_counter()
            image = preview.preview_image(frame, maps[frame.shape[0]], size)
            t2 = time.perf_counter()
            files.write(image)
            t3 = time.perf_counter()
            times["frame"].append(t1 - t0)
            times["project"].append(t2 - t1)
            times["write"].append(t3 - t2)
        med = {k: statistics.median(v) * 1000 for k, v in times.items()}
        shape_s = "x".join(str(n) for n in latents.shape[1:])
        print(f"{label + ' ' + shape_s:>45} {med['frame']:>17.3f} {med['project']:>15.3f} {med['write']:>10.3f} "
              f"{sum(med.values()):>9.3f} {image.shape[1]}x{image.shape[0]:<4}")
    files.remove()


def bench_fit(args: argparse.Namespace, tmp: Path, model_dir: Path | None) -> None:
    import torch
    from diffusers import AutoencoderKLWan
    from torch.utils.flop_counter import FlopCounterMode

    from deforum_wan.renderer import preview

    pictures = len(preview.fit_images())
    print(f"\nfitting the preview map: {pictures} pictures of {preview.FIT_SIDE}x{preview.FIT_SIDE}, "
          f"{preview.FIT_FRAMES} frames each (CPU, {torch.get_num_threads()} torch threads)")
    print(f"{'VAE':>26} {'params':>8} {'encoder':>8} {'TFLOP/fit':>10} {'GPU est. s':>10} {'fit s':>8} "
          f"{'cache read ms':>14}")

    def size(vae: object) -> tuple[float, float]:
        encoder = sum(p.numel() for m in (vae.encoder, vae.quant_conv) for p in m.parameters())
        return sum(p.numel() for p in vae.parameters()) / 1e6, encoder / 1e6

    def tflop(config: dict) -> float:
        with torch.device("meta"):
            vae = AutoencoderKLWan(**config)
        clip = torch.zeros(1, 3, preview.FIT_FRAMES, preview.FIT_SIDE, preview.FIT_SIDE, device="meta")
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            vae.encode(clip)
        return counter.get_total_flops() * pictures / 1e12

    if model_dir is not None:
        vae = AutoencoderKLWan.from_pretrained(model_dir / "vae").eval()
        fits = []
        for _ in range(args.fit_calls):
            start = time.perf_counter()
            preview.fit_map(vae)
            fits.append(time.perf_counter() - start)
        folder = tmp / "fit-cache"
        preview.map_for_vae(vae, folder=folder)
        reads = []
        for _ in range(args.calls):
            start = time.perf_counter()
            preview.map_for_vae(vae, folder=folder)
            reads.append(time.perf_counter() - start)
        params, encoder = size(vae)
        config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
        print(f"{'tiny ' + args.model + f' (z{vae.config.z_dim})':>26} {params:>7.2f}M {encoder:>7.2f}M "
              f"{tflop(config):>10.4f} {'':>10} {statistics.median(fits):>8.3f} "
              f"{statistics.median(reads) * 1000:>14.2f}")
    for label, config in REAL_VAES:
        with torch.device("meta"):
            params, encoder = size(AutoencoderKLWan(**config))
        fit_s = "-"
        if args.real_vae:
            torch.manual_seed(0)
            vae = AutoencoderKLWan(**config).eval()  # random weights: the real cost, not a real map
            start = time.perf_counter()
            preview.fit_map(vae)
            fit_s = f"{time.perf_counter() - start:.2f}"
            del vae
        work = tflop(config)
        print(f"{label:>26} {params:>7.1f}M {encoder:>7.1f}M {work:>10.2f} {f'{work / 40:.2f}-{work / 10:.2f}':>10} "
              f"{fit_s:>8} {'':>14}")
    print("(GPU est.: at 10 to 40 TFLOP/s, what fp32/TF32 convolutions reach on current cards; "
          + ("fit s: random weights, this CPU)" if args.real_vae else "--real-vae times the fit on this CPU)"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--clip-frames", type=int, default=17)
    parser.add_argument("--model", default="vace", help="tiny model kind")
    parser.add_argument("--calls", type=int, default=50, help="calls per latent size in the projection table")
    parser.add_argument("--projection-only", action="store_true")
    parser.add_argument("--fit-only", action="store_true", help="only the table of the map's fit")
    parser.add_argument("--fit-calls", type=int, default=3, help="fits of the tiny VAE in the fit table")
    parser.add_argument("--real-vae", action="store_true", help="also time the fit of the real VAE architectures")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DEFORUM_WAN_CACHE"] = str(Path(tmp) / "cache")  # a cold fit, and the user's cache untouched
        model_dir = None
        if not args.projection_only:
            from deforum_wan.renderer.tiny import make_tiny_models

            model_dir = make_tiny_models(Path(tmp) / "models", [args.model])[args.model]
        if not (args.projection_only or args.fit_only):
            bench_renders(args, Path(tmp), model_dir)
        if not args.fit_only:
            bench_projection(args, Path(tmp))
        bench_fit(args, Path(tmp), model_dir)


if __name__ == "__main__":
    main()
