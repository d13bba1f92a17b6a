"""The web-UI side of a render: start the worker process, stream its events, cancel it, report crashes.

The web UI never imports diffusers (Forge pins a version without Wan pipelines),
so renders run in `python -m deforum_wan worker JOB.json`, started with the
host's python (and so the host's torch) but with the private folder of newer
diffusers/transformers first on its `sys.path` (deps.py fills it). A crash or
an out-of-memory kill of that process is reported as an outcome; the web UI
stays up, and the GPU memory goes back when the process ends.

Nothing heavy is imported here: this module runs inside the web UI's process.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from . import deps, gpu_groups

log = logging.getLogger(__name__)

SCRIPTS_DIR = Path(__file__).resolve().parents[2]
ENV_WORKER_PYTHON = "DEFORUM_WAN_WORKER_PYTHON"
ISOLATE_ENV = "DEFORUM_WAN_ISOLATE"  # isolation.ENV (isolation.py is the worker's side)
EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130  # as in worker.py (not imported: it pulls in the renderer)
STDERR_LINES = 60
_RENDER_LIBS = ("'diffusers", "'transformers", "'accelerate", "'huggingface_hub", "'tokenizers", "'safetensors")
TERM_AFTER_SECONDS = 10.0  # after a cancel, SIGTERM follows the stop file when the worker is still running

EventCallback = Callable[[dict], None]


def _default_python() -> str:
    return os.environ.get(ENV_WORKER_PYTHON) or sys.executable


@dataclass(frozen=True)
class WorkerConfig:
    """How the worker process is started.

    `deps_dir`: None picks deps.deps_dir() when it holds a complete install for
    this Python, else no private folder (the worker then uses whatever the
    python has); "" means explicitly no private folder.
    """

    python: str = field(default_factory=_default_python)
    deps_dir: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    stop_grace_seconds: float = 30.0


@dataclass(frozen=True)
class WorkerOutcome:
    """How a worker run ended, with where its frames are, for the queue and the tab."""

    status: str  # "done" | "interrupted" | "failed" | "crashed"
    returncode: int | None
    folder: str | None
    timestring: str | None
    video: str | None
    frames_on_disk: int
    frames_total: int
    error: str | None
    last_event: dict | None


def resolve_deps_dir(config: WorkerConfig) -> str | None:
    """The private folder the worker will put first on its path, or None."""
    if config.deps_dir is not None:
        return config.deps_dir or None
    folder = deps.deps_dir()
    try:
        if folder.is_dir() and deps.deps_satisfied(folder):
            return str(folder)
    except Exception:  # a damaged manifest means: no private folder, never a failed job
        log.debug("checking %s failed", folder, exc_info=True)
    return None


def _is_site_dir(path: Path) -> bool:
    return path.name in ("site-packages", "dist-packages")


def isolation_config(private: str | None) -> dict | None:
    """What the worker may import besides the standard library: the private folder, this package and,
    when the folder's manifest says the worker reuses the host's torch, that torch and what it needs.

    None for a folder without a manifest (made by hand): it is only put first on the path.
    """
    if not private:
        return None
    manifest = deps.read_manifest(private)
    if manifest is None:
        return None
    trusted = [str(Path(private).resolve())] + ([] if _is_site_dir(SCRIPTS_DIR) else [str(SCRIPTS_DIR)])
    # deforum-wan itself, where it was installed with pip rather than run from the extension's folder
    return {"trusted": trusted, "allow": ["deforum-wan", *deps.worker_allowlist(manifest)]}


def worker_env(config: WorkerConfig | None = None) -> dict[str, str]:
    """Environment of a worker process: PYTHONPATH=<deps>:<scripts dir>:<inherited>, and its isolation."""
    config = config or WorkerConfig()
    env = {**os.environ, **{str(k): str(v) for k, v in config.env.items()}}
    parts: list[str] = []
    private = resolve_deps_dir(config)
    if private:
        parts.append(str(Path(private).resolve()))
    if not _is_site_dir(SCRIPTS_DIR):
        parts.append(str(SCRIPTS_DIR))
    inherited = env.get("PYTHONPATH")
    if inherited:
        parts.append(inherited)
    if parts:
        env["PYTHONPATH"] = os.pathsep.join(parts)
    isolation = isolation_config(private)
    if isolation is not None:
        env[ISOLATE_ENV] = json.dumps(isolation)
    else:
        env.pop(ISOLATE_ENV, None)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def worker_command(job_path: str | Path, config: WorkerConfig | None = None,
                   command: tuple[str, ...] = ("worker",)) -> tuple[list[str], dict[str, str]]:
    """argv and environment of the worker (or of another worker-side `command`, as the farm's driver) for
    `job_path` (`-s`: the user's own site-packages stay out too)."""
    config = config or WorkerConfig()
    return [config.python, "-s", "-m", "deforum_wan", *command, str(job_path)], worker_env(config)


def probe_worker(config: WorkerConfig | None = None, timeout: float = 300.0) -> dict:
    """The worker's own account of its environment (torch, libraries, devices), started exactly as a job's
    worker is; {"error": ...} when it cannot start or import its libraries."""
    config = config or WorkerConfig()
    private = resolve_deps_dir(config)
    argv, env = worker_command("--probe", replace(config, deps_dir=private or ""))
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env,
                              timeout=timeout, encoding="utf-8", errors="replace")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"cannot run the worker with {config.python}: {exc}", "deps_dir": private}
    for line in reversed(proc.stdout.splitlines()):
        event = _parse(line)
        if event and event.get("type") == "environment":
            return {**event, "deps_dir": private}
    tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:] or ["no output"]
    return {"error": f"the worker exited with code {proc.returncode}: {tail[0]}", "deps_dir": private}


# --------------------------------------------------------------------------- host model


def in_web_ui() -> bool:
    """True inside A1111 or Forge: their `modules.shared` is loaded long before any job runs."""
    return "modules.shared" in sys.modules


def unload_host_model() -> str | None:
    """Ask the host to free its SD checkpoint before the worker loads Wan; None when there was nothing to free
    or outside a web UI. Never raises, and never loads a checkpoint to unload it."""
    if not in_web_ui():
        return None
    try:
        mm = sys.modules.get("backend.memory_management")
        if mm is None and "modules_forge" in sys.modules:
            import importlib

            mm = importlib.import_module("backend.memory_management")
        if mm is not None and hasattr(mm, "unload_all_models"):
            mm.unload_all_models()
            if hasattr(mm, "soft_empty_cache"):
                mm.soft_empty_cache()
            return "Forge: unloaded all models"
        from modules import sd_models  # type: ignore[import-not-found]

        # Read the loaded model from model_data: `shared.sd_model` (which unload_model_weights() reads
        # when given nothing) loads a checkpoint when none is loaded yet.
        data = getattr(sd_models, "model_data", None)
        loaded = getattr(data, "sd_model", None) if data is not None else None
        if loaded is None:
            return None
        sd_models.unload_model_weights(loaded)
        devices = sys.modules.get("modules.devices")
        if devices is not None and hasattr(devices, "torch_gc"):
            devices.torch_gc()
        return "moved the SD checkpoint off the GPU"
    except Exception as exc:  # the render can still run; it may just have less memory
        log.warning("Deforum Wan: could not unload the web UI's model: %s", exc)
        return None


# --------------------------------------------------------------------------- running a job


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class _Tracker:
    """What the events said so far: folder, timestring, totals, the current clip, the error."""

    def __init__(self) -> None:
        self.folder: str | None = None
        self.timestring: str | None = None
        self.video: str | None = None
        self.frames_total = 0
        self.frames_written = 0
        self.clip: int | None = None
        self.clips: int | None = None
        self.final: dict | None = None  # done / interrupted / error
        self.last: dict | None = None

    def see(self, event: dict) -> None:
        kind = event.get("type")
        self.last = event
        if kind == "start":
            self.folder, self.timestring = event.get("folder"), event.get("timestring")
            self.frames_total = int(event.get("frames_total") or 0)
            self.frames_written = int(event.get("frames_on_disk") or 0)
            self.clips = event.get("clips")
        elif kind in ("clip", "step"):
            self.clip, self.clips = event.get("clip", self.clip), event.get("clips", self.clips)
        elif kind == "frames":
            self.frames_written = int(event.get("frames_written") or self.frames_written)
        elif kind in ("done", "interrupted", "error"):
            self.final = event
            self.folder = event.get("folder", self.folder)
            self.timestring = event.get("timestring", self.timestring)
            self.video = event.get("video", self.video)
            self.frames_total = int(event.get("frames_total") or self.frames_total)

    def frames_on_disk(self) -> int:
        if self.final and self.final.get("type") in ("done", "interrupted") and "frames_on_disk" in self.final:
            return int(self.final["frames_on_disk"])
        if self.folder and self.timestring:
            from ..renderer import outputs  # light: stdlib only at import

            try:
                return outputs.contiguous_frames(self.folder, self.timestring)
            except Exception:
                pass
        return self.frames_written

    def where(self) -> str:
        parts = []
        if self.clip is not None:
            parts.append(f"during clip {self.clip + 1}/{self.clips}" if self.clips else f"during clip {self.clip + 1}")
        elif self.folder is None:
            parts.append("before the render started")
        return " ".join(parts)


def _parse(line: str) -> dict | None:
    text = line.rstrip("\r\n")
    if not text.strip():
        return None
    if text.lstrip().startswith("{"):
        try:
            event = json.loads(text)
        except ValueError:
            event = None
        if isinstance(event, dict) and isinstance(event.get("type"), str):
            return event
    return {"type": "log", "message": text}


def run_job(
    job: dict,
    *,
    on_event: EventCallback,
    cancel: threading.Event | None = None,
    config: WorkerConfig | None = None,
    workdir: str | Path | None = None,
    command: tuple[str, ...] = ("worker",),
) -> WorkerOutcome:
    """Run one worker job (worker.job_to_dict's JSON) to its end; every event goes to `on_event`.

    The first event is the bridge's own {"type": "worker", "pid", "python",
    "deps_dir"}; then the worker's events, with non-JSON output lines as
    {"type": "log"}. Setting `cancel` creates the job's stop file (the worker
    stops between steps and keeps its frames), sends SIGTERM if it is still
    running after a few seconds, and kills it after `stop_grace_seconds`. If `on_event` raises, the worker is
    stopped and the exception propagates. `command`: another worker-side command in the same process
    environment (the farm's Ray driver, farm.py); it loads nothing here, so the host's model stays.
    """
    config = config or WorkerConfig()
    pinned = gpu_groups.pin_env(job.get("gpu_group"))  # a job of a GPU group sees only that group's GPUs
    if pinned:
        config = replace(config, env={**config.env, **pinned})
    own_dir = workdir is None
    folder = Path(tempfile.mkdtemp(prefix="deforum-wan-job-")) if own_dir else Path(workdir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:12]
    job = dict(job)
    stop_file = Path(job.get("stop_file") or folder / f"stop-{tag}")
    job["stop_file"] = str(stop_file)
    job_path = folder / f"job-{tag}.json"
    try:
        stop_file.unlink(missing_ok=True)
        job_path.write_text(json.dumps(job, ensure_ascii=False, default=str), encoding="utf-8")
        if cancel is not None and cancel.is_set():
            return WorkerOutcome("interrupted", None, None, None, None, 0, 0, "cancelled before it started", None)
        note = unload_host_model() if command == ("worker",) else None
        if note:
            on_event({"type": "status", "phase": "preparing", "message": note})
        return _run(job_path, stop_file, folder, on_event, cancel, config, command)
    finally:
        job_path.unlink(missing_ok=True)
        stop_file.unlink(missing_ok=True)
        if own_dir:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)


def _run(job_path: Path, stop_file: Path, cwd: Path, on_event: EventCallback, cancel: threading.Event | None,
         config: WorkerConfig, command: tuple[str, ...] = ("worker",)) -> WorkerOutcome:
    private = resolve_deps_dir(config)
    argv, env = worker_command(job_path, replace(config, deps_dir=private or ""), command)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env, cwd=str(cwd), text=True, encoding="utf-8", errors="replace", bufsize=1)
    except OSError as exc:
        return WorkerOutcome("crashed", None, None, None, None, 0, 0,
                             f"cannot start the worker with {config.python}: {exc}", None)
    stderr: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
    err_thread = threading.Thread(target=_drain, args=(proc.stderr, stderr), name="deforum-wan-stderr", daemon=True)
    err_thread.start()
    stopping = {"cancelled": False, "killed": False}
    done = threading.Event()
    watcher = None
    if cancel is not None:
        watcher = threading.Thread(target=_watch_cancel, args=(proc, cancel, done, stop_file, config, stopping),
                                   name="deforum-wan-cancel", daemon=True)
        watcher.start()
    tracker = _Tracker()
    try:
        on_event({"type": "worker", "pid": proc.pid, "python": config.python, "deps_dir": private})
        assert proc.stdout is not None
        for line in proc.stdout:
            event = _parse(line)
            if event is None:
                continue
            tracker.see(event)
            on_event(event)
        proc.wait()
    except BaseException:
        _stop_now(proc, stop_file, min(10.0, config.stop_grace_seconds))
        raise
    finally:
        done.set()
        if watcher is not None:
            watcher.join()
        err_thread.join(timeout=5)
    return _outcome(proc.returncode, tracker, list(stderr), stopping)


def _drain(stream: Any, keep: collections.deque) -> None:
    """Keep the last stderr lines (tracebacks, library warnings) without letting the pipe fill up."""
    for line in stream:
        line = line.rstrip()
        if line:
            keep.append(line)
            log.debug("worker: %s", line)


def _watch_cancel(proc: subprocess.Popen, cancel: threading.Event, done: threading.Event, stop_file: Path,
                  config: WorkerConfig, stopping: dict) -> None:
    """Stop file at once; SIGTERM only if that has not worked after a while; SIGKILL after the grace period.

    The stop file and SIGTERM stop the worker at the same place (between steps),
    so the signal is held back: it is only needed before the worker reads its job,
    and a signal that lands while the worker writes an event can wedge it.
    """
    while not done.is_set() and proc.poll() is None:
        if cancel.wait(0.2):
            break
    if done.is_set() or proc.poll() is not None:
        return
    stopping["cancelled"] = True
    try:
        stop_file.parent.mkdir(parents=True, exist_ok=True)
        stop_file.touch()
    except OSError:
        log.warning("could not create the stop file %s", stop_file)
    grace = max(0.0, config.stop_grace_seconds)
    term_after = min(TERM_AFTER_SECONDS, grace / 2)
    try:
        proc.wait(timeout=term_after)
        return
    except subprocess.TimeoutExpired:
        pass
    if os.name != "nt":  # on Windows terminate() is a hard kill: only the stop file is gentle there
        _signal(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=grace - term_after)
    except subprocess.TimeoutExpired:
        stopping["killed"] = True
        proc.kill()


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except (OSError, ValueError):
        pass


def _stop_now(proc: subprocess.Popen, stop_file: Path, grace: float) -> None:
    """The caller is going away: stop the worker at once rather than leave it holding the GPU."""
    if proc.poll() is not None:
        return
    try:
        stop_file.touch()
    except OSError:
        pass
    if os.name != "nt":
        _signal(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _outcome(rc: int | None, t: _Tracker, stderr: list[str], stopping: dict) -> WorkerOutcome:
    final = t.final or {}
    kind = final.get("type")
    status, error = "crashed", None
    if rc == EXIT_OK and kind == "done":
        status = "done"
    elif rc == EXIT_FAILED and kind == "error":
        status, error = "failed", str(final.get("message") or final.get("error_type") or "the render failed")
        if final.get("error_type") == "ModuleNotFoundError" and any(m in error for m in _RENDER_LIBS):
            error += f" (the renderer's libraries are missing: run {deps.install_command()})"
    elif kind == "interrupted" and rc in (EXIT_OK, EXIT_INTERRUPTED):
        status = "interrupted"
    elif stopping["cancelled"]:
        status = "interrupted"
        error = ("the worker did not stop within its grace period and was killed" if stopping["killed"]
                 else "stopped before it could report")
    else:
        error = _crash_message(rc, t, stderr)
    return WorkerOutcome(
        status=status, returncode=rc, folder=t.folder, timestring=t.timestring,
        video=t.video if status == "done" else None, frames_on_disk=t.frames_on_disk(),
        frames_total=t.frames_total, error=error, last_event=t.last,
    )


def _crash_message(rc: int | None, t: _Tracker, stderr: list[str]) -> str:
    if rc is not None and rc < 0:
        what = f"worker died (signal {-rc}, {_signal_name(-rc)})"
        if -rc == getattr(signal, "SIGKILL", 9):
            what += ", possibly out of memory"
    else:
        what = f"worker exited with code {rc} without a result"
    where = t.where()
    parts = [what + (f" {where}" if where else "")]
    if t.folder and t.timestring:
        parts.append(f"{t.frames_on_disk()}/{t.frames_total} frames kept in {t.folder}; resume with {t.timestring}")
    if stderr:
        parts.append(f"last output: {stderr[-1]}")
    return "; ".join(parts)


# --------------------------------------------------------------------------- host progress


class HostProgress:
    """Mirrors worker events into the web UI's `shared.state` and turns its Interrupt button into a cancel.

    Use as the job's event callback; as a context manager it also watches
    `state.interrupted` while the worker is silent (a model loading for minutes):

        with HostProgress(shared.state) as progress:
            outcome = run_job(job, on_event=progress, cancel=progress.cancel)
    """

    def __init__(self, state: Any, cancel: threading.Event | None = None, *, previews: bool = True,
                 poll_seconds: float = 0.5) -> None:
        self.state = state
        self.cancel = cancel if cancel is not None else threading.Event()
        self.previews = previews
        self.poll_seconds = poll_seconds
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> HostProgress:
        self._done.clear()
        self._thread = threading.Thread(target=self._poll, name="deforum-wan-interrupt", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()

    def _poll(self) -> None:
        while not self._done.wait(self.poll_seconds):
            self.check_interrupt()

    def check_interrupt(self) -> bool:
        """Set `cancel` when the host's Interrupt (or Forge's stop) was pressed."""
        state = self.state
        if getattr(state, "interrupted", False) or getattr(state, "stopping_generation", False):
            self.cancel.set()
        return self.cancel.is_set()

    def _set(self, name: str, value: Any) -> None:
        try:
            setattr(self.state, name, value)
        except Exception:
            log.debug("shared.state.%s cannot be set", name, exc_info=True)

    def __call__(self, event: dict) -> None:
        try:
            self._update(event)
        except Exception:  # progress display must never stop a render
            log.debug("progress update failed for %r", event, exc_info=True)
        self.check_interrupt()

    def _update(self, event: dict) -> None:
        kind = event.get("type")
        if kind == "start":
            self._set("job_count", max(1, int(event.get("clips") or 1)))
            self._set("job_no", 0)
            self._set("sampling_step", 0)
            self._set("textinfo", f"Wan: {event.get('clips')} clips, {event.get('frames_total')} frames "
                                  f"({event.get('frames_on_disk', 0)} already on disk)")
        elif kind == "clip":
            self._set("job_no", int(event.get("clip", 0)))
            self._set("sampling_step", 0)
            self._set("textinfo", f"Wan clip {int(event.get('clip', 0)) + 1}/{event.get('clips')} ({event.get('mode')})")
        elif kind == "step":
            self._set("job_no", int(event.get("clip", 0)))
            self._set("sampling_steps", int(event.get("steps") or 0))
            self._set("sampling_step", int(event.get("step") or 0))
            eta = event.get("eta_seconds")
            self._set("textinfo", f"Wan clip {int(event.get('clip', 0)) + 1}/{event.get('clips')}, step "
                                  f"{event.get('step')}/{event.get('steps')}, {event.get('frames_written')}/"
                                  f"{event.get('frames_total')} frames" + (f", ETA {_duration(eta)}" if eta else ""))
        elif kind == "frames":
            self._set("textinfo", f"Wan: {event.get('frames_written')}/{event.get('frames_total')} frames written")
            if self.previews and event.get("preview"):
                self._preview(str(event["preview"]))
        elif kind == "preview":  # while a clip denoises: the host's own live preview shows it too
            if self.previews and event.get("path"):
                self._preview(str(event["path"]))
        elif kind == "status":
            self._set("textinfo", f"Wan: {event.get('message') or event.get('phase')}")
        elif kind == "done":
            self._set("job_no", getattr(self.state, "job_count", 0))
            self._set("textinfo", f"Wan: done, {event.get('frames_on_disk')} frames")
        elif kind == "interrupted":
            self._set("textinfo", f"Wan: stopped at {event.get('frames_on_disk')}/{event.get('frames_total')} frames")
        elif kind == "error":
            self._set("textinfo", f"Wan: error: {event.get('message')}")

    def _preview(self, path: str) -> None:
        if not os.path.isfile(path):
            return
        from PIL import Image  # the host has pillow loaded already

        with Image.open(path) as im:
            image = im.convert("RGB")
        assign = getattr(self.state, "assign_current_image", None)
        if callable(assign):
            assign(image)
        else:
            self._set("current_image", image)


def state_updater(state: Any, cancel: threading.Event | None = None) -> HostProgress:
    """An on_event callback that mirrors events into `state` (a HostProgress)."""
    return HostProgress(state, cancel)


def _duration(seconds: Any) -> str:
    try:
        s = int(round(float(seconds)))
    except (TypeError, ValueError):
        return "?"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
