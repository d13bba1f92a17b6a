"""The queue's data: job records, worker jobs, what worker events and failures mean.

Pure functions and frozen records (no database, no threads), so jobs.JobQueue
stays the only place with state, and these rules can be read and tested alone.
Records use Deforum's API vocabulary (status ACCEPTED/SUCCEEDED/FAILED/CANCELLED,
phase QUEUED/PREPARING/GENERATING/POST_PROCESSING/DONE, error_type
NONE/RETRYABLE/TERMINAL) so Deforum's API clients can poll our jobs unchanged.
"""
from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

ACCEPTED, SUCCEEDED, FAILED, CANCELLED = "ACCEPTED", "SUCCEEDED", "FAILED", "CANCELLED"
QUEUED, PREPARING, GENERATING, POST_PROCESSING, DONE = "QUEUED", "PREPARING", "GENERATING", "POST_PROCESSING", "DONE"
NONE, RETRYABLE, TERMINAL = "NONE", "RETRYABLE", "TERMINAL"

# options_overrides keys and where they go in the worker job.
PLAN_OVERRIDES = ("continuity", "overlap", "width", "height", "steps", "guidance", "flow_shift", "max_clip_frames",
                  "sensitivity", "language", "timing", "fps_tolerance", "min_clip_seconds", "color_match", "seed",
                  "guidance_2", "exact_size", "preset", "cache", "loras", "motion")
JOB_OVERRIDES = ("model", "i2v_model", "device", "memory_profile", "attention", "compile", "vae_tiling", "make_video",
                 "enhance", "storage", "depth_model", "gpus", "context_parallel")
ENHANCE_OVERRIDES = ("enhance_style", "enhance_style_strength", "enhance_target_language")
OVERRIDE_KEYS = PLAN_OVERRIDES + JOB_OVERRIDES + ENHANCE_OVERRIDES

MAX_WARNINGS = 20


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
    worker: dict | None = None  # what the worker ran on: torch, diffusers, transformers, device
    gpus: str | None = None  # the GPU group the job was last claimed for ("0,1"); None: not pinned

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
            "worker": self.worker,
            "gpus": self.gpus,
        }
        if include_settings:
            data["deforum_settings"] = self.job.get("settings")
        return data


def record_from_row(row: Mapping[str, Any]) -> JobRecord:
    """A JobRecord from a database row."""
    return JobRecord(
        id=row["id"], batch_id=row["batch_id"], seq=row["seq"], status=row["status"], phase=row["phase"],
        phase_progress=float(row["phase_progress"] or 0.0), error_type=row["error_type"], message=row["message"],
        outdir=row["outdir"], timestring=row["timestring"], video=row["video"], preview=row["preview"],
        frames_written=int(row["frames_written"] or 0), frames_total=int(row["frames_total"] or 0),
        created_at=row["created_at"], started_at=row["started_at"], finished_at=row["finished_at"],
        updated_at=row["updated_at"], run_seconds=float(row["run_seconds"] or 0.0), attempts=int(row["attempts"] or 0),
        cancel_requested=bool(row["cancel_requested"]), warnings=tuple(json.loads(row["warnings"] or "[]")),
        job=json.loads(row["job"]), options_overrides=json.loads(row["overrides"] or "{}"),
        worker=json.loads(row["worker"]) if "worker" in row.keys() and row["worker"] else None,
        gpus=row["gpus"] if "gpus" in row.keys() else None,
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


def event_values(event: Mapping[str, Any], warnings_so_far: Sequence[str] = ()) -> dict[str, Any]:
    """The record columns a worker event changes: phase, progress, message, warnings, paths."""
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
    elif kind == "preview":  # a latent preview while a clip denoises; None once it is gone and no frame replaces it
        values["preview"] = str(event["path"]) if event.get("path") else None
    elif kind == "environment":
        keys = ("torch", "torch_path", "cuda", "hip", "diffusers", "transformers", "accelerate", "device", "python",
                "executable", "visible_devices", "host", "farm_node")
        values["worker"] = json.dumps({k: event.get(k) for k in keys if event.get(k) is not None})
    elif kind == "warning":
        warnings = list(warnings_so_far)[-(MAX_WARNINGS - 1):]
        warnings.append(str(event.get("message", "")))
        values["warnings"] = json.dumps(warnings, ensure_ascii=False)
    elif kind == "error":
        values["message"] = str(event.get("message") or "error")
    elif kind in ("done", "interrupted"):
        # The render's last word: the frames really on disk. The frames/step events before it
        # count what the background writer had finished when they were sent, a clip or more
        # behind; without this the record kept that count's progress (0.25 at 60/120 frames).
        if kind == "done" and event.get("video"):
            values["video"] = str(event["video"])
        written = event.get("frames_on_disk", written)
    if isinstance(total, int) and total > 0:
        values["frames_total"] = total
        if isinstance(written, int):
            values["frames_written"] = written
            values["phase_progress"] = max(0.0, min(1.0, written / total))
    return values


# Failures a retry fixes without changing the settings: the disk was full (the render raises
# DiskFullError; ffmpeg and others only say it in words), or one of a multi-GPU job's ranks died.
_RETRYABLE_ERROR_TYPES = ("DiskFullError", "RankFailed")  # RankFailed: a GPU's process died (service/torchrun.py)
_RETRYABLE_WORDS = tuple({os.strerror(errno.ENOSPC), os.strerror(getattr(errno, "EDQUOT", errno.ENOSPC))})


def failure_type(error: str | None, last_event: Mapping[str, Any] | None) -> str:
    """RETRYABLE for a failure a retry can fix as it is (a full disk), TERMINAL for one the settings cause."""
    kind = (last_event or {}).get("error_type") if isinstance(last_event, Mapping) else None
    if kind in _RETRYABLE_ERROR_TYPES or any(w in (error or "") for w in _RETRYABLE_WORDS):
        return RETRYABLE
    return TERMINAL


def retry_refusal(record: JobRecord) -> str | None:
    """Why `record` cannot be retried, or None: only a RETRYABLE failure or a cancelled job is."""
    if record.status == CANCELLED or (record.status == FAILED and record.error_type == RETRYABLE):
        return None
    if record.status == ACCEPTED:
        return "the job is already queued or running"
    if record.status == SUCCEEDED:
        return "the job has already succeeded"
    return ("the job failed for a reason a retry does not fix (TERMINAL): change the settings and submit them "
            "again")


def asdict_row(record: JobRecord | None) -> dict[str, Any]:
    """The fields `_resume_message` reads, from a record."""
    if record is None:
        return {"timestring": None, "frames_written": 0}
    return {"timestring": record.timestring, "frames_written": record.frames_written}


def resume_message(reason: str, row: Mapping[str, Any]) -> str:
    """What a job re-queued to resume says: why, and from how many frames."""
    if row["timestring"]:
        return f"{reason}; queued again to resume {row['timestring']} from {row['frames_written']} frames on disk"
    return f"{reason}; queued again"
