"""A render farm on Ray: the API host's queue hands each job to a Ray cluster, machines of the cluster render it.

Nothing of the queue changes: `FarmRunner` is the queue's runner (in place of
bridge.run_job on this machine), so jobs keep the same records and states
(QUEUED, PREPARING, GENERATING, ..., RETRYABLE, CANCELLED), cancel and resume.
On the farm machine a Ray task runs the job exactly as this machine would,
through bridge.run_job: the worker process with its private libraries, events
streamed back as they come (a Ray streaming generator). Frames go to the job's
output folder, which every machine must mount at the same path (a shared folder):
that is what lets a job resume on another machine from the frames already there.

- Cancel: the API host creates a stop request in the shared folder
  (`<outdir>/.deforum-wan-farm/`); the task sees it and stops the worker as the
  local queue does (between steps, frames kept). A job still waiting for a machine
  is cancelled in Ray.
- A farm machine that dies mid-job (Ray reports NodeDiedError or WorkerCrashedError)
  leaves the job FAILED/RETRYABLE with its frames on disk; retry resumes it on any machine.
  Ray never retries a task by itself (max_retries=0): a job must not run twice at once.

`ray` is imported only when a farm runner connects (pip install "deforum-wan[farm]").
"""
from __future__ import annotations

import logging
import os
import queue as queue_module
import socket
import threading
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from . import bridge

log = logging.getLogger(__name__)

ENV_ADDRESS = "DEFORUM_WAN_FARM"  # the Ray cluster's address: "auto" (a node of it runs here) or "HEAD:6379"
ENV_GPUS = "DEFORUM_WAN_FARM_GPUS"  # GPUs per job (default 1)
ENV_SLOTS = "DEFORUM_WAN_FARM_SLOTS"  # jobs at once (default: as many as the cluster's resources allow)
NAMESPACE = "deforum-wan"
STOP_DIR = ".deforum-wan-farm"  # stop requests, inside the shared output folder
STOP_POLL_SECONDS = 0.5
HANDOUTS = 3  # tries to hand a job to a machine when the one Ray chose is gone before it starts


@dataclass(frozen=True)
class FarmConfig:
    """Where the cluster is and what one job takes of it.

    `num_gpus`: GPUs per job (Ray pins the task, and so its worker process, to them
    through CUDA_VISIBLE_DEVICES). `resources`: custom Ray resources per job, e.g.
    `{"deforum_wan": 1}` when only machines started with that resource may render.
    `deps_dir`, `python`: the worker on the farm machine, as WorkerConfig (None: that
    machine's own default: its private folder when complete, the Ray worker's python).
    """

    address: str = "auto"
    num_gpus: float = 1.0
    num_cpus: float = 1.0
    resources: Mapping[str, float] = field(default_factory=dict)
    deps_dir: str | None = None
    python: str | None = None

    def __post_init__(self) -> None:
        for name in ("num_gpus", "num_cpus"):
            if getattr(self, name) < 0:
                raise ValueError(f"farm {name}: must be 0 or more, got {getattr(self, name)}")
        for key, amount in self.resources.items():
            if not isinstance(key, str) or not isinstance(amount, (int, float)) or amount <= 0:
                raise ValueError(f"farm resources: {key!r} must name a Ray resource with an amount above 0")

    def needs(self) -> dict[str, float]:
        """One job's share of the cluster, by Ray resource name."""
        wanted = {"GPU": self.num_gpus, "CPU": self.num_cpus, **self.resources}
        return {k: float(v) for k, v in wanted.items() if v > 0}


def config_from_env(environ: Mapping[str, str] | None = None) -> FarmConfig | None:
    """The farm $DEFORUM_WAN_FARM names, or None when it is not set (renders stay on this machine)."""
    env = os.environ if environ is None else environ
    address = (env.get(ENV_ADDRESS) or "").strip()
    if not address:
        return None
    gpus = env.get(ENV_GPUS, "1")
    try:
        num_gpus = float(gpus)
    except ValueError:
        raise ValueError(f"{ENV_GPUS}: expected a number of GPUs per job, got {gpus!r}") from None
    return FarmConfig(address=address, num_gpus=num_gpus)


def slots_for(cluster: Mapping[str, float], needs: Mapping[str, float]) -> int:
    """How many jobs the cluster's resources hold at once (0 when it lacks one of them)."""
    if not needs:
        raise ValueError("farm: a job must need some resource, or Ray would run every job at once")
    return int(min(cluster.get(name, 0.0) // amount for name, amount in needs.items()))


# --------------------------------------------------------------------------- on the farm machine


def farm_task(job: dict, stop_request: str, worker: dict) -> Iterator[dict]:
    """The Ray task: run `job` with bridge.run_job on this machine, yielding its events, then its outcome.

    First a {"type": "farm"} event says which machine took it; the last is
    {"type": "outcome", ...} (a bridge.WorkerOutcome). `stop_request` appearing
    (the API host's cancel) stops the worker as a local cancel does.
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


# --------------------------------------------------------------------------- on the API host


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """Fail at once, naming the address, when nothing listens at HOST:PORT (ray.init would wait minutes)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # "auto" and ray:// addresses: Ray says itself what is wrong
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise RuntimeError(f"{ENV_ADDRESS}={address}: no Ray head answers there ({exc}); start one with "
                           f"`ray start --head --port {port}` on that machine") from exc


class FarmRunner:
    """The queue's runner for a Ray cluster: `runner(job, on_event=..., cancel=...)` -> outcome, as bridge.run_job."""

    def __init__(self, config: FarmConfig | None = None) -> None:
        self.config = config or FarmConfig()
        self._lock = threading.Lock()
        self._remote: Any = None

    def connect(self) -> Any:
        """Join the cluster (once); returns the `ray` module."""
        with self._lock:
            try:
                import ray
            except ImportError as exc:
                raise RuntimeError(f'the render farm needs Ray: pip install "deforum-wan[farm]" ({exc})') from exc
            if not ray.is_initialized():
                _check_reachable(self.config.address)
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
        """Jobs the cluster can render at once ($DEFORUM_WAN_FARM_SLOTS, else from its resources); at least 1."""
        chosen = os.environ.get(ENV_SLOTS, "").strip()
        if chosen:
            if not chosen.isdigit() or int(chosen) < 1:
                raise ValueError(f"{ENV_SLOTS}: expected a number of jobs (1 or more), got {chosen!r}")
            return int(chosen)
        ray = self.connect()
        found = slots_for(ray.cluster_resources(), self.config.needs())
        if found < 1:
            raise RuntimeError(f"the Ray cluster at {self.config.address} has no machine with "
                               f"{self.config.needs()} for a job; start workers with those resources")
        return found

    def __call__(self, job: dict, *, on_event: Callable[[dict], None], cancel: threading.Event | None = None,
                 config: Any = None) -> dict:
        ray = self.connect()
        stop_dir = Path(job["outdir"]).expanduser() / STOP_DIR
        stop_dir.mkdir(parents=True, exist_ok=True)
        stop_request = stop_dir / f"stop-{uuid.uuid4().hex[:12]}"
        tracker = bridge._Tracker()  # folder, timestring and frames, from the events (the folder is shared)
        on_event({"type": "status", "phase": "preparing", "message": "waiting for a farm machine"})
        try:
            for handout in range(1, HANDOUTS + 1):
                outcome = self._handout(ray, job, on_event, cancel, tracker, stop_request)
                if outcome is None and cancel is not None and cancel.is_set():
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

    def _handout(self, ray: Any, job: dict, on_event: Callable[[dict], None], cancel: threading.Event | None,
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
                    return event
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
    def _watch_cancel(ray: Any, generator: Any, cancel: threading.Event | None, taken: threading.Event,
                      done: threading.Event, stop_request: Path) -> None:
        """A cancel before a machine took the job cancels it in Ray; after, the stop request (renewed every
        second, so a task that is just starting cannot miss it) stops the worker between steps."""
        if cancel is None:
            return
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


def farm_queue_options(config: FarmConfig) -> dict[str, Any]:
    """`runner` and `slots` for a JobQueue whose jobs render on the farm.

    Joins the cluster now: a wrong address fails at start, and Ray's own exit hook is
    registered before the queue's, so at exit the queue stops its jobs (they resume
    on the next start) while it can still reach them.
    """
    runner = FarmRunner(config)
    runner.connect()
    return {"runner": runner, "slots": (None,) * runner.slots()}
