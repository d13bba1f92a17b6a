"""`deforum-wan doctor`: the environment renders run in, on one screen, with the fix for each missing piece.

Renders run in a worker process whose torch and libraries are not the web
UI's, so "which diffusers is this?" cannot be answered by looking at the host:
the doctor starts a worker exactly as a job does and asks it (`worker --probe`).
The host side here stays light (no torch import): the tab calls it too.
"""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

from . import deps, gpu_groups, torchenv

QWEN_SUGGESTION = "Qwen/Qwen2.5-3B-Instruct"
WAN_SUGGESTION = "Wan-AI/Wan2.1-VACE-1.3B-diffusers"


def diagnose(models_dir: str | Path | None = None, probe: bool = True, config: Any = None) -> dict[str, Any]:
    """Facts about host, private folder, worker and models, plus `fixes`: one command per missing piece."""
    from .bridge import WorkerConfig, probe_worker, resolve_deps_dir
    from ..enhance.qwen import find_qwen_models
    from ..core.specs import default_models_dir
    from ..renderer.models import IncompleteModel, SingleFileModel, scan_models

    config = config or WorkerConfig()
    host = torchenv.read_host_torch()
    folder = deps.deps_dir()
    manifest = deps.read_manifest(folder)
    report: dict[str, Any] = {
        "host": {"python": platform.python_version(), "executable": sys.executable, "torch": host.version,
                 "torch_cuda": host.cuda, "torch_hip": host.hip,
                 "gpus": [{"name": g.name, "capability": g.capability, "driver": g.driver, "memory_mib": g.memory_mib}
                          for g in host.gpus]},
        "private": {"folder": str(folder), "problem": deps.why_unsatisfied(folder),
                    "torch": (manifest or {}).get("torch"), "installed": (manifest or {}).get("installed", {})},
        "worker_python": config.python,
        "fixes": [],
    }
    fixes: list[str] = report["fixes"]
    farm = os.environ.get("DEFORUM_WAN_FARM") or None
    try:  # how many jobs the queue runs at once: one per GPU group here, or the farm's machines
        groups = gpu_groups.configured_groups()
        report["jobs"] = {"gpu_groups": [g or "all" for g in groups], "farm": farm}
    except ValueError as exc:
        report["jobs"] = {"gpu_groups": None, "farm": farm}
        fixes.append(str(exc))
    if report["private"]["problem"]:
        choice = torchenv.choice_from_environment(host)
        report["private"]["would_install_torch"] = choice.to_dict()
        fixes.append(f"renderer libraries: {report['private']['problem']}; run {deps.install_command()}")
    if probe:
        worker = probe_worker(config)
        report["worker"] = worker
        if worker.get("error"):
            fixes.append(f"the worker cannot start: {worker['error']}; run {deps.install_command()}")
        for name, error in (worker.get("errors") or {}).items():
            fixes.append(f"the worker cannot import {name} ({error}); run {deps.install_command()}")
        if worker.get("host_packages_seen") and resolve_deps_dir(config):
            seen = ", ".join(f"{n} {v}" for n, v in worker["host_packages_seen"].items())
            fixes.append(f"the worker sees the host's {seen}; run {deps.install_command()} to isolate it")
    root = Path(models_dir) if models_dir else default_models_dir()
    models, problems = scan_models(root)
    report["models_dir"] = str(root)
    report["models"] = [_model_entry(m) if isinstance(m, SingleFileModel) else
                        {"name": m.name, "kind": m.kind, "path": str(m.path)} for m in models]
    # single-file transformers (ComfyUI's layout) whose text encoder, VAE, CLIP vision or expert is not there
    report["incomplete_models"] = [dict(_model_entry(p.model), missing=list(p.model.missing))
                                   for p in problems if isinstance(p, IncompleteModel)]
    report["model_problems"] = [str(p) for p in problems if not isinstance(p, IncompleteModel)]
    report["placements"] = _expert_placements(models, report.get("worker") or {})
    for entry in report["incomplete_models"]:
        fixes.append(f"{entry['name']} ({entry['kind']}, single file) needs {'; '.join(entry['missing'])}")
    if not models and not report["incomplete_models"]:
        fixes.append(f"no Wan model in {root}: download a diffusers folder, e.g. `huggingface-cli download "
                     f"{WAN_SUGGESTION} --local-dir {root / WAN_SUGGESTION.split('/')[1]}`")
    try:
        qwen = find_qwen_models(root)
    except Exception as exc:  # noqa: BLE001 - a broken cache must not hide the rest of the report
        qwen, report["qwen_problem"] = [], str(exc)
    report["qwen_models"] = [{"name": q.name, "path": str(q.path)} for q in qwen]
    if not qwen:
        report["qwen_hint"] = f"optional, for --enhance: deforum-wan qwen download {QWEN_SUGGESTION}"
    report["ok"] = not fixes
    return report


def _expert_placements(models: list[Any], worker: dict[str, Any]) -> dict[str, str]:
    """For each A14B model: where memory profile experts puts its two experts on the worker's GPUs, or why not."""
    from ..renderer.placement import experts_note

    a14b = [m for m in models if str(m.kind).startswith("a14b")]
    if "devices" not in worker:  # not probed (--no-worker) or the worker could not start: the GPUs are unknown
        return {m.name: "memory profile experts: the worker's GPUs are unknown (run doctor without --no-worker)"
                for m in a14b}
    free = [(d["device"], int(d["free_mib"]) * 2**20) for d in worker["devices"] if "free_mib" in d]
    return {m.name: experts_note(m, free) for m in a14b}


def _model_entry(model: Any) -> dict[str, Any]:
    """A single-file model for the report: its files by role, the tokenizer's source, its pairing in words."""
    tokenizer = str(model.tokenizer) if model.tokenizer else (
        "inside the text encoder" if model.text_encoder is not None and model.text_encoder.has_tokenizer else None)
    return {"name": model.name, "kind": model.kind, "path": str(model.path), "format": "single files",
            "files": {role: str(f.path) for role, f in model.files().items()}, "tokenizer": tokenizer,
            "pairing": model.pairing()}


def _jobs_at_once(jobs: dict[str, Any]) -> str:
    if jobs.get("farm"):
        return f"on the Ray farm at {jobs['farm']} (DEFORUM_WAN_FARM)"
    groups = jobs.get("gpu_groups")
    if not groups:
        return "DEFORUM_WAN_GPUS is not valid (see To do)"
    if groups == ["all"]:
        return "1 (set DEFORUM_WAN_GPUS=0;1 for one job per GPU)"
    return f"{len(groups)}, one per GPU group: " + "; ".join(groups)


def _row(label: str, value: Any) -> str:
    return f"  {label:<22} {value}"


def format_report(report: dict[str, Any]) -> str:
    """The report as a screenful of text."""
    host, private, worker = report["host"], report["private"], report.get("worker") or {}
    gpus = ", ".join(f"{g['name']} (sm {'.'.join(map(str, g['capability'] or ())) or '?'}, driver {g['driver']})"
                     for g in host["gpus"]) or "none found (nvidia-smi)"
    lines = ["Host (the web UI's python)",
             _row("python", f"{host['python']}  {host['executable']}"),
             _row("torch", host["torch"] or "none"),
             _row("GPUs", gpus)]
    if "jobs" in report:
        lines.append(_row("jobs at once", _jobs_at_once(report["jobs"])))
    lines += ["Private renderer folder",
             _row("folder", private["folder"]),
             _row("state", "ready" if not private["problem"] else f"not ready: {private['problem']}")]
    torch = private.get("torch") or private.get("would_install_torch") or {}
    if torch:
        lines.append(_row("worker torch", f"{torch.get('mode')}: {torch.get('reason')}"))
    if worker:
        lines.append("Worker (what renders really run on)")
        if worker.get("error"):
            lines.append(_row("error", worker["error"]))
        else:
            lines += [_row("python", f"{worker.get('python')}  {worker.get('executable')}"),
                      _row("torch", f"{worker.get('torch')}  {worker.get('torch_path')}"),
                      _row("diffusers", worker.get("diffusers", "missing")),
                      _row("transformers", worker.get("transformers", "missing")),
                      _row("attention", ", ".join(worker.get("attention") or []) or "-")]
            for device in worker.get("devices") or []:
                memory = f", {device['free_mib']} of {device['total_mib']} MiB free" if "free_mib" in device else ""
                lines.append(_row(device["device"], f"{device.get('name')}{memory}"))
            hidden = (worker.get("isolation") or {}).get("allowed")
            lines.append(_row("host packages", "hidden except " + ", ".join(hidden[:6]) + (", ..." if len(hidden) > 6 else "")
                              if hidden is not None and worker.get("isolation") else "not isolated"))
    lines += ["Models", _row("folder", report["models_dir"]),
              _row("Wan models", ", ".join(f"{m['name']} ({m['kind']})" for m in report["models"]) or "none")]
    lines += [_row("", f"{m['name']}: {m['pairing']}") for m in report["models"] if m.get("format") == "single files"]
    lines += [_row("incomplete", f"{m['name']}: {m['pairing']}; missing {'; '.join(m['missing'])}")
              for m in report.get("incomplete_models") or []]
    lines += [_row("skipped", problem) for problem in report.get("model_problems") or []]
    lines += [_row(f"{name} (A14B)", note) for name, note in (report.get("placements") or {}).items()]
    lines.append(_row("Qwen models", ", ".join(q["name"] for q in report["qwen_models"]) or report.get("qwen_hint", "none")))
    lines.append("To do" if report["fixes"] else "Nothing to fix.")
    lines += [f"  - {fix}" for fix in report["fixes"]]
    return "\n".join(lines)


def summary_markdown() -> str:
    """The tab's Environment panel before anyone asks the worker: the private folder's state (a file read)."""
    folder = deps.deps_dir()
    problem = deps.why_unsatisfied(folder)
    if problem:
        return (f"**Renders cannot run yet:** {problem}.  \nRun `{deps.install_command()}` "
                "(or restart the web UI), then press *Check the worker*.")
    manifest = deps.read_manifest(folder) or {}
    torch = manifest.get("torch") or {}
    installed = manifest.get("installed") or {}
    return (f"Private folder `{folder}`: diffusers {installed.get('diffusers', '?')}, transformers "
            f"{installed.get('transformers', '?')}; torch {torch.get('version')} ({torch.get('reason')}).")


def report_markdown(report: dict[str, Any]) -> str:
    """The doctor's report for a gradio Markdown."""
    head = "**Ready to render.**" if report["ok"] else "**Something is missing** (see *To do*)."
    return f"{head}\n\n```\n{format_report(report)}\n```"


def _own_worker_python() -> bool:
    """True when renders run on a python of the user's choosing ($DEFORUM_WAN_WORKER_PYTHON), whose
    libraries are its own business: the private folder is then not what decides whether renders run."""
    from .bridge import ENV_WORKER_PYTHON

    chosen = os.environ.get(ENV_WORKER_PYTHON)
    # Paths, not files: two virtual environments' pythons are links to one interpreter.
    return bool(chosen) and os.path.abspath(chosen) != os.path.abspath(sys.executable)


def setup_problems(report: dict[str, Any] | None = None) -> list[str]:
    """What stops renders from running at all: the renderer libraries or the worker's torch.

    Without a report this is the cheap check (the private folder's manifest, as at
    every start); with a `diagnose()` report the worker's own account counts too:
    it cannot start, or cannot import torch or a renderer library.
    """
    problems: list[str] = []
    own = _own_worker_python()
    private = deps.why_unsatisfied(deps.deps_dir()) if report is None else (report.get("private") or {}).get("problem")
    if private and not own:
        problems.append(f"the renderer libraries are not ready ({private})")
    worker = (report or {}).get("worker") or {}
    if worker.get("error"):
        problems.append(f"the worker cannot start ({worker['error']})")
    for name, error in (worker.get("errors") or {}).items():
        problems.append(f"the worker cannot import {name} ({error})")
    return problems


def setup_banner(report: dict[str, Any] | None = None) -> str:
    """The tab's top banner (Markdown): what is missing and the one command that fixes it; "" when ready."""
    problems = setup_problems(report)
    if not problems:
        return ""
    return (f"**Renders cannot run yet:** {'; '.join(problems)}.\n\n"
            f"Run this once (from any folder), then press *Check again*:\n\n```\n{deps.install_command()}\n```")
