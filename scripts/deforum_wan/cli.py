"""`deforum-wan` command line: inspect, plan and render Deforum settings files."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from . import __version__


def _load(path: str):
    from .core.settings import load_settings
    from .renderer.manifest import loader_for

    # A parseq_manifest named by path (beside the settings file) or URL (renderer/fetch.py's rules) is read here.
    return load_settings(path, load_manifest=loader_for(path))


def cmd_inspect(args: argparse.Namespace) -> int:
    from .core.inspection import format_inspection, inspect_settings

    from .core.video_input import plan_notes, with_source
    from .renderer.source_video import probe_source

    settings = _load(args.settings)
    video = probe_source(settings)  # Video Input: the source's extracted frames set max_frames (and fps)
    ins = inspect_settings(with_source(settings, video) if video else settings)
    rows = [(c.name, c.value, c.source) for c in plan_notes(settings, video)[0]] if video else []
    if args.json:
        print(json.dumps({**ins.to_dict(), **({"video_input": rows} if video else {})}, indent=2, ensure_ascii=False))
    else:
        print("\n".join([format_inspection(ins)] + [f"{name}: {value} ({note})" for name, value, note in rows]))
    return 0


def _probed(settings, options):
    """Video Input: the options with the probed source video, so the plan counts its frames."""
    from dataclasses import replace

    from .renderer.source_video import probe_source

    return replace(options, video=probe_source(settings))


def add_plan_options(p: argparse.ArgumentParser) -> None:
    """Flags shared by `plan` and `render`: they become PlanOptions."""
    from .core.specs import DEFAULT_MODEL_KIND

    p.add_argument("--model", default=DEFAULT_MODEL_KIND,
                   help="model kind (t2v, i2v, vace, ti2v-5b, a14b-t2v, ...) or a model folder (default: %(default)s)")
    p.add_argument("--continuity", choices=["auto", "i2v", "vace", "none"], default="auto",
                   help="how each clip continues the previous one")
    p.add_argument("--overlap", type=int, help="VACE: frames carried into the next clip")
    p.add_argument("--width", type=int, help="render width, used as given (rounded to the model's multiple)")
    p.add_argument("--height", type=int, help="render height, used as given (rounded to the model's multiple)")
    p.add_argument("--exact-size", action="store_true",
                   help="render the settings' W/H as given, not the nearest size the model was trained for")
    p.add_argument("--steps", type=int, help="denoising steps per clip (default: the model's official count)")
    p.add_argument("--guidance", type=float, help="guidance scale (default: the model's official value)")
    p.add_argument("--guidance-2", type=float,
                   help="two-expert (A14B) models: the low-noise expert's guidance (default: official, or --guidance)")
    p.add_argument("--flow-shift", type=float,
                   help="flow-matching shift (default: the model's official value at the render size)")
    p.add_argument("--max-clip-frames", type=int, help="cap Wan frames per clip (4n+1)")
    p.add_argument("--seed", type=int, help="base seed (overrides the settings' seed)")
    p.add_argument("--sensitivity", type=float, default=1.0, help="camera words: higher describes smaller motions")
    p.add_argument("--language", choices=["en", "zh"], default="en", help="language of the camera words")
    p.add_argument("--timing", choices=["auto", "native", "interpolate", "blend", "nearest"],
                   help="output frames from Wan frames: native = one for one (motion at fps/native speed), "
                        "interpolate = motion-compensated in-betweens, blend = crossfades (ghosting), nearest; "
                        "auto (default): native within --fps-tolerance of the model's rate, else interpolate")
    p.add_argument("--fps-tolerance", type=float,
                   help="auto timing maps frames one for one when fps is within this fraction of the model's "
                        "rate (default 0.1: 15 fps on a 16 fps model plays its motion at 0.94x)")
    p.add_argument("--motion", choices=["words", "guide", "both"],
                   help="how the camera schedules reach the picture: camera words in the prompt (default), a motion "
                        "guide for VACE (the last frame shown, warped along each clip's path as Deforum warps; "
                        "strength_schedule sets how closely it is followed), or both")
    p.add_argument("--preset", choices=["quality", "fast", "turbo"],
                   help="sampling values of a step-distill LoRA: fast = CausVid (9 steps, no CFG), turbo = lightx2v "
                        "4-step; quality (default) = the model's official values. Load the LoRA with --lora")
    p.add_argument("--lora", action="append", default=[], metavar="NAME_OR_FILE[:WEIGHT[:WEIGHT_2]]",
                   help="a LoRA for every clip (repeatable): a name in <models>/wan/loras or the web UI's models/Lora, "
                        "or a .safetensors file; WEIGHT_2 is the A14B low-noise expert's. <lora:name:w> in a prompt "
                        "sets it per clip")
    p.add_argument("--cache", metavar="NAME[:THRESHOLD]",
                   help="a diffusers step cache (off by default):\n" + _cache_help())
    p.add_argument("--min-clip-seconds", type=float,
                   help="merge prompt segments shorter than this into one clip (default 2; 0 keeps every "
                        "prompt change as a cut)")


def _default_kind() -> str:
    from .core.specs import DEFAULT_MODEL_KIND

    return DEFAULT_MODEL_KIND


def _cache_help() -> str:
    from .core.speed import cache_help

    return cache_help()


def plan_options(args: argparse.Namespace, seed: int, extra_modes: tuple[str, ...] = ()):
    from .core.plan import PlanOptions

    return PlanOptions(
        continuity=args.continuity, overlap=args.overlap, extra_modes=extra_modes, width=args.width,
        height=args.height, steps=args.steps, guidance=args.guidance, flow_shift=args.flow_shift,
        guidance_2=args.guidance_2, exact_size=args.exact_size,
        max_clip_frames=args.max_clip_frames, sensitivity=args.sensitivity, language=args.language,
        timing=args.timing, fps_tolerance=args.fps_tolerance, min_clip_seconds=args.min_clip_seconds, seed=seed,
        preset=args.preset, cache=args.cache, loras=tuple(args.lora), motion=args.motion,
    )


def model_spec_for(name: str):
    """A kind name gives its spec; a folder is classified from its files."""
    from .core.specs import MODEL_SPECS

    if name in MODEL_SPECS:
        return MODEL_SPECS[name]
    if not Path(name).expanduser().is_dir():
        raise ValueError(f"--model: {name!r} is neither a model kind ({', '.join(MODEL_SPECS)}) nor a model folder")
    from .renderer.models import classify_model

    return classify_model(name).spec


def cmd_plan(args: argparse.Namespace) -> int:
    from .core.plan import format_plan, plan_clips
    from .core.seeds import resolve_seed

    settings = _load(args.settings)
    seed = resolve_seed(args.seed if args.seed is not None else settings.seed)
    spec = model_spec_for(args.model)
    plan = plan_clips(settings, spec, _probed(settings, plan_options(args, seed)))
    from .core.input_report import format_input_report, input_report

    inputs = input_report(settings.raw)  # what the file brings: init image, video, guided images, Parseq
    if args.json:
        print(json.dumps({**plan.to_dict(), "inputs": [e.to_dict() for e in inputs]}, indent=2, ensure_ascii=False))
    else:
        print(format_plan(plan) + "\n\n" + format_input_report(inputs))
    if not args.json and spec.kind.startswith("a14b") and Path(args.model).expanduser().is_dir():
        from .renderer.models import classify_model
        from .renderer.placement import cuda_free, experts_note

        print(experts_note(classify_model(args.model), cuda_free()))
    return 0


def add_render_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--i2v-model", help="an I2V model folder for continuing clips when --model cannot")
    p.add_argument("--models-dir", help="where model names/kinds are looked up (default: $DEFORUM_WAN_MODELS or models/wan)")
    p.add_argument("--depth-model", metavar="FOLDER",
                   help="a depth-estimation model folder (a path such as ./Depth-Anything-V2-Small-hf), or its name under "
                        "<models-dir>/depth/: the motion guide warps with predicted depth when the settings have "
                        "use_depth_warping on in 3D")
    p.add_argument("--outdir", default="outputs", help="output folder; the batch folder goes inside it")
    p.add_argument("--resume", metavar="TIMESTRING", help="continue an unfinished render")
    p.add_argument("--device", help="cuda, cpu, cuda:1, ... (default: cuda if available)")
    p.add_argument("--memory-profile", default="auto",
                   choices=["auto", "none", "model", "sequential", "group", "experts"], help="where the weights live; experts: Wan 2.2 A14B's two experts on two GPUs, neither offloaded")
    p.add_argument("--gpus", metavar="0,1,...", help="one clip across these GPUs: one process per GPU under torchrun, "
                   "diffusers' context parallelism on the transformer (with --device cpu: CPU ranks over gloo, for "
                   "testing); a single index picks that GPU")
    p.add_argument("--context-parallel", default="ulysses", choices=["ulysses", "ring"],
                   help="with --gpus: how attention is split across GPUs (ring needs flash-attn or cuDNN, not CPU)")
    p.add_argument("--attention", default="auto", choices=["auto", "native", "flash"])
    p.add_argument("--compile", action="store_true", help="torch.compile the transformer")
    p.add_argument("--vae-tiling", action="store_true", help="decode in tiles to save memory")
    p.add_argument("--stop-file", help="stop cleanly between steps when this file appears")
    p.add_argument("--weight-storage", choices=["auto", "none", "fp8"], default="auto",
                   help="transformer weights on the GPU: fp8 (layerwise casting, computed in bf16) halves them; auto "
                        "(default) uses fp8 only when that avoids offloading")
    p.add_argument("--no-video", action="store_true", help="write frames only")
    p.add_argument("--no-color-match", action="store_true",
                   help="no colour matching, whatever color_coherence says (default: as color_coherence)")
    p.add_argument("--enhance", action="store_true", help="rewrite prompts with a local Qwen model first")
    p.add_argument("--qwen", help="Qwen instruct model folder for --enhance (default: auto-select)")
    p.add_argument("--style", default="", help="--enhance: style prompt added to every clip")
    p.add_argument("--style-strength", type=float, default=0.5, help="--enhance: 0..1")
    p.add_argument("--target-language", choices=["en", "zh"], default="en", help="--enhance: output language")
    p.add_argument("--no-shared-context", action="store_true",
                   help="--enhance: rewrite each clip alone, without what the prompts share and the neighbouring scenes")


def render_job(args: argparse.Namespace):
    from dataclasses import replace

    from .renderer.render import RenderJob

    from .renderer.parallel import parse_gpus

    settings = _load(args.settings)
    options = replace(plan_options(args, args.seed), color_match=not args.no_color_match)
    gpus = parse_gpus(args.gpus)
    if len(gpus) == 1 and not str(args.device or "").startswith("cpu"):
        args.device = f"cuda:{gpus[0]}"
    return RenderJob(gpus=gpus if len(gpus) > 1 else (), context_parallel=args.context_parallel,
        settings=settings, model=args.model, outdir=args.outdir, options=options, i2v_model=args.i2v_model,
        models_dir=args.models_dir, resume=args.resume, device=args.device, memory_profile=args.memory_profile,
        attention=args.attention, compile=args.compile, vae_tiling=args.vae_tiling, stop_file=args.stop_file,
        storage=args.weight_storage, depth_model=args.depth_model,
        make_video=not args.no_video, enhance=args.enhance,
        enhance_options={"qwen": args.qwen, "style": args.style, "style_strength": args.style_strength,
                         "target_language": args.target_language, "models_dir": args.models_dir,
                         "device": args.device, "shared_context": not args.no_shared_context},
    )


def cmd_render(args: argparse.Namespace) -> int:
    from .renderer.progress import ConsoleProgress
    from .renderer.render import render

    job = render_job(args)
    if len(job.gpus) > 1:
        from .service.torchrun import render_across
        from .service.worker import job_to_dict

        with ConsoleProgress() as progress:
            result = render_across(job_to_dict(job), list(job.gpus), progress)
    else:
        with ConsoleProgress() as progress:
            result = render(job, on_event=progress)
    if result.status == "done":
        print(f"{result.frames_on_disk} frames and {result.video.name if result.video else 'no video'} in {result.folder}")
        return 0
    print(f"stopped with {result.frames_on_disk}/{result.frames_total} frames in {result.folder}; "
          f"continue with --resume {result.timestring}", file=sys.stderr)
    return 130


def cmd_models(args: argparse.Namespace) -> int:
    from .core.specs import default_models_dir
    from .renderer.models import format_models_table, scan_models

    root = Path(args.dir) if args.dir else default_models_dir()
    infos, problems = scan_models(root)
    print(f"models in {root}:")
    print(format_models_table(infos))
    for problem in problems:
        print(f"skipped: {problem}")
    return 0


def cmd_make_tiny_models(args: argparse.Namespace) -> int:
    from .renderer.tiny import make_tiny_models

    for kind, folder in make_tiny_models(args.dir, args.kinds or None).items():
        print(f"{kind:10} {folder}")
    return 0


def cmd_enhance(args: argparse.Namespace) -> int:
    from .core.plan import plan_clips
    from .core.seeds import resolve_seed
    from .enhance.command import run_enhance_command

    settings = _load(args.settings)
    seed = resolve_seed(args.seed if args.seed is not None else settings.seed)
    options = _probed(settings, plan_options(args, seed))
    return run_enhance_command(args, plan_clips(settings, model_spec_for(args.model), options))


def cmd_qwen(args: argparse.Namespace) -> int:
    from .enhance.qwen import download_qwen, find_qwen_models

    if args.action == "download":
        print(download_qwen(args.repo_id, args.target))
        return 0
    models = find_qwen_models(args.models_dir)
    for m in models:
        print(f"{m.label:40} {m.source:9} {m.path}")
    if not models:
        print("no Qwen models found")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from .webui.standalone import launch_standalone

    return launch_standalone(host=args.host, port=args.port, outdir=args.outdir, models_dir=args.models_dir)


def cmd_install_deps(args: argparse.Namespace) -> int:
    from .service.deps import install_private_deps

    return install_private_deps(args.target, dry_run=args.dry_run, farm=args.farm)


def cmd_worker(args: argparse.Namespace) -> int:
    from .service.worker import run_probe, run_worker

    if args.probe:
        return run_probe()
    if not args.job:
        raise ValueError("worker: give a job JSON file (or --probe)")
    return run_worker(args.job)


def cmd_farm_job(args: argparse.Namespace) -> int:
    from .service.farmdriver import run_driver

    return run_driver(args.job, slots_only=args.slots)


def cmd_doctor(args: argparse.Namespace) -> int:
    from .service.doctor import diagnose, format_report

    report = diagnose(models_dir=args.models_dir, probe=not args.no_worker)
    print(json.dumps(report, indent=2, default=str) if args.json else format_report(report))
    return 0 if report["ok"] else 1


def cmd_preview(args: argparse.Namespace) -> int:
    import time

    from .core.plan import PlanOptions, plan_clips
    from .core.seeds import resolve_seed
    from .renderer.motion_preview import DEFAULT_MAX_SIDE, default_out, render_preview

    if bool(args.frames) != bool(args.plain):
        raise ValueError("--plain and --frames DIR go together: the bare warped frames go into DIR")
    started = time.monotonic()
    settings = _load(args.settings)
    seed = resolve_seed(args.seed if args.seed is not None else settings.seed)
    plan = plan_clips(settings, model_spec_for(args.model), PlanOptions(seed=seed))
    result = render_preview(settings, plan, args.out or default_out(args.settings), image=args.image,
                            max_side=args.max_side or DEFAULT_MAX_SIDE, frames_dir=args.frames if args.plain else None)
    print(f"{result.video}: {result.frames} frames at {result.fps:g} fps, {result.width}x{result.height}, "
          f"{result.source}, {len(plan.clips)} clip(s), {time.monotonic() - started:.1f} s"
          + (f"; plain frames in {result.frames_dir}" if result.frames_dir else ""))
    return 0


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
    "inspect": (cmd_inspect, "show frames, prompts and camera schedules of a settings file"),
    "plan": (cmd_plan, "show the Wan clips a settings file becomes"),
    "render": (cmd_render, "render a settings file into frames and an mp4"),
    "preview": (cmd_preview, "fly the init image (or a test card) along the camera path into an mp4, in seconds"),
    "models": (cmd_models, "list the Wan models found in the models folder"),
    "make-tiny-models": (cmd_make_tiny_models, "build tiny random Wan/Qwen models for tests and demos"),
    "worker": (cmd_worker, "run one render job from a JSON file, printing JSON-line events"),
    "farm-job": (cmd_farm_job, "hand one job to the Ray farm and print its events (the queue starts it)"),
    "enhance": (cmd_enhance, "rewrite each clip's prompt with a local Qwen model and show before/after"),
    "qwen": (cmd_qwen, "list the Qwen models --enhance can use, or download one by its repo id"),
    "ui": (cmd_ui, "serve the Wan tab and its API without a web UI"),
    "install-deps": (cmd_install_deps, "fill the private folder of renderer libraries the worker uses"),
    "doctor": (cmd_doctor, "explain the environment renders run in, and what to run for anything missing"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deforum-wan", description="Render Deforum settings with Wan video models.")
    parser.add_argument("--version", action="version", version=f"deforum-wan {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help=COMMANDS["inspect"][1])
    p.add_argument("settings", help="Deforum settings file (.txt/.json)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser("plan", help=COMMANDS["plan"][1])
    p.add_argument("settings", help="Deforum settings file (.txt/.json)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    add_plan_options(p)

    p = sub.add_parser("render", help=COMMANDS["render"][1])
    p.add_argument("settings", help="Deforum settings file (.txt/.json)")
    add_plan_options(p)
    add_render_options(p)

    p = sub.add_parser("preview", help=COMMANDS["preview"][1])
    p.add_argument("settings", help="Deforum settings file (.txt/.json)")
    p.add_argument("--image", help="picture to fly (default: the settings' init_image when use_init, else a test card)")
    p.add_argument("--out", help="mp4 to write (default: outputs/preview/<settings name>_camera.mp4)")
    p.add_argument("--plain", action="store_true", help="also write the bare warped frames (with --frames)")
    p.add_argument("--frames", metavar="DIR", help="--plain: folder for the frames, named as Deforum names them")
    p.add_argument("--model", default=_default_kind(), help="model kind whose clips are marked (default: %(default)s)")
    p.add_argument("--seed", type=int, help="base seed for the plan (default: the settings' seed)")
    p.add_argument("--max-side", type=int,
                   help="longest side of the preview in pixels, never above the settings' own (default 384; give "
                        "the settings' larger side for full-size --plain frames to set beside Deforum's)")

    p = sub.add_parser("models", help=COMMANDS["models"][1])
    p.add_argument("--dir", help="models folder (default: $DEFORUM_WAN_MODELS or models/wan)")

    p = sub.add_parser("make-tiny-models", help=COMMANDS["make-tiny-models"][1])
    p.add_argument("dir", help="folder to write the models into")
    p.add_argument("--kinds", nargs="*", help="only these kinds (default: all)")

    p = sub.add_parser("worker", help=COMMANDS["worker"][1])
    p.add_argument("job", nargs="?", help="job JSON file")
    p.add_argument("--probe", action="store_true", help="print the worker's environment as one JSON line and exit")

    p = sub.add_parser("farm-job", help=COMMANDS["farm-job"][1])
    p.add_argument("job", help="farm job JSON file")
    p.add_argument("--slots", action="store_true", help="only print how many jobs the cluster holds at once")

    p = sub.add_parser("enhance", help=COMMANDS["enhance"][1])
    p.add_argument("settings", help="Deforum settings file (.txt/.json)")
    p.add_argument("--qwen", help="Qwen instruct model folder (default: auto-select from the models folders)")
    p.add_argument("--style", default="", help="style prompt added to every clip")
    p.add_argument("--style-strength", type=float, default=0.5, help="0..1: how strongly the style is applied")
    p.add_argument("--target-language", choices=["en", "zh"], default="en", help="language of the rewritten prompts")
    p.add_argument("--no-cache", action="store_true", help="ignore and do not write the prompt cache")
    p.add_argument("--no-shared-context", action="store_true",
                   help="rewrite each clip alone, without what the prompts share and the neighbouring scenes")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--models-dir", help="models folder (default: $DEFORUM_WAN_MODELS or models/wan)")
    p.add_argument("--timeout-seconds", type=float, help="give up on the model after this long (default 600)")
    p.add_argument("--max-new-tokens", type=int, help="longest rewrite in tokens (default 256)")
    add_plan_options(p)

    p = sub.add_parser("qwen", help=COMMANDS["qwen"][1])
    qwen = p.add_subparsers(dest="action", required=True)
    q = qwen.add_parser("list", help="the Qwen models found, largest first")
    q.add_argument("--models-dir", help="models folder (default: $DEFORUM_WAN_MODELS or models/wan)")
    q = qwen.add_parser("download", help="download one model by its exact repo id")
    q.add_argument("repo_id", help="e.g. Qwen/Qwen2.5-3B-Instruct")
    q.add_argument("--target", help="folder to put the model folder in (default: <models>/wan/qwen)")

    p = sub.add_parser("ui", help=COMMANDS["ui"][1])
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=7870)
    p.add_argument("--outdir", default="outputs", help="output folder")
    p.add_argument("--models-dir", help="models folder (default: $DEFORUM_WAN_MODELS or models/wan)")

    p = sub.add_parser("install-deps", help=COMMANDS["install-deps"][1])
    p.add_argument("target", nargs="?", help="folder (default: the extension's .deps)")
    p.add_argument("--dry-run", action="store_true", help="print what would be installed")
    p.add_argument("--farm", action="store_true", help="add Ray for the render farm (kept for later installs)")

    p = sub.add_parser("doctor", help=COMMANDS["doctor"][1])
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--models-dir", help="models folder (default: $DEFORUM_WAN_MODELS or models/wan)")
    p.add_argument("--no-worker", action="store_true", help="do not start a worker to ask for its versions")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .renderer.models import ModelError

    args = build_parser().parse_args(argv)
    handler = COMMANDS[args.command][0]
    try:
        return handler(args)
    except (ValueError, ModelError) as e:  # every user-facing error of the package
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # an output folder that cannot be written, a full disk: say so, no traceback
        where = f": {e.filename}" if e.filename else ""
        print(f"error: {' '.join(str(e.strerror or e).split())}{where}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        if not _is_render_error(e):
            raise
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1


def _is_render_error(exc: BaseException) -> bool:
    """A RenderError, checked without importing the renderer (it cannot be raised unless it was imported)."""
    errors = sys.modules.get(f"{__package__}.renderer.errors")
    return errors is not None and isinstance(exc, errors.RenderError)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
