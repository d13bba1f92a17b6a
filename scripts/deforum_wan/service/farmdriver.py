"""`deforum-wan farm-job JOB.json`: the Ray driver of one farm job, in a process of its own.

The web UI's process never imports Ray: Ray brings its own protobuf (and more),
and A1111 and Forge pin protobuf 3.20.0. So the queue's FarmRunner (farm.py)
starts this process exactly as a local worker (bridge.run_job: the host's python,
the private library folder first on its path, Ray installed there), and this
process joins the cluster, hands the job to a Ray task and prints the task's
events as JSON lines, then {"type": "outcome", ...}. The job's stop file,
SIGTERM, SIGINT or the web UI's process going away cancel the job as before
(the shared-folder stop request, or ray.cancel while no machine has taken it).

`farm_task` is the Ray task itself: on the farm machine it runs the job with
bridge.run_job, with that machine's worker and private folder.
"""
from __future__ import annotations

import json
import logging
import os
import queue as queue_module
import signal
import socket
import sys
import threading
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

from . import bridge
from .farm import ENV_ADDRESS, HANDOUTS, NAMESPACE, STOP_DIR, STOP_POLL_SECONDS, FarmConfig, check_reachable, slots_for

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130  # as the worker's: the bridge reads them the same way


# --------------------------------------------------------------------------- on the farm machine


def farm_task(job: dict, stop_request: str, worker: dict) -> Iterator[dict]:
    """The Ray task: run `job` with bridge.run_job on this machine, yielding its events, then its outcome.

    First a {"type": "farm"} event says which machine took it; the last is
    {"type": "outcome", ...} (a bridge.WorkerOutcome). `stop_request` appearing
    (the driver's cancel) stops the worker as a local cancel does.
    """
    import ray

    node = ray.get_runtime_context().get_node_id()
    host = socket.gethostname()
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    if gpu_ids:  # the GPUs Ray gave this task: the worker is pinned to them, and may split a clip across them
        job = {**job, "gpu_group": ",".join(gpu_ids)}
    yield {"type": "farm", "node": node, "host": host, "pid": os.getpid()}
    events: queue_module.Queue[dict] = queue_module.Queue()
    cancel = threading.Event()
    finished = threading.Event()

    def watch_stop() -> None:
        while not finished.is_set():
            if os.path.exists(stop_request):
                cancel.set()
                return
            finished.wait(STOP_POLL_SECONDS)

    def run() -> None:
        try:
            config = bridge.WorkerConfig(**{k: v for k, v in worker.items() if v is not None})
            outcome = bridge.run_job(job, on_event=events.put, cancel=cancel, config=config)
            events.put({"type": "outcome", **asdict(outcome)})
        except Exception as exc:  # the outcome is the task's last word, whatever happens
            events.put({"type": "outcome", "status": "crashed", "error": f"on {host}: {type(exc).__name__}: {exc}"})
        finally:
            finished.set()

    threading.Thread(target=watch_stop, name="deforum-wan-farm-stop", daemon=True).start()
    threading.Thread(target=run, name="deforum-wan-farm-job", daemon=True).start()
    try:
        while True:
            event = events.get()
            if event.get("type") == "environment":
                event = {**event, "host": host, "farm_node": node}
            yield event
            if event.get("type") == "outcome":
                return
    except BaseException:  # cancelled in Ray while it ran: stop the worker before this task ends
        cancel.set()
        finished.wait(bridge.WorkerConfig().stop_grace_seconds + 15)
        raise


# --------------------------------------------------------------------------- the driver


class FarmDriver:
    """Joins the cluster and runs one job on it: `run(job, on_event, cancel)` -> outcome dict."""

    def __init__(self, config: FarmConfig) -> None:
        self.config = config
        self._remote: Any = None

    def connect(self) -> Any:
        """Join the cluster; returns the `ray` module."""
        try:
            import ray
        except ImportError as exc:
            raise RuntimeError(f"the render farm needs Ray in the renderer's libraries: run "
                               f"`deforum-wan install-deps --farm` (or pip install \"deforum-wan[farm]\") ({exc})") from exc
        if not ray.is_initialized():
            check_reachable(self.config.address)
            try:
                ray.init(address=self.config.address, namespace=NAMESPACE, log_to_driver=False,
                         configure_logging=False)
            except Exception as exc:
                raise RuntimeError(f"{ENV_ADDRESS}={self.config.address}: cannot join the Ray cluster: "
                                   f"{type(exc).__name__}: {exc}") from exc
        if self._remote is None:
            self._remote = ray.remote(farm_task)
        return ray

    def slots(self) -> int:
        """Jobs the cluster's resources hold at once (0 when no machine has what a job needs)."""
        return slots_for(self.connect().cluster_resources(), self.config.needs())

    def run(self, job: dict, on_event: Callable[[dict], None], cancel: threading.Event) -> dict:
        ray = self.connect()
        stop_dir = Path(job["outdir"]).expanduser() / STOP_DIR
        stop_dir.mkdir(parents=True, exist_ok=True)
        stop_request = stop_dir / f"stop-{uuid.uuid4().hex[:12]}"
        tracker = bridge._Tracker()  # folder, timestring and frames, from the events (the folder is shared)
        on_event({"type": "status", "phase": "preparing", "message": "waiting for a farm machine"})
        outcome = None
        try:
            for handout in range(1, HANDOUTS + 1):
                outcome = self._handout(ray, job, on_event, cancel, tracker, stop_request)
                if outcome is None and cancel.is_set():
                    outcome = {"status": "interrupted", "error": "cancelled before a farm machine took it"}
                if outcome is not None:
                    break
                # Lost before any machine took it (the machine Ray chose had just died): nothing ran, so
                # handing it out again cannot render it twice.
                on_event({"type": "warning", "message": f"the farm machine chosen for the job went away before it "
                                                        f"started; handing it out again ({handout}/{HANDOUTS})"})
        finally:
            stop_request.unlink(missing_ok=True)
        if outcome is None:
            outcome = {"status": "crashed", "error": f"no farm machine took the job in {HANDOUTS} tries"}
        for name, value in (("folder", tracker.folder), ("timestring", tracker.timestring),
                            ("frames_total", tracker.frames_total)):
            if not outcome.get(name) and value:
                outcome[name] = value
        if "frames_on_disk" not in outcome and tracker.folder:
            outcome["frames_on_disk"] = tracker.frames_on_disk()
        return outcome

    def _handout(self, ray: Any, job: dict, on_event: Callable[[dict], None], cancel: threading.Event,
                 tracker: Any, stop_request: Path) -> dict | None:
        """One Ray task for the job, streamed to its end: the outcome, or None when it was lost before a
        machine took it."""
        from ray.exceptions import RayError, TaskCancelledError

        options: dict[str, Any] = {"num_cpus": self.config.num_cpus, "num_gpus": self.config.num_gpus,
                                   "max_retries": 0, "retry_exceptions": False, "name": "deforum-wan-render"}
        if self.config.resources:
            options["resources"] = dict(self.config.resources)
        worker = {"deps_dir": self.config.deps_dir, "python": self.config.python}
        taken, done = threading.Event(), threading.Event()
        generator = self._remote.options(**options).remote(job, str(stop_request), worker)
        watcher = threading.Thread(target=self._watch_cancel, args=(ray, generator, cancel, taken, done, stop_request),
                                   name="deforum-wan-farm-cancel", daemon=True)
        watcher.start()
        try:
            for ref in generator:
                event = ray.get(ref)
                kind = event.get("type")
                if kind == "outcome":
                    return {k: v for k, v in event.items() if k != "type"}
                if kind == "farm":
                    taken.set()
                    on_event(event)
                    on_event({"type": "status", "phase": "preparing", "message": f"rendering on {event.get('host')}"})
                    continue
                tracker.see(event)
                on_event(event)
        except TaskCancelledError:
            return {"status": "interrupted", "error": "cancelled before a farm machine took it"}
        except RayError as exc:
            if not taken.is_set():
                log.warning("deforum-wan: a farm task was lost before it started: %s", exc)
                return None
            first = (str(exc).strip().splitlines() or [""])[0]
            outcome = {"status": "crashed", "error": f"the farm machine stopped during the render "
                                                     f"({type(exc).__name__}: {first})"}
            where = tracker.where()
            if tracker.folder and tracker.timestring:
                outcome["error"] += (f"{' ' + where if where else ''}; {tracker.frames_on_disk()}/"
                                     f"{tracker.frames_total} frames kept in {tracker.folder}; retry to resume")
            return outcome
        finally:
            done.set()
            watcher.join(timeout=10)
        return {"status": "crashed", "error": "the farm task ended without a result"}

    @staticmethod
    def _watch_cancel(ray: Any, generator: Any, cancel: threading.Event, taken: threading.Event,
                      done: threading.Event, stop_request: Path) -> None:
        """A cancel before a machine took the job cancels it in Ray; after, the stop request (renewed every
        second, so a task that is just starting cannot miss it) stops the worker between steps."""
        while not done.is_set():
            if cancel.wait(0.2):
                break
        if not done.is_set() and not taken.is_set():
            try:
                ray.cancel(generator)
            except Exception:  # it may have started meanwhile: the stop request covers that
                log.debug("ray.cancel failed", exc_info=True)
        while not done.is_set():
            try:
                stop_request.touch()
            except OSError:
                log.warning("cannot create the farm stop request %s", stop_request)
            done.wait(1.0)


# --------------------------------------------------------------------------- the process


def _event_stream() -> TextIO:
    """stdout for events alone: whatever Ray or a library prints goes to stderr instead."""
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", buffering=1)
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return out


def _watch_stop(stop_file: str | None, parent: int, cancel: threading.Event) -> None:
    """The bridge's stop file, or the process that started this one going away, cancels the job."""
    while not cancel.is_set():
        if (stop_file and os.path.exists(stop_file)) or os.getppid() != parent:
            cancel.set()
            return
        cancel.wait(STOP_POLL_SECONDS)


def run_driver(job_path: str, *, slots_only: bool = False, out: TextIO | None = None) -> int:
    """Run the job file's farm job (or, with `slots_only`, report the cluster's slots); returns an exit code.

    The file holds {"farm": FarmConfig fields, "job": the worker job, "stop_file": ...}.
    """
    out = out or _event_stream()
    lock = threading.Lock()
    cancel = threading.Event()

    def emit(event: dict) -> None:
        with lock:
            try:
                out.write(json.dumps(event, ensure_ascii=False, default=str) + "\n")
                out.flush()
            except (BrokenPipeError, ValueError):  # the web UI is gone: still see the farm task stopped
                cancel.set()

    try:
        data = json.loads(Path(job_path).read_text(encoding="utf-8"))
        driver = FarmDriver(FarmConfig(**data["farm"]))
        driver.connect()
        for sig in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which sets a SIGTERM handler of its own
            signal.signal(sig, lambda signum, frame: cancel.set())
        if slots_only:
            emit({"type": "farm_cluster", "address": driver.config.address, "slots": driver.slots()})
            return EXIT_OK
        threading.Thread(target=_watch_stop, args=(data.get("stop_file"), os.getppid(), cancel),
                         name="deforum-wan-farm-stopfile", daemon=True).start()
        outcome = driver.run(data["job"], emit, cancel)
    except Exception as exc:  # the error event is the driver's last word, as a worker's
        emit({"type": "error", "error_type": type(exc).__name__, "message": str(exc) or type(exc).__name__})
        return EXIT_FAILED
    emit({"type": "outcome", **outcome})
    status = outcome.get("status")
    return EXIT_OK if status == "done" else EXIT_INTERRUPTED if status == "interrupted" else EXIT_FAILED
