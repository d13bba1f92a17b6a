"""A render farm on Ray: the API host's queue hands each job to a Ray cluster, machines of the cluster render it.

Nothing of the queue changes: `FarmRunner` is the queue's runner (in place of
bridge.run_job on this machine), so jobs keep the same records and states
(QUEUED, PREPARING, GENERATING, ..., RETRYABLE, CANCELLED), cancel and resume.

This module runs in the web UI's process and never imports Ray (Ray brings its
own protobuf; A1111 and Forge pin 3.20.0). Each job's Ray driver is a process
of its own, `deforum-wan farm-job` (farmdriver.py), started by bridge.run_job
exactly as a local worker: the host's python, the private library folder (with
Ray in it, deps.py) first on its path, events as JSON lines, the stop file and
signals for cancel, exit codes. On the farm machine a Ray task runs the job as
this machine would, through bridge.run_job. Frames go to the job's output
folder, which every machine must mount at the same path (a shared folder): that
is what lets a job resume on another machine from the frames already there.

- Cancel: the driver creates a stop request in the shared folder
  (`<outdir>/.deforum-wan-farm/`); the task sees it and stops the worker as the
  local queue does (between steps, frames kept). A job still waiting for a machine
  is cancelled in Ray.
- A farm machine that dies mid-job (Ray reports NodeDiedError or WorkerCrashedError)
  leaves the job FAILED/RETRYABLE with its frames on disk; retry resumes it on any machine.
  Ray never retries a task by itself (max_retries=0): a job must not run twice at once.
"""
from __future__ import annotations

import os
import socket
import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

from . import bridge

ENV_ADDRESS = "DEFORUM_WAN_FARM"  # the Ray cluster's address: "auto" (a node of it runs here) or "HEAD:6379"
ENV_GPUS = "DEFORUM_WAN_FARM_GPUS"  # GPUs per job (default 1)
ENV_SLOTS = "DEFORUM_WAN_FARM_SLOTS"  # jobs at once (default: as many as the cluster's resources allow)
NAMESPACE = "deforum-wan"
STOP_DIR = ".deforum-wan-farm"  # stop requests, inside the shared output folder
STOP_POLL_SECONDS = 0.5
HANDOUTS = 3  # tries to hand a job to a machine when the one Ray chose is gone before it starts
DRIVER_COMMAND = ("farm-job",)
DRIVER_GRACE_SECONDS = 90.0  # after a cancel: the farm machine's worker gets 30 s to stop, plus the network
PROBE_TIMEOUT_SECONDS = 300.0


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


# --------------------------------------------------------------------------- on the API host


def check_reachable(address: str, timeout: float = 10.0) -> None:
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
    """The queue's runner for a Ray cluster: `runner(job, on_event=..., cancel=...)` -> outcome, as bridge.run_job.

    `driver`: how the driver process starts (a bridge.WorkerConfig; default: as a local worker).
    """

    def __init__(self, config: FarmConfig | None = None, driver: bridge.WorkerConfig | None = None) -> None:
        self.config = config or FarmConfig()
        self.driver = driver or bridge.WorkerConfig(stop_grace_seconds=DRIVER_GRACE_SECONDS)

    def _driver_job(self, job: dict | None) -> dict:
        return {"farm": {**asdict(self.config), "resources": dict(self.config.resources)}, "job": job}

    def slots(self) -> int:
        """Jobs the cluster can render at once ($DEFORUM_WAN_FARM_SLOTS, else from its resources); at least 1.

        Asks a driver process either way: a cluster it cannot join fails here, naming the address.
        """
        check_reachable(self.config.address)
        found: dict = {}
        cancel = threading.Event()
        timer = threading.Timer(PROBE_TIMEOUT_SECONDS, cancel.set)
        timer.start()
        try:
            outcome = bridge.run_job(self._driver_job(None), on_event=lambda e: found.update(e), cancel=cancel,
                                     config=self.driver, command=(*DRIVER_COMMAND, "--slots"))
        finally:
            timer.cancel()
        if found.get("type") != "farm_cluster":
            raise RuntimeError(f"{ENV_ADDRESS}={self.config.address}: {outcome.error or 'no answer from the cluster'}")
        chosen = os.environ.get(ENV_SLOTS, "").strip()
        if chosen:
            if not chosen.isdigit() or int(chosen) < 1:
                raise ValueError(f"{ENV_SLOTS}: expected a number of jobs (1 or more), got {chosen!r}")
            return int(chosen)
        if int(found["slots"]) < 1:
            raise RuntimeError(f"the Ray cluster at {self.config.address} has no machine with "
                               f"{self.config.needs()} for a job; start workers with those resources")
        return int(found["slots"])

    def __call__(self, job: dict, *, on_event: Callable[[dict], None], cancel: threading.Event | None = None,
                 config: Any = None) -> dict:
        verdict: dict = {}

        def relay(event: dict) -> None:
            kind = event.get("type")
            if kind == "outcome":  # the driver's verdict on the farm task
                verdict.update({k: v for k, v in event.items() if k != "type"})
            elif kind != "worker":  # the driver's own pid: the farm machine's worker reports its own
                on_event(event)

        ended = bridge.run_job(self._driver_job(job), on_event=relay, cancel=cancel, config=self.driver,
                               command=DRIVER_COMMAND)
        if verdict:
            return verdict
        # The driver itself failed (no Ray, the cluster gone) or died: the bridge's account of it.
        outcome = asdict(ended)
        outcome["error"] = f"the farm driver: {ended.error}" if ended.error else ended.error
        return outcome


def farm_queue_options(config: FarmConfig) -> dict[str, Any]:
    """`runner` and `slots` for a JobQueue whose jobs render on the farm; a cluster it cannot join fails now."""
    runner = FarmRunner(config)
    return {"runner": runner, "slots": (None,) * runner.slots()}
