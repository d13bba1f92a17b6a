"""One persistent render queue shared by the Wan tab and the txt2vid API.

Renders are long and the web UI gets restarted, so the queue lives in a SQLite
file: a restart finds queued jobs still queued, and a job that was running when
the process stopped is marked RETRYABLE and continues from the frames already on
disk (its worker job is re-run with `"resume": <timestring>`). Exactly one job
renders at a time, on one runner thread, because one GPU holds one Wan model.

Records use Deforum's API vocabulary (status ACCEPTED/SUCCEEDED/FAILED/CANCELLED,
phase QUEUED/PREPARING/GENERATING/POST_PROCESSING/DONE, error_type
NONE/RETRYABLE/TERMINAL) so Deforum's API clients can poll our jobs unchanged.

This module runs inside the web UI process: it imports nothing heavy. The
renderer runs in a worker process started by `bridge.run_job` (injectable).
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

log = logging.getLogger(__name__)

ACCEPTED, SUCCEEDED, FAILED, CANCELLED = "ACCEPTED", "SUCCEEDED", "FAILED", "CANCELLED"
QUEUED, PREPARING, GENERATING, POST_PROCESSING, DONE = "QUEUED", "PREPARING", "GENERATING", "POST_PROCESSING", "DONE"
NONE, RETRYABLE, TERMINAL = "NONE", "RETRYABLE", "TERMINAL"

# options_overrides keys and where they go in the worker job.
PLAN_OVERRIDES = ("continuity", "overlap", "width", "height", "steps", "guidance", "flow_shift", "max_clip_frames",
                  "sensitivity", "language", "blend", "color_match", "seed")
JOB_OVERRIDES = ("model", "i2v_model", "device", "memory_profile", "attention", "compile", "vae_tiling", "make_video",
                 "enhance")
ENHANCE_OVERRIDES = ("enhance_style", "enhance_style_strength", "enhance_target_language")
OVERRIDE_KEYS = PLAN_OVERRIDES + JOB_OVERRIDES + ENHANCE_OVERRIDES

# Preferred default model kinds, best continuity first.
DEFAULT_KIND_ORDER = ("vace", "ti2v-5b", "t2v", "a14b-t2v", "i2v", "a14b-i2v", "flf2v")

Runner = Callable[..., Any]
Subscriber = Callable[["JobRecord", "dict | None"], None]

_SCHEMA_VERSION = 1
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
    overrides TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS jobs_batch ON jobs (batch_id);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, phase);
"""
_MAX_WARNINGS = 20


@dataclass(frozen=True)
class JobRecord:
    """One job as stored; `to_dict()` is what the API returns."""

    id: str
    batch_id: str
    seq: int
    status: str
    phase: str
    phase_progress: float
    error_type: str
    message: str | None
    outdir: str | None  # the batch folder once the worker named it, else the output root
    timestring: str | None
    video: str | None
    preview: str | None
    frames_written: int
    frames_total: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float
    run_seconds: float  # time spent rendering, summed over attempts
    attempts: int
    cancel_requested: bool
    warnings: tuple[str, ...]
    job: dict = field(repr=False)
    options_overrides: dict = field(repr=False)

    @property
    def finished(self) -> bool:
        return self.status != ACCEPTED

    @property
    def running(self) -> bool:
        return self.status == ACCEPTED and self.phase != QUEUED

    def to_dict(self, *, include_settings: bool = False) -> dict[str, Any]:
        """Deforum's job status fields, plus ours (video, frames, timings)."""
        end = self.finished_at if self.finished_at is not None else self.updated_at
        data: dict[str, Any] = {
            "id": self.id,
            "batch_id": self.batch_id,
            "status": self.status,
            "phase": self.phase,
            "phase_progress": round(self.phase_progress, 4),
            "error_type": self.error_type,
            "message": self.message,
            "outdir": self.outdir,
            "timestring": self.timestring,
            "video": self.video if self.status == SUCCEEDED else None,
            "preview": self.preview,
            "frames_written": self.frames_written,
            "frames_total": self.frames_total,
            "attempts": self.attempts,
            "warnings": list(self.warnings),
            # Deforum's timing names
            "started_at": self.started_at if self.started_at is not None else self.created_at,
            "last_updated": self.updated_at,
            "execution_time": (end - self.started_at) if self.started_at is not None else 0.0,
            "timings": {
                "created_at": self.created_at,
                "started_at": self.started_at,
                "finished_at": self.finished_at,
                "last_updated": self.updated_at,
                "queued_seconds": ((self.started_at or end) - self.created_at),
                "run_seconds": round(self.run_seconds, 3),
                "total_seconds": (self.finished_at - self.created_at) if self.finished_at is not None else None,
            },
            "options_overrides": self.options_overrides,
        }
        if include_settings:
            data["deforum_settings"] = self.job.get("settings")
        return data


def _record(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        id=row["id"], batch_id=row["batch_id"], seq=row["seq"], status=row["status"], phase=row["phase"],
        phase_progress=float(row["phase_progress"] or 0.0), error_type=row["error_type"], message=row["message"],
        outdir=row["outdir"], timestring=row["timestring"], video=row["video"], preview=row["preview"],
        frames_written=int(row["frames_written"] or 0), frames_total=int(row["frames_total"] or 0),
        created_at=row["created_at"], started_at=row["started_at"], finished_at=row["finished_at"],
        updated_at=row["updated_at"], run_seconds=float(row["run_seconds"] or 0.0), attempts=int(row["attempts"] or 0),
        cancel_requested=bool(row["cancel_requested"]), warnings=tuple(json.loads(row["warnings"] or "[]")),
        job=json.loads(row["job"]), options_overrides=json.loads(row["overrides"] or "{}"),
    )


def build_job(settings: Mapping[str, Any], overrides: Mapping[str, Any] | None, *, outdir: str,
              models_dir: str | None, model: str) -> dict[str, Any]:
    """The worker job JSON for one validated settings object and its options_overrides."""
    overrides = dict(overrides or {})
    options = {k: overrides[k] for k in PLAN_OVERRIDES if overrides.get(k) is not None}
    if options.get("seed") == -1:
        del options["seed"]  # -1: let the render pick (and save) a seed, as Deforum does
    job: dict[str, Any] = {
        "settings": dict(settings),
        "model": overrides.get("model") or model,
        "outdir": str(outdir),
        "options": options,
        "models_dir": str(models_dir) if models_dir else None,
    }
    for key in JOB_OVERRIDES:
        if key != "model" and overrides.get(key) is not None:
            job[key] = overrides[key]
    if job.get("enhance"):
        job["enhance_options"] = {
            "qwen": None,
            "style": overrides.get("enhance_style") or "",
            "style_strength": overrides.get("enhance_style_strength", 0.5),
            "target_language": overrides.get("enhance_target_language") or "en",
            "models_dir": job["models_dir"],
        }
    return job


def _default_runner() -> Runner:
    from .bridge import run_job  # imported lazily: the bridge is built separately and needs no torch either

    return run_job


def _get(outcome: Any, name: str, default: Any = None) -> Any:
    if isinstance(outcome, Mapping):
        return outcome.get(name, default)
    return getattr(outcome, name, default)


class JobQueue:
    """A persistent FIFO of render jobs with one runner thread.

    `runner(job, on_event=..., cancel=..., config=...)` renders one worker job and
    returns an outcome with `status` done/interrupted/failed/crashed (see
    bridge.WorkerOutcome); tests inject their own.
    """

    def __init__(self, db_path: str | os.PathLike[str], *, runner: Runner | None = None, config: Any = None,
                 outdir: str | os.PathLike[str] = "outputs", models_dir: str | os.PathLike[str] | None = None,
                 default_model: str | None = None):
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
        self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        self._subscribers: list[Subscriber] = []
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._current: tuple[str, threading.Event] | None = None
        self._closed = False
        self._recover()

    # ------------------------------------------------------------ lifecycle

    def _recover(self) -> None:
        """Jobs a previous process left running go back to the queue, to resume from their frames."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, frames_written, timestring FROM jobs WHERE status=? AND phase!=?", (ACCEPTED, QUEUED)
            ).fetchall()
            for row in rows:
                self._update(row["id"], phase=QUEUED, error_type=RETRYABLE,
                             message=self._resume_message("the web UI stopped during the render", row))

    @staticmethod
    def _resume_message(reason: str, row: Mapping[str, Any]) -> str:
        if row["timestring"]:
            return f"{reason}; queued again to resume {row['timestring']} from {row['frames_written']} frames on disk"
        return f"{reason}; queued again"

    def start(self) -> "JobQueue":
        """Start the runner thread (idempotent)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("this job queue is closed")
            if self._thread is None or not self._thread.is_alive():
                self._stopping.clear()
                self._thread = threading.Thread(target=self._loop, name="deforum-wan-jobs", daemon=True)
                self._thread.start()
        return self

    def close(self, timeout: float | None = 60.0) -> None:
        """Stop the runner; a running job is stopped and stays queued to resume on the next start."""
        with self._lock:
            if self._closed:
                return
            self._stopping.set()
            current = self._current
        if current is not None:
            current[1].set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("deforum-wan: the running job did not stop within %ss; it resumes on the next start", timeout)
        with self._lock:
            self._closed = True
            if self._thread is None or not self._thread.is_alive():
                self._db.close()

    # ------------------------------------------------------------ reading

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return _record(row) if row else None

    def list(self) -> list[JobRecord]:
        """Every job, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs ORDER BY seq").fetchall()
        return [_record(r) for r in rows]

    def batch(self, batch_id: str) -> list[JobRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs WHERE batch_id=? ORDER BY seq", (batch_id,)).fetchall()
        return [_record(r) for r in rows]

    def batches(self) -> dict[str, list[str]]:
        """batch_id -> job ids, oldest batch first."""
        out: dict[str, list[str]] = {}
        with self._lock:
            for row in self._db.execute("SELECT batch_id, id FROM jobs ORDER BY seq"):
                out.setdefault(row["batch_id"], []).append(row["id"])
        return out

    def running(self) -> JobRecord | None:
        current = self._current
        return self.get(current[0]) if current else None

    # ------------------------------------------------------------ writing

    def resolve_model(self, model: str | None = None) -> str:
        """The model a job uses: the override, the queue default, else the best model found in models_dir."""
        if model:
            return model
        if self.default_model:
            return self.default_model
        if self.models_dir:
            from .models import discover_models

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
            current = self._current
            if current is not None and current[0] == job_id:
                self._update(job_id, cancel_requested=1, message="cancelling: stopping after the current step")
                current[1].set()
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
        """Queue a FAILED RETRYABLE job again; it resumes from its frames on disk."""
        with self._lock:
            record = self.get(job_id)
            if record is None:
                raise KeyError(job_id)
            if record.status != FAILED or record.error_type != RETRYABLE:
                return False
            self._update(job_id, status=ACCEPTED, phase=QUEUED, finished_at=None, cancel_requested=0,
                         message=self._resume_message("retry requested", asdict_row(record)))
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

    def _claim_next(self) -> tuple[JobRecord, threading.Event] | None:
        with self._lock:
            if self._stopping.is_set():
                return None
            row = self._db.execute(
                "SELECT * FROM jobs WHERE status=? AND phase=? ORDER BY seq LIMIT 1", (ACCEPTED, QUEUED)
            ).fetchone()
            if row is None:
                return None
            record = _record(row)
            now = time.time()
            self._update(record.id, phase=PREPARING, started_at=now, attempts=record.attempts + 1,
                         message="starting the renderer", updated_at=now)
            cancel = threading.Event()
            self._current = (record.id, cancel)
        return self.get(record.id) or record, cancel

    def _loop(self) -> None:
        while not self._stopping.is_set():
            claimed = self._claim_next()
            if claimed is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            record, cancel = claimed
            try:
                self._run(record, cancel)
            except Exception:  # keep the queue alive whatever one job does
                log.exception("deforum-wan: job %s failed in the queue", record.id)
                self._finish(record.id, status=FAILED, error_type=RETRYABLE, message="internal error in the job queue")
            finally:
                with self._lock:
                    self._current = None

    def _worker_job(self, record: JobRecord) -> dict[str, Any]:
        job = dict(record.job)
        if record.timestring and record.outdir and Path(record.outdir).is_dir():
            job["resume"] = record.timestring  # continue from the frames on disk
        return job

    def _run(self, record: JobRecord, cancel: threading.Event) -> None:
        self._notify(record.id, {"type": "running"})
        runner = self._runner or _default_runner()
        started = time.monotonic()
        job = self._worker_job(record)
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
                self._update(record.id, message=self._resume_message("the web UI is stopping",
                                                                     asdict_row(self.get(record.id))))
                self._notify(record.id, {"type": "requeued"})
            else:
                self._finish(record.id, status=FAILED, error_type=RETRYABLE,
                             message="the render was stopped from outside; retry to resume it", **values)
        elif status == "failed":
            self._finish(record.id, status=FAILED, error_type=TERMINAL, message=error or "the render failed", **values)
        else:  # crashed, or an outcome we do not know
            self._finish(record.id, status=FAILED, error_type=RETRYABLE,
                         message=error or f"the renderer stopped unexpectedly ({status})", **values)

    def _finish(self, job_id: str, **values: Any) -> None:
        now = time.time()
        self._update(job_id, finished_at=now, updated_at=now, **values)
        self._notify(job_id, {"type": "finished"})

    def _on_event(self, job_id: str, event: dict) -> None:
        """Worker events -> phase, progress and message of the running job."""
        try:
            values = self._event_values(job_id, event)
        except Exception:  # a malformed event must not kill the render
            log.exception("deforum-wan: cannot read worker event %r", event)
            values = {}
        if values:
            self._update(job_id, **values)
        self._notify(job_id, event)

    def _event_values(self, job_id: str, event: Mapping[str, Any]) -> dict[str, Any]:
        kind = event.get("type")
        values: dict[str, Any] = {}
        total = event.get("frames_total")
        written = event.get("frames_written")
        if kind == "start":
            written = event.get("frames_on_disk", 0)
            values.update(phase=PREPARING, outdir=str(event.get("folder") or ""), timestring=event.get("timestring"))
            done = int(written or 0)
            values["message"] = (f"resuming from {done} frames on disk" if event.get("resumed")
                                 else f"{event.get('clips', '?')} clip(s), {total} frames")
        elif kind == "status":
            phase = event.get("phase")
            if phase == "encoding":
                values.update(phase=POST_PROCESSING)
            elif phase in ("preparing", "loading", "loaded", "enhancing"):
                values.update(phase=PREPARING)
            if event.get("message"):
                values["message"] = str(event["message"])
        elif kind in ("clip", "step", "frames"):
            values["phase"] = GENERATING
            clip, clips = event.get("clip"), event.get("clips")
            where = f"clip {int(clip) + 1}/{clips}" if isinstance(clip, int) and clips else "rendering"
            if kind == "step":
                eta = event.get("eta_seconds")
                values["message"] = f"{where}, step {event.get('step')}/{event.get('steps')}" + (
                    f", about {eta:.0f} s left" if isinstance(eta, (int, float)) else "")
            elif kind == "clip":
                values["message"] = f"{where}: {event.get('mode', '')}".rstrip(": ")
            if kind == "frames" and event.get("preview"):
                values["preview"] = str(event["preview"])
        elif kind == "warning":
            record = self.get(job_id)
            warnings = list(record.warnings if record else ())[-(_MAX_WARNINGS - 1):]
            warnings.append(str(event.get("message", "")))
            values["warnings"] = json.dumps(warnings, ensure_ascii=False)
        elif kind == "error":
            values["message"] = str(event.get("message") or "error")
        elif kind == "done":
            if event.get("video"):
                values["video"] = str(event["video"])
            written = event.get("frames_on_disk", written)
        if isinstance(total, int) and total > 0:
            values["frames_total"] = total
            if isinstance(written, int):
                values["frames_written"] = written
                values["phase_progress"] = max(0.0, min(1.0, written / total))
        return values


def asdict_row(record: JobRecord | None) -> dict[str, Any]:
    """The fields `_resume_message` reads, from a record."""
    if record is None:
        return {"timestring": None, "frames_written": 0}
    return {"timestring": record.timestring, "frames_written": record.frames_written}


# ---------------------------------------------------------------- one queue per process

_QUEUE: JobQueue | None = None
_QUEUE_LOCK = threading.Lock()


def default_db_path() -> Path:
    """$DEFORUM_WAN_JOBS_DB, else `.jobs/jobs.sqlite3` in the extension folder (writable in every web UI)."""
    env = os.environ.get("DEFORUM_WAN_JOBS_DB")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / ".jobs" / "jobs.sqlite3"


def get_queue(db_path: str | os.PathLike[str] | None = None, **kwargs: Any) -> JobQueue:
    """The process's one queue, created and started on first use; later calls may update outdir/models_dir/default_model."""
    global _QUEUE
    with _QUEUE_LOCK:
        if _QUEUE is None or _QUEUE._closed:
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


def webui_paths() -> dict[str, Any]:
    """Output folder, models folder and allowed input roots from the host web UI's options."""
    from modules import shared

    opts = shared.opts
    outdir = getattr(opts, "outdir_samples", "") or getattr(opts, "outdir_img2img_samples", "") or "outputs"
    models_dir = getattr(opts, "deforum_wan_models_dir", "") or ""
    if not models_dir:
        try:
            from modules import paths

            models_dir = str(Path(paths.models_path) / "wan")
        except Exception:  # an unusual host: fall back to the CLI's default
            models_dir = str(Path("models") / "wan")
    roots = [outdir]
    data = getattr(opts, "data", None)
    if isinstance(data, dict):
        roots += [v for k, v in data.items() if k.startswith("outdir_") and isinstance(v, str) and v.strip()]
    for name in ("outdir_samples", "outdir_txt2img_samples", "outdir_img2img_samples", "outdir_extras_samples",
                 "outdir_grids", "outdir_save", "outdir_init_images"):
        value = getattr(opts, name, "")
        if isinstance(value, str) and value.strip():
            roots.append(value)
    extra = getattr(opts, "deforum_wan_api_allowed_roots", "") or os.environ.get("DEFORUM_WAN_ALLOWED_ROOTS", "")
    roots += [p for p in str(extra).split(os.pathsep) if p.strip()]
    roots += ["outputs", "inputs"]
    return {"outdir": outdir, "models_dir": models_dir, "allowed_roots": list(dict.fromkeys(roots))}


def webui_queue() -> JobQueue:
    """The shared queue configured from the web UI's options (the tab and the API both use this)."""
    paths = webui_paths()
    return get_queue(outdir=paths["outdir"], models_dir=paths["models_dir"])
