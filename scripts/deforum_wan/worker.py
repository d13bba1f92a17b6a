"""`deforum-wan worker JOB.json`: one render in its own process, events as JSON lines on stdout.

The web UI and the API run renders through this, in a process whose `sys.path`
puts newer diffusers/transformers first, so the host's pinned libraries stay
untouched and a crash or out-of-memory never takes the web UI down. SIGTERM or
SIGINT, or the job's stop file, stops the render between denoising steps, and
every finished frame stays on disk.
"""
from __future__ import annotations

import json
import signal
import sys
import threading
import traceback
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, TextIO

from .plan import PlanOptions
from .render import RenderJob
from .settings import load_settings

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


def run_worker(job_path: str, out: TextIO | None = None) -> int:
    from .render import render

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
        job = job_from_dict(json.loads(Path(job_path).read_text(encoding="utf-8")))
        result = render(job, on_event=emit, should_stop=stop.is_set)
    except Exception as exc:  # the error event is the worker's last word; the parent reads it
        emit({"type": "error", "error_type": type(exc).__name__, "message": str(exc) or type(exc).__name__,
              "traceback": traceback.format_exc(limit=6)})
        return EXIT_FAILED
    return EXIT_OK if result.status == "done" else EXIT_INTERRUPTED
