"""`deforum-wan worker JOB.json`: one render in its own process, events as JSON lines on stdout.

The web UI and the API run renders through this, in a process whose `sys.path`
puts newer diffusers/transformers first, so the host's pinned libraries stay
untouched and a crash or out-of-memory never takes the web UI down. SIGTERM or
SIGINT, or the job's stop file, stops the render between denoising steps, and
every finished frame stays on disk.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import signal
import sys
import threading
import traceback
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any, TextIO

from ..core.plan import PlanOptions
from ..renderer.parallel import check_request, in_rank, parse_gpus
from .gpu_groups import group_gpus
from ..renderer.render import RenderJob
from ..core.settings import load_settings

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


def job_to_dict(job: RenderJob) -> dict[str, Any]:
    data = {f.name: getattr(job, f.name) for f in fields(job)}
    data["settings"] = job.settings.to_dict()
    data["options"] = asdict(job.options)
    return data


def job_from_dict(data: dict[str, Any]) -> RenderJob:
    """A RenderJob from JSON; `settings` is a settings object or a path to a settings file."""
    if not isinstance(data, dict):
        raise ValueError("job: expected a JSON object")
    if "settings" not in data or "model" not in data:
        raise ValueError("job: needs at least 'settings' and 'model'")
    known = {f.name for f in fields(RenderJob)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"job: unknown key(s) {', '.join(unknown)}")
    options = dict(data.get("options") or {})
    if "extra_modes" in options:
        options["extra_modes"] = tuple(options["extra_modes"])
    bad = sorted(set(options) - {f.name for f in fields(PlanOptions)})
    if bad:
        raise ValueError(f"job.options: unknown key(s) {', '.join(bad)}")
    return RenderJob(**{**data, "settings": load_settings(data["settings"]), "options": PlanOptions(**options)})


# Packages the hosts carry that break the renderer when it can import them (kornia 0.6.7, peft 0.13.2,
# an old xformers): the environment event says whether this worker can see them.
WATCHED_HOST_PACKAGES = ("kornia", "peft", "xformers")
ATTENTION_PACKAGES = ("flash_attn", "flash_attn_interface", "sageattention", "xformers")


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _module_file(name: str) -> str | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    return None if spec is None else (spec.origin or "namespace")


def environment_facts() -> dict[str, Any]:
    """What this worker really runs on: its python, torch, libraries, devices and attention backends.

    Every import is guarded: a broken library is reported by name, not raised,
    so `doctor` can say what is wrong.
    """
    from . import isolation

    facts: dict[str, Any] = {"type": "environment", "python": platform.python_version(),
                             "executable": sys.executable, "platform": platform.platform(terse=True),
                             "isolation": isolation.describe(), "errors": {},
                             "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    try:
        import torch

        facts.update(torch=torch.__version__, torch_path=os.path.dirname(torch.__file__),
                     cuda=torch.version.cuda, hip=getattr(torch.version, "hip", None))
        devices = []
        if torch.cuda.is_available():
            for i in range(torch.cuda.device_count()):
                free, total = torch.cuda.mem_get_info(i)
                props = torch.cuda.get_device_properties(i)
                devices.append({"device": f"cuda:{i}", "name": props.name, "capability": f"{props.major}.{props.minor}",
                                "free_mib": free // 2**20, "total_mib": total // 2**20})
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            devices.append({"device": "mps", "name": "Apple Metal"})
        devices.append({"device": "cpu", "name": platform.processor() or platform.machine(), "threads": torch.get_num_threads()})
        facts["devices"] = devices
        facts["device"] = devices[0]["device"]
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        facts["errors"]["torch"] = f"{type(exc).__name__}: {exc}"
    for name in ("diffusers", "transformers", "accelerate"):
        try:
            module = __import__(name)
            facts[name] = getattr(module, "__version__", _dist_version(name))
            facts[f"{name}_path"] = os.path.dirname(module.__file__ or "")
        except Exception as exc:  # noqa: BLE001
            facts["errors"][name] = f"{type(exc).__name__}: {exc}"
    facts["attention"] = ["sdpa"] + [n for n in ATTENTION_PACKAGES if _module_file(n)] if "torch" in facts else []
    # A watched package the private folder carries itself (peft, for LoRAs) is not the host's.
    facts["host_packages_seen"] = {n: _dist_version(n) for n in WATCHED_HOST_PACKAGES
                                   if isolation.from_host(_module_file(n))}
    return facts


def run_probe(out: TextIO | None = None) -> int:
    """`worker --probe`: the environment event alone, for `doctor` and the tab's Environment panel."""
    out = out or sys.stdout
    facts = environment_facts()
    out.write(json.dumps(facts, ensure_ascii=False, default=str) + "\n")
    out.flush()
    return EXIT_OK if not facts["errors"] else EXIT_FAILED


def run_worker(job_path: str, out: TextIO | None = None) -> int:
    from ..renderer.render import render

    out = out or sys.stdout
    lock = threading.Lock()

    def emit(event: dict) -> None:
        with lock:
            out.write(json.dumps(event, ensure_ascii=False, default=str) + "\n")
            out.flush()

    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        # Only set the flag: the handler may run while the main thread holds the emit lock.
        # The render reports the stop itself, after the current step.
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        data = json.loads(Path(job_path).read_text(encoding="utf-8"))
        job = job_from_dict(data)
        # A job of a GPU group uses the whole group (the queue pinned it there); else the GPUs it asked for.
        gpus = group_gpus(job.gpu_group) if job.gpu_group else parse_gpus(job.gpus)
        if len(gpus) > 1:
            return _run_parallel(job, data, gpus, out, emit, stop)
        if gpus and not str(job.device or "").startswith("cpu"):
            job = replace(job, device=f"cuda:{gpus[0]}")
        emit(environment_facts())
        result = render(job, on_event=emit, should_stop=stop.is_set)
    except Exception as exc:  # the error event is the worker's last word; the parent reads it
        emit({"type": "error", "error_type": type(exc).__name__, "message": str(exc) or type(exc).__name__,
              "traceback": traceback.format_exc(limit=6)})
        return EXIT_FAILED
    return EXIT_OK if result.status == "done" else EXIT_INTERRUPTED


def _run_parallel(job: RenderJob, data: dict, gpus: tuple[int, ...], out: TextIO, emit: Any,
                  stop: threading.Event) -> int:
    """Several GPUs: launch the ranks under torchrun, or, inside one, be a rank (renderer/parallel.py)."""
    check_request(gpus, job.device, job.context_parallel, job.options.cache, job.memory_profile)
    if not in_rank():
        from .torchrun import run_launcher

        return run_launcher(data, list(gpus), out, stop)
    from ..renderer.parallel import run_rank

    rank = int(os.environ["RANK"])
    if rank != 0:
        emit = lambda event: None  # noqa: E731 - rank 0 alone reports
    else:
        emit(environment_facts())
    try:
        status = run_rank(job, emit, stop.is_set)
    except Exception as exc:
        if rank == 0:
            emit({"type": "error", "error_type": type(exc).__name__, "message": str(exc) or type(exc).__name__,
                  "traceback": traceback.format_exc(limit=6)})
        else:
            traceback.print_exc()
        return EXIT_FAILED
    # Interrupted is a clean end for torchrun too (a non-zero rank is a failure to it); rank 0's event says which.
    return EXIT_OK if status in ("done", "interrupted") else EXIT_FAILED
