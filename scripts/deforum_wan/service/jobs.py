"""One persistent render queue shared by the Wan tab and the txt2vid API.

Renders are long and the web UI gets restarted, so the queue lives in a SQLite
file: a restart finds queued jobs still queued, and a job that was running when
the process stopped is marked RETRYABLE and continues from the frames already on
disk (its worker job is re-run with `"resume": <timestring>`). One job renders
at a time per slot, each slot on its own runner thread: by default one slot,
because one GPU holds one Wan model; with GPU groups (gpu_groups.py,
`DEFORUM_WAN_GPUS=0,1;2,3`) one slot per group, each job pinned to its group.

Records, worker jobs and what events and failures mean are in jobdata.py; they
use Deforum's API vocabulary, so Deforum's API clients can poll our jobs unchanged.

This module runs inside the web UI process: it imports nothing heavy. The
renderer runs in a worker process started by `bridge.run_job` (injectable).
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import secrets
import socket
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..core.specs import DEFAULT_KIND_ORDER
from . import gpu_groups
from .jobdata import (  # noqa: F401 - re-exported: jobs.SUCCEEDED, jobs.build_job, ...
    ACCEPTED, CANCELLED, DONE, ENHANCE_OVERRIDES, FAILED, GENERATING, JOB_OVERRIDES, NONE,
    OVERRIDE_KEYS, PLAN_OVERRIDES, POST_PROCESSING, PREPARING, QUEUED, RETRYABLE, SUCCEEDED, TERMINAL, JobRecord,
    asdict_row, build_job, event_values, failure_type, record_from_row, resume_message, retry_refusal,
)

log = logging.getLogger(__name__)

Runner = Callable[..., Any]
Subscriber = Callable[["JobRecord", "dict | None"], None]

_SCHEMA_VERSION = 4  # 2: the worker's environment per job; 3: which process runs a job; 4: on which GPUs
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    batch_id TEXT NOT NULL,
    status TEXT NOT NULL,
    phase TEXT NOT NULL,
    phase_progress REAL NOT NULL DEFAULT 0,
    error_type TEXT NOT NULL DEFAULT 'NONE',
    message TEXT,
    outdir TEXT,
    timestring TEXT,
    video TEXT,
    preview TEXT,
    frames_written INTEGER NOT NULL DEFAULT 0,
    frames_total INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    updated_at REAL NOT NULL,
    run_seconds REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    warnings TEXT NOT NULL DEFAULT '[]',
    job TEXT NOT NULL,
    overrides TEXT NOT NULL DEFAULT '{}',
    worker TEXT,
    owner TEXT,
    gpus TEXT
);
CREATE INDEX IF NOT EXISTS jobs_batch ON jobs (batch_id);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, phase);
"""


def _default_runner() -> Runner:
    from .bridge import run_job  # imported lazily: the bridge is built separately and needs no torch either

    return run_job


def _get(outcome: Any, name: str, default: Any = None) -> Any:
    if isinstance(outcome, Mapping):
        return outcome.get(name, default)
    return getattr(outcome, name, default)


_OPEN_OWNERS: set[str] = set()  # the queues of this process that are open


def owner_alive(owner: str | None) -> bool:
    """Whether the process that claimed a job (`host:pid:token`) still runs; a job of another machine counts as alive."""
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname():
        return True
    if not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return owner in _OPEN_OWNERS  # another queue of this process, still open
    from .installing import pid_alive

    return pid_alive(int(pid))


class JobQueue:
    """A persistent FIFO of render jobs with one runner thread per slot.

    `slots`: one entry per job that may run at once, each the GPU ids its jobs are
    pinned to (`"0,1"`) or None (not pinned); default: the configured GPU groups
    (gpu_groups.configured_groups: one unpinned slot unless DEFORUM_WAN_GPUS says).

    `runner(job, on_event=..., cancel=..., config=...)` renders one worker job and
    returns an outcome with `status` done/interrupted/failed/crashed (see
    bridge.WorkerOutcome); tests inject their own.
    """

    def __init__(self, db_path: str | os.PathLike[str], *, runner: Runner | None = None, config: Any = None,
                 outdir: str | os.PathLike[str] = "outputs", models_dir: str | os.PathLike[str] | None = None,
                 default_model: str | None = None, slots: Sequence[str | None] | None = None):
        self.slots = tuple(slots) if slots is not None else gpu_groups.configured_groups()
        if not self.slots:
            raise ValueError("slots: a queue needs at least one")
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._runner = runner
        self.config = config
        self.outdir = str(Path(outdir).expanduser().resolve())
        self.models_dir = str(Path(models_dir).expanduser()) if models_dir else None
        self.default_model = default_model
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(self.db_path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        columns = {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for column in ("worker", "owner", "gpus"):  # a queue file from before versions 2, 3 and 4
            if column not in columns:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {column} TEXT")
        # Two web UIs (or two instances of one) can share a queue file: a job is claimed by one process,
        # atomically, and only a job whose process is gone is taken back at start.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        _OPEN_OWNERS.add(self.owner)
        self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        self._subscribers: list[Subscriber] = []
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._current: dict[str, threading.Event] = {}  # running job id -> its cancel event
        self._closed = False
        self._recover()

    # ------------------------------------------------------------ lifecycle

    def _recover(self) -> None:
        """Jobs a process that is gone left running go back to the queue, to resume from their frames.

        A job another live process is rendering (a second web UI on the same queue file) is left to it.
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT id, frames_written, timestring, owner FROM jobs WHERE status=? AND phase!=?",
                (ACCEPTED, QUEUED)).fetchall()
            for row in rows:
                if owner_alive(row["owner"]):
                    continue
                self._update(row["id"], phase=QUEUED, error_type=RETRYABLE, owner=None,
                             message=resume_message("the web UI stopped during the render", row))

    def start(self) -> "JobQueue":
        """Start one runner thread per slot (idempotent)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("this job queue is closed")
            if not any(t.is_alive() for t in self._threads):
                self._stopping.clear()
                self._threads = [threading.Thread(target=self._loop, args=(slot,), name=f"deforum-wan-jobs-{i}",
                                                  daemon=True) for i, slot in enumerate(self.slots)]
                for thread in self._threads:
                    thread.start()
        return self

    def close(self, timeout: float | None = 60.0) -> None:
        """Stop the runners; running jobs are stopped and stay queued to resume on the next start."""
        with self._lock:
            if self._closed:
                return
            self._stopping.set()
            cancels = list(self._current.values())
        for cancel in cancels:
            cancel.set()
        self._wake.set()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("deforum-wan: a running job did not stop within %ss; it resumes on the next start", timeout)
        with self._lock:
            self._closed = True
            _OPEN_OWNERS.discard(self.owner)
            if not any(t.is_alive() for t in self._threads):
                self._db.close()

    # ------------------------------------------------------------ reading

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return record_from_row(row) if row else None

    def list(self) -> list[JobRecord]:
        """Every job, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs ORDER BY seq").fetchall()
        return [record_from_row(r) for r in rows]

    def batch(self, batch_id: str) -> list[JobRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs WHERE batch_id=? ORDER BY seq", (batch_id,)).fetchall()
        return [record_from_row(r) for r in rows]

    def batches(self) -> dict[str, list[str]]:
        """batch_id -> job ids, oldest batch first."""
        out: dict[str, list[str]] = {}
        with self._lock:
            for row in self._db.execute("SELECT batch_id, id FROM jobs ORDER BY seq"):
                out.setdefault(row["batch_id"], []).append(row["id"])
        return out

    def running(self) -> JobRecord | None:
        """The oldest running job of this queue, or None (`running_jobs` lists all of them)."""
        jobs = self.running_jobs()
        return jobs[0] if jobs else None

    def running_jobs(self) -> list[JobRecord]:
        """Every job this queue's runners are rendering now, oldest first."""
        with self._lock:
            ids = list(self._current)
        records = [r for r in (self.get(i) for i in ids) if r is not None]
        return sorted(records, key=lambda r: r.seq)

    # ------------------------------------------------------------ writing

    def resolve_model(self, model: str | None = None) -> str:
        """The model a job uses: the override, the queue default, else the best model found in models_dir."""
        if model:
            return model
        if self.default_model:
            return self.default_model
        if self.models_dir:
            from ..renderer.models import discover_models

            infos = discover_models(self.models_dir)
            for kind in DEFAULT_KIND_ORDER:
                for info in infos:
                    if info.kind == kind:
                        return str(info.path)
        raise ValueError(f"no Wan model found in {self.models_dir or 'the models folder'}; "
                         "download one or name it in options_overrides.model")

    def submit(self, settings_list: Sequence[Mapping[str, Any]], options_overrides: Mapping[str, Any] | None = None,
               ) -> tuple[str, list[str]]:
        """Queue one job per (already validated) settings object; returns (batch_id, job_ids)."""
        if not settings_list:
            raise ValueError("deforum_settings: no settings given")
        overrides = dict(options_overrides or {})
        model = self.resolve_model(overrides.get("model"))
        batch_id = f"batch-{uuid.uuid4().hex[:12]}"
        job_ids = [f"{batch_id}-{i}" for i in range(len(settings_list))]
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for job_id, settings in zip(job_ids, settings_list):
                    job = build_job(settings, overrides, outdir=self.outdir, models_dir=self.models_dir, model=model)
                    self._db.execute(
                        "INSERT INTO jobs (id, batch_id, status, phase, error_type, message, outdir, created_at,"
                        " updated_at, job, overrides) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        (job_id, batch_id, ACCEPTED, QUEUED, NONE, "queued", self.outdir, now, now,
                         json.dumps(job, ensure_ascii=False), json.dumps(overrides, ensure_ascii=False)),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        for job_id in job_ids:
            self._notify(job_id, {"type": "queued"})
        self._wake.set()
        return batch_id, job_ids

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued job (it never runs) or stop the running one (its frames stay). False if already finished.

        Raises KeyError for an unknown id.
        """
        with self._lock:
            record = self.get(job_id)
            if record is None:
                raise KeyError(job_id)
            if record.finished:
                return False
            running = self._current.get(job_id)
            if running is not None:
                self._update(job_id, cancel_requested=1, message="cancelling: stopping after the current step")
                running.set()
            else:
                now = time.time()
                self._update(job_id, status=CANCELLED, cancel_requested=1, finished_at=now,
                             message="Cancelled due to user request.")
        self._notify(job_id, {"type": "cancel"})
        return True

    def cancel_batch(self, batch_id: str) -> list[str]:
        """Cancel every unfinished job of a batch; returns the ids cancelled. KeyError if the batch is unknown."""
        records = self.batch(batch_id)
        if not records:
            raise KeyError(batch_id)
        # Queued ones first, so the runner cannot start one of them after the running one stops.
        ordered = sorted(records, key=lambda r: r.running)
        return [r.id for r in ordered if self.cancel(r.id)]

    def retry(self, job_id: str) -> bool:
        """Queue a RETRYABLE failed or a cancelled job again; it resumes its timestring from the frames on disk.

        False when the job cannot be retried (see `retry_refusal`); KeyError for an unknown id.
        """
        with self._lock:
            record = self.get(job_id)
            if record is None:
                raise KeyError(job_id)
            if retry_refusal(record):
                return False
            self._update(job_id, status=ACCEPTED, phase=QUEUED, finished_at=None, cancel_requested=0,
                         error_type=RETRYABLE if record.status == FAILED else NONE,
                         message=resume_message("retry requested", asdict_row(record)))
        self._notify(job_id, {"type": "queued"})
        self._wake.set()
        return True

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call `callback(record, event)` on every change (event None for queue-side changes); returns unsubscribe."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def wait(self, job_ids: Sequence[str], timeout: float) -> bool:
        """Block until all `job_ids` have finished or `timeout` passes; True if all finished."""
        deadline = time.monotonic() + timeout
        while True:
            records = [self.get(j) for j in job_ids]
            if all(r is None or r.finished for r in records):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(0.05, remaining))

    # ------------------------------------------------------------ internals

    def _update(self, job_id: str, **values: Any) -> None:
        values.setdefault("updated_at", time.time())
        columns = ", ".join(f"{k}=?" for k in values)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {columns} WHERE id=?", (*values.values(), job_id))

    def _notify(self, job_id: str, event: dict | None) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        if not subscribers:
            return
        record = self.get(job_id)
        if record is None:
            return
        for callback in subscribers:
            try:
                callback(record, event)
            except Exception:  # a broken listener must not stop the render
                log.exception("deforum-wan: job subscriber failed")

    def _claim_next(self, slot: str | None) -> tuple[JobRecord, threading.Event] | None:
        with self._lock:
            if self._stopping.is_set():
                return None
            row = self._db.execute(
                "SELECT * FROM jobs WHERE status=? AND phase=? ORDER BY seq LIMIT 1", (ACCEPTED, QUEUED)
            ).fetchone()
            if row is None:
                return None
            record = record_from_row(row)
            now = time.time()
            claimed = self._db.execute(  # one statement: another process's claim in between makes it match nothing
                "UPDATE jobs SET phase=?, started_at=?, attempts=?, message=?, updated_at=?, owner=?, gpus=? "
                "WHERE id=? AND status=? AND phase=?",
                (PREPARING, now, record.attempts + 1, "starting the renderer", now, self.owner, slot, record.id,
                 ACCEPTED, QUEUED)).rowcount
            if claimed != 1:
                return None
            cancel = threading.Event()
            self._current[record.id] = cancel
        return self.get(record.id) or record, cancel

    def _loop(self, slot: str | None) -> None:
        while not self._stopping.is_set():
            claimed = self._claim_next(slot)
            if claimed is None:
                self._wake.wait(1.0)  # set() wakes every runner waiting; one busy claiming polls again within 1 s
                self._wake.clear()
                continue
            record, cancel = claimed
            try:
                self._run(record, cancel, slot)
            except Exception:  # keep the queue alive whatever one job does
                log.exception("deforum-wan: job %s failed in the queue", record.id)
                self._finish(record.id, status=FAILED, error_type=RETRYABLE, message="internal error in the job queue")
            finally:
                with self._lock:
                    self._current.pop(record.id, None)
                self._wake.set()  # a runner that is free may take the next job now

    def _worker_job(self, record: JobRecord, slot: str | None = None) -> dict[str, Any]:
        job = dict(record.job)
        if record.timestring and record.outdir and Path(record.outdir).is_dir():
            job["resume"] = record.timestring  # continue from the frames on disk
        if slot:
            job["gpu_group"] = slot  # the worker is pinned to these GPUs (bridge) and splits each clip across them
        return job

    def _run(self, record: JobRecord, cancel: threading.Event, slot: str | None = None) -> None:
        self._notify(record.id, {"type": "running"})
        runner = self._runner or _default_runner()
        started = time.monotonic()
        job = self._worker_job(record, slot)
        try:
            outcome = runner(job, on_event=lambda event: self._on_event(record.id, event), cancel=cancel,
                             config=self.config)
        except Exception as exc:
            log.exception("deforum-wan: the renderer could not run job %s", record.id)
            outcome = {"status": "crashed", "error": f"the renderer could not run: {type(exc).__name__}: {exc}"}
        elapsed = time.monotonic() - started
        current = self.get(record.id)
        run_seconds = (current.run_seconds if current else 0.0) + elapsed
        status = _get(outcome, "status")
        values: dict[str, Any] = {"run_seconds": run_seconds}
        for name in ("timestring", "video"):
            if _get(outcome, name):
                values[name] = str(_get(outcome, name))
        if _get(outcome, "folder"):
            values["outdir"] = str(_get(outcome, "folder"))
        total = _get(outcome, "frames_total") or (current.frames_total if current else 0)
        on_disk = _get(outcome, "frames_on_disk")
        if on_disk is not None:
            values["frames_written"] = int(on_disk)
        if total:
            values["frames_total"] = int(total)
        error = _get(outcome, "error")
        if status == "done":
            self._finish(record.id, status=SUCCEEDED, phase=DONE, phase_progress=1.0, error_type=NONE,
                         message="done", **values)
        elif status == "interrupted":
            fresh = self.get(record.id)
            if fresh is not None and fresh.cancel_requested:
                self._finish(record.id, status=CANCELLED, message="Cancelled due to user request; "
                             f"{values.get('frames_written', fresh.frames_written)} frames kept", **values)
            elif self._stopping.is_set():
                values.update(phase=QUEUED, error_type=RETRYABLE)
                self._update(record.id, **values)
                self._update(record.id, message=resume_message("the web UI is stopping",
                                                                     asdict_row(self.get(record.id))))
                self._notify(record.id, {"type": "requeued"})
            else:
                self._finish(record.id, status=FAILED, error_type=RETRYABLE,
                             message="the render was stopped from outside; retry to resume it", **values)
        elif status == "failed":
            error_type = failure_type(error, _get(outcome, "last_event"))
            message = error or "the render failed"
            if error_type == RETRYABLE:
                message += f"; once that is fixed, retry the job (POST /deforum_wan/jobs/{record.id}/retry) to resume it"
            self._finish(record.id, status=FAILED, error_type=error_type, message=message, **values)
        else:  # crashed, or an outcome we do not know
            self._finish(record.id, status=FAILED, error_type=RETRYABLE,
                         message=error or f"the renderer stopped unexpectedly ({status})", **values)

    def _finish(self, job_id: str, **values: Any) -> None:
        written, total = values.get("frames_written"), values.get("frames_total")
        if "phase_progress" not in values and isinstance(written, int) and isinstance(total, int) and total > 0:
            values["phase_progress"] = max(0.0, min(1.0, written / total))  # a stopped job: what is on disk
        now = time.time()
        self._update(job_id, finished_at=now, updated_at=now, **values)
        self._notify(job_id, {"type": "finished"})

    def _on_event(self, job_id: str, event: dict) -> None:
        """Worker events -> phase, progress and message of the running job."""
        try:
            record = self.get(job_id) if event.get("type") == "warning" else None
            values = event_values(event, record.warnings if record else ())
        except Exception:  # a malformed event must not kill the render
            log.exception("deforum-wan: cannot read worker event %r", event)
            values = {}
        if values:
            self._update(job_id, **values)
        self._notify(job_id, event)

# ---------------------------------------------------------------- one queue per process

_QUEUE: JobQueue | None = None
_QUEUE_LOCK = threading.Lock()


def default_db_path() -> Path:
    """$DEFORUM_WAN_JOBS_DB, else `.jobs/jobs.sqlite3` in the extension folder (writable in every web UI)."""
    env = os.environ.get("DEFORUM_WAN_JOBS_DB")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[3] / ".jobs" / "jobs.sqlite3"


def get_queue(db_path: str | os.PathLike[str] | None = None, **kwargs: Any) -> JobQueue:
    """The process's one queue, created and started on first use; later calls may update outdir/models_dir/default_model.

    With $DEFORUM_WAN_FARM its jobs render on that Ray cluster (farm.py), one per free farm slot.
    """
    global _QUEUE
    with _QUEUE_LOCK:
        if _QUEUE is None or _QUEUE._closed:
            if "runner" not in kwargs:
                from .farm import config_from_env, farm_queue_options

                farm = config_from_env()  # $DEFORUM_WAN_FARM: jobs render on a Ray cluster, not here
                if farm is not None:
                    kwargs.update(farm_queue_options(farm))
            _QUEUE = JobQueue(db_path or default_db_path(), **kwargs).start()
            atexit.register(_QUEUE.close, 10.0)
        else:
            if "outdir" in kwargs and kwargs["outdir"]:
                _QUEUE.outdir = str(Path(kwargs["outdir"]).expanduser().resolve())
            for name in ("models_dir", "default_model"):
                if kwargs.get(name):
                    setattr(_QUEUE, name, str(kwargs[name]))
        return _QUEUE


def close_queue(timeout: float | None = 60.0) -> None:
    """Close and forget the process's queue (shutdown, tests)."""
    global _QUEUE
    with _QUEUE_LOCK:
        queue, _QUEUE = _QUEUE, None
    if queue is not None:
        queue.close(timeout)
