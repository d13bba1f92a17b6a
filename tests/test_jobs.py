"""The persistent job queue with injected runners: phases, one-at-a-time, cancel, restart and resume."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from deforum_wan.service import jobs
from deforum_wan.renderer import outputs
from deforum_wan.service.jobs import JobQueue

SETTINGS = {"prompts": {"0": "a red fox"}, "max_frames": 4, "W": 32, "H": 32, "fps": 16, "seed": 5,
            "batch_name": "q_{timestring}"}
WAIT = 60.0  # generous bound for every wait; no assertion depends on timing


class FakeRunner:
    """Behaves like bridge.run_job: emits worker events, writes frames, honours the cancel event.

    `gate` (when given) holds the render after its first frame until it is set or cancelled.
    """

    def __init__(self, outdir: Path, frames: int = 4, gate: threading.Event | None = None, status: str = "done",
                 error: str | None = None):
        self.outdir, self.frames, self.gate, self.status, self.error = outdir, frames, gate, status, error
        self.calls: list[dict] = []
        self.started = threading.Event()
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.count = 0

    def __call__(self, job, *, on_event, cancel=None, config=None):
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.count += 1
            n = self.count
        try:
            self.calls.append(job)
            timestring = job.get("resume") or f"2024010100{n:04d}"
            folder = self.outdir / f"job_{timestring}"
            folder.mkdir(parents=True, exist_ok=True)
            done = outputs.contiguous_frames(folder, timestring)
            on_event({"type": "start", "folder": str(folder), "timestring": timestring, "clips": 2,
                      "frames_total": self.frames, "frames_on_disk": done, "resumed": bool(job.get("resume"))})
            on_event({"type": "status", "phase": "loading", "message": "loading tiny"})
            self.started.set()
            if self.status != "done":
                on_event({"type": "error", "message": self.error or "boom"})
                return {"status": self.status, "error": self.error, "folder": str(folder), "timestring": timestring,
                        "frames_on_disk": done, "frames_total": self.frames}
            for i in range(done, self.frames):
                if cancel is not None and cancel.is_set():
                    on_event({"type": "interrupted"})
                    return {"status": "interrupted", "folder": str(folder), "timestring": timestring,
                            "frames_on_disk": outputs.contiguous_frames(folder, timestring), "frames_total": self.frames}
                on_event({"type": "step", "clip": 0, "clips": 2, "step": 1, "steps": 1, "eta_seconds": 1.0,
                          "frames_written": i, "frames_total": self.frames})
                outputs.write_frame(folder, timestring, i, np.zeros((8, 8, 3), np.uint8))
                on_event({"type": "frames", "clip": 0, "frames_written": i + 1, "frames_total": self.frames,
                          "preview": str(folder / outputs.frame_name(timestring, i))})
                if self.gate is not None and i == 0:
                    while not self.gate.is_set() and not (cancel is not None and cancel.is_set()):
                        self.gate.wait(0.01)
            on_event({"type": "status", "phase": "encoding", "message": "encoding"})
            video = folder / f"{timestring}.mp4"
            video.write_bytes(b"mp4")
            on_event({"type": "done", "folder": str(folder), "timestring": timestring, "video": str(video),
                      "frames_on_disk": self.frames, "frames_total": self.frames})
            return {"status": "done", "folder": str(folder), "timestring": timestring, "video": str(video),
                    "frames_on_disk": self.frames, "frames_total": self.frames}
        finally:
            with self.lock:
                self.active -= 1


@pytest.fixture
def make_queue(tmp_path):
    made: list[JobQueue] = []

    def make(runner, db: Path | None = None, start: bool = True) -> JobQueue:
        q = JobQueue(db or tmp_path / "jobs.sqlite3", runner=runner, outdir=tmp_path / "out", default_model="vace")
        made.append(q)
        return q.start() if start else q

    yield make
    for q in made:
        q.close(timeout=WAIT)


def test_a_job_runs_through_every_phase_to_succeeded(tmp_path, make_queue):
    runner = FakeRunner(tmp_path / "out")
    q = make_queue(runner, start=False)
    seen: list[tuple[str, str, str, float]] = []
    q.subscribe(lambda rec, ev: seen.append((ev and ev.get("type"), rec.status, rec.phase, rec.phase_progress)))
    batch_id, ids = q.submit([SETTINGS], {"steps": 1, "width": 32})
    assert q.get(ids[0]).status == "ACCEPTED" and q.get(ids[0]).phase == "QUEUED"
    q.start()
    assert q.wait(ids, WAIT)
    rec = q.get(ids[0])
    assert (rec.status, rec.phase, rec.error_type, rec.phase_progress) == ("SUCCEEDED", "DONE", "NONE", 1.0)
    assert rec.frames_written == rec.frames_total == 4
    assert Path(rec.outdir).is_dir() and rec.video and Path(rec.video).is_file() and rec.timestring
    assert rec.started_at >= rec.created_at and rec.finished_at >= rec.started_at
    phases = [p for t, s, p, _ in seen if t]
    by_event = {t: p for t, s, p, _ in seen}
    assert by_event["start"] == "PREPARING" and by_event["step"] == "GENERATING"
    assert by_event["frames"] == "GENERATING" and phases[-1] == "DONE"
    assert "POST_PROCESSING" in phases and phases.index("POST_PROCESSING") > phases.index("GENERATING")
    progress = [pp for t, s, p, pp in seen if t == "frames"]
    assert progress == sorted(progress) and progress[-1] == 1.0
    job = runner.calls[0]
    assert job["model"] == "vace" and job["options"] == {"steps": 1, "width": 32}
    assert job["settings"]["prompts"] == SETTINGS["prompts"] and "resume" not in job
    d = rec.to_dict(include_settings=True)
    assert d["deforum_settings"]["max_frames"] == 4 and d["video"] == rec.video and d["timings"]["finished_at"]


def test_jobs_run_one_at_a_time_in_submission_order(tmp_path, make_queue):
    runner = FakeRunner(tmp_path / "out", frames=2)
    q = make_queue(runner)
    ids: list[str] = []
    for i in range(6):
        ids += q.submit([dict(SETTINGS, seed=i), dict(SETTINGS, seed=100 + i)])[1]
    assert q.wait(ids, WAIT)
    assert runner.max_active == 1 and runner.count == 12
    assert [c["settings"]["seed"] for c in runner.calls] == [s for i in range(6) for s in (i, 100 + i)]
    assert [r.id for r in q.list()] == ids and all(r.status == "SUCCEEDED" for r in q.list())


def test_cancel_a_queued_job_it_never_runs(tmp_path, make_queue):
    gate = threading.Event()
    runner = FakeRunner(tmp_path / "out", gate=gate)
    q = make_queue(runner)
    _, (first,) = q.submit([SETTINGS])
    _, (second,) = q.submit([dict(SETTINGS, seed=9)])
    assert runner.started.wait(WAIT)
    assert q.cancel(second) is True
    assert q.get(second).status == "CANCELLED"
    gate.set()
    assert q.wait([first, second], WAIT)
    assert q.get(first).status == "SUCCEEDED"
    assert [c["settings"]["seed"] for c in runner.calls] == [5]
    assert q.cancel(second) is False and q.cancel(first) is False
    with pytest.raises(KeyError):
        q.cancel("nope")


def test_cancel_the_running_job_keeps_its_frames(tmp_path, make_queue):
    runner = FakeRunner(tmp_path / "out", gate=threading.Event())
    q = make_queue(runner)
    _, (job_id,) = q.submit([SETTINGS])
    assert runner.started.wait(WAIT)
    for _ in range(int(WAIT * 100)):  # until its first frame is on disk
        if q.get(job_id).frames_written >= 1:
            break
        threading.Event().wait(0.01)
    assert q.cancel(job_id) is True
    assert q.wait([job_id], WAIT)
    rec = q.get(job_id)
    assert rec.status == "CANCELLED" and rec.phase == "GENERATING" and rec.frames_written == 1
    assert outputs.existing_frames(rec.outdir, rec.timestring) == [0]
    assert rec.to_dict()["video"] is None


def test_cancel_batch_cancels_running_and_queued(tmp_path, make_queue):
    runner = FakeRunner(tmp_path / "out", gate=threading.Event())
    q = make_queue(runner)
    batch_id, ids = q.submit([SETTINGS, SETTINGS, SETTINGS])
    assert runner.started.wait(WAIT)
    assert sorted(q.cancel_batch(batch_id)) == sorted(ids)
    assert q.wait(ids, WAIT)
    assert [r.status for r in q.batch(batch_id)] == ["CANCELLED"] * 3
    assert runner.count == 1
    with pytest.raises(KeyError):
        q.cancel_batch("batch-unknown")


@pytest.mark.parametrize("status, error_type", [("failed", "TERMINAL"), ("crashed", "RETRYABLE")])
def test_failures_name_the_error(tmp_path, make_queue, status, error_type):
    runner = FakeRunner(tmp_path / "out", status=status, error="max_frames: too many")
    q = make_queue(runner)
    _, (job_id,) = q.submit([SETTINGS])
    assert q.wait([job_id], WAIT)
    rec = q.get(job_id)
    assert (rec.status, rec.error_type) == ("FAILED", error_type)
    assert "max_frames: too many" in rec.message


def test_a_runner_that_raises_fails_the_job_not_the_queue(tmp_path, make_queue):
    calls = []

    def runner(job, *, on_event, cancel=None, config=None):
        calls.append(job)
        if len(calls) == 1:
            raise OSError("no python here")
        return {"status": "done", "frames_on_disk": 1, "frames_total": 1}

    q = make_queue(runner)
    _, ids = q.submit([SETTINGS, SETTINGS])
    assert q.wait(ids, WAIT)
    first, second = (q.get(i) for i in ids)
    assert (first.status, first.error_type) == ("FAILED", "RETRYABLE") and "no python here" in first.message
    assert second.status == "SUCCEEDED"
    assert q.retry(first.id) is True and q.wait([first.id], WAIT)
    assert q.get(first.id).status == "SUCCEEDED" and q.get(first.id).attempts == 2
    assert q.retry(second.id) is False


def test_close_mid_job_then_a_new_queue_resumes_it(tmp_path, make_queue):
    db = tmp_path / "jobs.sqlite3"
    runner = FakeRunner(tmp_path / "out", gate=threading.Event())
    q1 = make_queue(runner, db)
    _, ids = q1.submit([SETTINGS, dict(SETTINGS, seed=6), dict(SETTINGS, seed=7)])
    assert runner.started.wait(WAIT)
    for _ in range(int(WAIT * 100)):
        if q1.get(ids[0]).frames_written >= 1:
            break
        threading.Event().wait(0.01)
    q1.close(timeout=WAIT)
    assert runner.count == 1
    runner2 = FakeRunner(tmp_path / "out")
    q2 = make_queue(runner2, db, start=False)
    interrupted = q2.get(ids[0])
    assert (interrupted.status, interrupted.phase, interrupted.error_type) == ("ACCEPTED", "QUEUED", "RETRYABLE")
    assert [q2.get(i).phase for i in ids[1:]] == ["QUEUED", "QUEUED"]
    q2.start()
    assert q2.wait(ids, WAIT)
    assert [q2.get(i).status for i in ids] == ["SUCCEEDED"] * 3
    resumed = runner2.calls[0]
    assert resumed["resume"] == interrupted.timestring and resumed["settings"]["seed"] == 5
    assert [c["settings"]["seed"] for c in runner2.calls] == [5, 6, 7]  # each once, in order
    rec = q2.get(ids[0])
    assert rec.attempts == 2 and outputs.existing_frames(rec.outdir, rec.timestring) == [0, 1, 2, 3]


def test_a_job_left_running_by_a_killed_process_is_resumed(tmp_path, make_queue):
    db = tmp_path / "jobs.sqlite3"
    q1 = make_queue(FakeRunner(tmp_path / "out"), db, start=False)
    _, (job_id,) = q1.submit([SETTINGS])
    q1.close()
    # What a killed process leaves behind: the record says GENERATING, two frames are on disk.
    folder = tmp_path / "out" / "job_20240101009999"
    for i in range(2):
        outputs.write_frame(folder, "20240101009999", i, np.zeros((8, 8, 3), np.uint8))
    con = sqlite3.connect(db)
    con.execute("UPDATE jobs SET phase='GENERATING', timestring='20240101009999', outdir=?, frames_written=2 WHERE id=?",
                (str(folder), job_id))
    con.commit()
    con.close()
    runner = FakeRunner(tmp_path / "out")
    q2 = make_queue(runner, db, start=False)
    rec = q2.get(job_id)
    assert (rec.status, rec.phase, rec.error_type) == ("ACCEPTED", "QUEUED", "RETRYABLE")
    assert "20240101009999" in rec.message and "2 frames" in rec.message
    q2.start()
    assert q2.wait([job_id], WAIT)
    assert q2.get(job_id).status == "SUCCEEDED"
    assert runner.calls[0]["resume"] == "20240101009999"
    assert outputs.existing_frames(folder, "20240101009999") == [0, 1, 2, 3]


def test_records_survive_a_new_queue_and_list_batches(tmp_path, make_queue):
    db = tmp_path / "jobs.sqlite3"
    q1 = make_queue(FakeRunner(tmp_path / "out"), db)
    b1, ids1 = q1.submit([SETTINGS])
    b2, ids2 = q1.submit([SETTINGS, SETTINGS])
    assert q1.wait(ids1 + ids2, WAIT)
    q1.close()
    q2 = make_queue(FakeRunner(tmp_path / "out"), db, start=False)
    assert q2.batches() == {b1: ids1, b2: ids2}
    assert [r.id for r in q2.batch(b2)] == ids2
    assert all(r.status == "SUCCEEDED" for r in q2.list())
    assert q2.get("missing") is None and q2.batch("missing") == []


def test_submit_maps_options_overrides_into_the_worker_job(tmp_path):
    job = jobs.build_job(SETTINGS, {"model": "/m/vace", "i2v_model": "/m/i2v", "steps": 3, "seed": -1, "continuity":
                                    "vace", "make_video": False, "enhance": True, "enhance_style": "film noir",
                                    "vae_tiling": True}, outdir="/o", models_dir="/m", model="t2v")
    assert job["model"] == "/m/vace" and job["i2v_model"] == "/m/i2v" and job["outdir"] == "/o"
    assert job["options"] == {"steps": 3, "continuity": "vace"}  # seed -1: the render picks one
    assert job["make_video"] is False and job["vae_tiling"] is True and job["models_dir"] == "/m"
    assert job["enhance"] is True and job["enhance_options"]["style"] == "film noir"
    from deforum_wan.service.worker import job_from_dict

    parsed = job_from_dict(json.loads(json.dumps(job)))  # the worker accepts what the queue writes
    assert parsed.options.steps == 3 and parsed.settings.max_frames == 4


def test_the_default_model_is_the_best_one_found(tmp_path):
    q = JobQueue(tmp_path / "db.sqlite3", runner=FakeRunner(tmp_path), outdir=tmp_path, models_dir=tmp_path / "none")
    with pytest.raises(ValueError, match="no Wan model found"):
        q.submit([SETTINGS])
    assert q.resolve_model("t2v") == "t2v"
    q.close()


def test_get_queue_is_one_queue_per_process(tmp_path, monkeypatch):
    monkeypatch.setenv("DEFORUM_WAN_JOBS_DB", str(tmp_path / "single.sqlite3"))
    jobs.close_queue()
    try:
        a = jobs.get_queue(runner=FakeRunner(tmp_path), outdir=tmp_path / "a", default_model="vace")
        b = jobs.get_queue(outdir=tmp_path / "b")
        assert a is b and a.db_path == tmp_path / "single.sqlite3" and a.outdir == str((tmp_path / "b").resolve())
    finally:
        jobs.close_queue()


def test_concurrent_submissions_from_threads_are_all_kept(tmp_path, make_queue):
    runner = FakeRunner(tmp_path / "out", frames=1)
    q = make_queue(runner)
    results: list[list[str]] = []
    lock = threading.Lock()

    def submit(i: int) -> None:
        _, ids = q.submit([dict(SETTINGS, seed=i)])
        with lock:
            results.append(ids)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    ids = [i for r in results for i in r]
    assert len(set(ids)) == 40
    assert q.wait(ids, WAIT)
    assert sorted(c["settings"]["seed"] for c in runner.calls) == list(range(40))


class DiskFullOnce:
    """The first attempt writes two frames and stops on a full disk (as the worker reports it); a retry finishes."""

    def __init__(self, outdir: Path, error_type: str, message: str):
        self.outdir, self.error_type, self.message = outdir, error_type, message
        self.calls: list[dict] = []

    def __call__(self, job, *, on_event, cancel=None, config=None):
        self.calls.append(job)
        timestring = job.get("resume") or "20240101120000"
        folder = self.outdir / f"full_{timestring}"
        done = outputs.contiguous_frames(folder, timestring)
        on_event({"type": "start", "folder": str(folder), "timestring": timestring, "clips": 1, "frames_total": 4,
                  "frames_on_disk": done, "resumed": bool(job.get("resume"))})
        last = 2 if len(self.calls) == 1 else 4
        for i in range(done, last):
            outputs.write_frame(folder, timestring, i, np.full((8, 8, 3), i, np.uint8))
        if len(self.calls) == 1:
            error = {"type": "error", "error_type": self.error_type, "message": self.message}
            on_event(error)
            return {"status": "failed", "error": self.message, "folder": str(folder), "timestring": timestring,
                    "frames_on_disk": 2, "frames_total": 4, "last_event": error}
        return {"status": "done", "folder": str(folder), "timestring": timestring, "frames_on_disk": 4,
                "frames_total": 4}


@pytest.mark.parametrize("error_type, message", [
    ("DiskFullError", "No space left on device while writing to /out/full: free some space, then resume 20240101120000"),
    ("OutputError", "ffmpeg could not encode 20240101120000.mp4: Error writing trailer: No space left on device"),
    ("OSError", "[Errno 122] Disk quota exceeded: '/out/full/20240101120000_settings.txt'"),
])
def test_a_full_disk_is_retryable_and_a_retry_resumes_the_same_timestring(tmp_path, make_queue, error_type, message):
    runner = DiskFullOnce(tmp_path / "out", error_type, message)
    q = make_queue(runner)
    _, (job_id,) = q.submit([SETTINGS])
    assert q.wait([job_id], WAIT)
    failed = q.get(job_id)
    assert (failed.status, failed.error_type, failed.frames_written) == ("FAILED", "RETRYABLE", 2)
    assert message in failed.message and f"/deforum_wan/jobs/{job_id}/retry" in failed.message
    assert q.retry(job_id) is True
    assert q.wait([job_id], WAIT)
    done = q.get(job_id)
    assert (done.status, done.attempts, done.timestring) == ("SUCCEEDED", 2, "20240101120000")
    assert runner.calls[1]["resume"] == "20240101120000"
    assert outputs.existing_frames(done.outdir, done.timestring) == [0, 1, 2, 3]


def test_settings_failures_stay_terminal_and_cannot_be_retried(tmp_path, make_queue):
    runner = FakeRunner(tmp_path / "out", status="failed", error="translation_x: cannot evaluate \"(t\" at frame 0")
    q = make_queue(runner)
    _, (job_id,) = q.submit([SETTINGS])
    assert q.wait([job_id], WAIT)
    rec = q.get(job_id)
    assert (rec.status, rec.error_type) == ("FAILED", "TERMINAL") and "/retry" not in rec.message
    assert q.retry(job_id) is False and "TERMINAL" in jobs.retry_refusal(rec)
    assert q.get(job_id).status == "FAILED" and runner.count == 1


def test_a_cancelled_job_can_be_retried_and_resumes_its_frames(tmp_path, make_queue):
    gate = threading.Event()
    runner = FakeRunner(tmp_path / "out", gate=gate)
    q = make_queue(runner)
    _, (running, queued) = q.submit([SETTINGS, dict(SETTINGS, seed=9)])
    assert runner.started.wait(WAIT)
    for _ in range(int(WAIT * 100)):
        if q.get(running).frames_written >= 1:
            break
        threading.Event().wait(0.01)
    assert q.cancel(queued) and q.cancel(running)
    assert q.wait([running, queued], WAIT)
    stopped = q.get(running)
    assert stopped.status == "CANCELLED" and stopped.frames_written >= 1
    gate.set()
    assert q.retry(running) and q.retry(queued)
    assert q.wait([running, queued], WAIT)
    assert [q.get(i).status for i in (running, queued)] == ["SUCCEEDED", "SUCCEEDED"]
    resumed = [c for c in runner.calls if c.get("resume")]
    assert [c["resume"] for c in resumed] == [stopped.timestring]  # the running one continued its frames
    assert "resume" not in runner.calls[-1]  # the one cancelled while queued starts fresh
    assert q.retry(running) is False and "already succeeded" in jobs.retry_refusal(q.get(running))
    with pytest.raises(KeyError):
        q.retry("batch-nope-0")


def test_a_queue_file_from_before_the_worker_column_still_opens_and_records_it(tmp_path):
    """Jobs record what the worker ran on; a queue file written by the previous version gains the column."""
    import sqlite3

    db = tmp_path / "jobs.sqlite3"
    old = sqlite3.connect(db)
    old.executescript(jobs._SCHEMA.replace(",\n    worker TEXT,\n    owner TEXT,\n    gpus TEXT\n", "\n"))  # version 1
    old.close()
    assert "worker" not in {r[1] for r in sqlite3.connect(db).execute("PRAGMA table_info(jobs)")}
    from deforum_wan.service.jobdata import event_values

    values = event_values({"type": "environment", "torch": "2.13.0+cpu", "diffusers": "0.42.1", "device": "cpu",
                           "errors": {}, "isolation": {"allowed": []}})
    assert json.loads(values["worker"]) == {"torch": "2.13.0+cpu", "diffusers": "0.42.1", "device": "cpu"}
    queue = jobs.JobQueue(db)
    try:
        assert {"worker", "owner", "gpus"} <= {r[1] for r in queue._db.execute("PRAGMA table_info(jobs)")}
    finally:
        queue.close()


def test_preview_events_set_the_records_preview_while_a_clip_denoises(tmp_path, make_queue):
    """A latent preview (every few steps) becomes the record's `preview`, which the tab and the API show."""
    from deforum_wan.service.jobdata import event_values

    assert event_values({"type": "preview", "clip": 0, "step": 4, "steps": 8, "path": "/o/.ts_preview0.png"}) == {
        "preview": "/o/.ts_preview0.png"}
    assert event_values({"type": "preview", "clip": None, "step": None, "path": None}) == {"preview": None}

    def runner(job, *, on_event, cancel=None, config=None):
        folder = tmp_path / "out" / "job_20240101000001"
        folder.mkdir(parents=True, exist_ok=True)
        on_event({"type": "start", "folder": str(folder), "timestring": "20240101000001", "clips": 1,
                  "frames_total": 1, "frames_on_disk": 0})
        for step, name in ((4, ".20240101000001_preview0.png"), (8, ".20240101000001_preview1.png")):
            on_event({"type": "step", "clip": 0, "clips": 1, "step": step, "steps": 8, "frames_written": 0,
                      "frames_total": 1})
            on_event({"type": "preview", "clip": 0, "step": step, "steps": 8, "path": str(folder / name)})
        frame = outputs.write_frame(folder, "20240101000001", 0, np.zeros((8, 8, 3), np.uint8))
        on_event({"type": "frames", "clip": 0, "frames_written": 1, "frames_total": 1, "preview": str(frame)})
        on_event({"type": "done", "folder": str(folder), "timestring": "20240101000001", "video": None,
                  "frames_on_disk": 1, "frames_total": 1})
        return {"status": "done", "folder": str(folder), "timestring": "20240101000001", "frames_on_disk": 1,
                "frames_total": 1}

    q = make_queue(runner, start=False)
    seen: list[tuple[str, int | None, str | None, str, str | None]] = []
    q.subscribe(lambda rec, ev: ev and seen.append((ev.get("type"), ev.get("step"), rec.preview, rec.phase,
                                                    rec.to_dict()["preview"])))
    _batch, ids = q.submit([SETTINGS], None)
    q.start()
    assert q.wait(ids, WAIT)
    previews = [(step, preview, phase, api) for kind, step, preview, phase, api in seen if kind == "preview"]
    assert [(s, Path(p).name, phase) for s, p, phase, _ in previews] == [
        (4, ".20240101000001_preview0.png", "GENERATING"), (8, ".20240101000001_preview1.png", "GENERATING")]
    assert all(api == p for _, p, _, api in previews)  # /deforum_wan/jobs/{id} returns the same path
    rec = q.get(ids[0])
    assert rec.status == "SUCCEEDED" and Path(rec.preview).name == outputs.frame_name("20240101000001", 0)


class WriterLagRunner:
    """The event sequence render.py sends: frames are handed to a background writer, so each
    frames/step event counts fewer frames than are rendered; the interrupted event counts the disk."""

    def __init__(self, outdir: Path):
        self.outdir = outdir

    def __call__(self, job, *, on_event, cancel=None, config=None):
        ts, total = "20240101000001", 120
        folder = self.outdir / f"job_{ts}"
        folder.mkdir(parents=True, exist_ok=True)
        on_event({"type": "start", "folder": str(folder), "timestring": ts, "clips": 8, "frames_total": total,
                  "frames_on_disk": 0, "resumed": False})
        for clip, written in enumerate((0, 0, 15, 30)):  # the writer a clip or two behind
            on_event({"type": "clip", "clip": clip, "clips": 8, "mode": "vace"})
            on_event({"type": "step", "clip": clip, "clips": 8, "step": 1, "steps": 2, "eta_seconds": 9.0,
                      "frames_written": written, "frames_total": total})
            on_event({"type": "frames", "clip": clip, "frames_written": written, "frames_total": total})
        for i in range(60):  # the writer catches up once the render stops
            outputs.write_frame(folder, ts, i, np.zeros((8, 8, 3), np.uint8))
        on_event({"type": "interrupted", "folder": str(folder), "timestring": ts, "frames_on_disk": 60,
                  "frames_total": total, "video": None, "resume": f"--resume {ts}"})
        return {"status": "interrupted", "folder": str(folder), "timestring": ts, "frames_on_disk": 60,
                "frames_total": total}


def test_phase_progress_follows_the_frames_on_disk_when_a_render_stops(tmp_path, make_queue):
    q = make_queue(WriterLagRunner(tmp_path / "out"))
    _, (job_id,) = q.submit([SETTINGS])
    assert q.wait([job_id], WAIT)
    rec = q.get(job_id)
    assert rec.status == "FAILED" and rec.frames_written == 60  # stopped from outside: retryable
    assert rec.phase_progress == pytest.approx(0.5), rec.phase_progress


def test_event_values_read_the_frames_on_disk_of_done_and_interrupted():
    from deforum_wan.service.jobdata import event_values

    stopped = event_values({"type": "interrupted", "frames_on_disk": 60, "frames_total": 120})
    assert (stopped["frames_written"], stopped["phase_progress"]) == (60, 0.5) and "video" not in stopped
    done = event_values({"type": "done", "frames_on_disk": 120, "frames_total": 120, "video": "/o/a.mp4"})
    assert (done["frames_written"], done["phase_progress"], done["video"]) == (120, 1.0, "/o/a.mp4")
    assert event_values({"type": "interrupted"}) == {}  # a cancel before the render started says nothing


def test_two_processes_on_one_queue_file_render_a_job_once(tmp_path):
    """Two web UIs sharing an extension checkout share its queue file: each job is claimed by one of them."""
    gate = threading.Event()
    first, second = FakeRunner(tmp_path / "out", gate=gate), FakeRunner(tmp_path / "out", gate=gate)
    db = tmp_path / "shared.sqlite3"
    a = JobQueue(db, runner=first, outdir=tmp_path / "out", default_model="vace").start()
    try:
        _, (job_id,) = a.submit([SETTINGS])
        assert first.started.wait(WAIT)
        b = JobQueue(db, runner=second, outdir=tmp_path / "out", default_model="vace")  # starts while a renders
        try:
            assert b.get(job_id).phase != jobs.QUEUED  # a's running job was not taken back by b's recovery
            b.start()
            gate.set()
            assert a.wait([job_id], WAIT)
            assert a.get(job_id).status == jobs.SUCCEEDED and a.get(job_id).attempts == 1
            assert second.count == 0 and first.count == 1
            _, ids = b.submit([SETTINGS] * 3)
            assert b.wait(ids, WAIT)
            assert first.count + second.count == 4  # every job ran exactly once, by one of the two
        finally:
            b.close()
    finally:
        a.close()


def test_a_job_whose_process_is_gone_is_taken_back(tmp_path):
    db = tmp_path / "jobs.sqlite3"
    q = JobQueue(db, runner=FakeRunner(tmp_path / "out"), outdir=tmp_path / "out", default_model="vace")
    _, (job_id,) = q.submit([SETTINGS])
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    q._update(job_id, phase=jobs.GENERATING, owner=f"{socket.gethostname()}:{dead.stdout.strip()}:abcd")
    q.close()
    again = JobQueue(db, runner=FakeRunner(tmp_path / "out"), outdir=tmp_path / "out", default_model="vace").start()
    try:
        assert again.wait([job_id], WAIT) and again.get(job_id).status == jobs.SUCCEEDED
    finally:
        again.close()


def test_a_failed_job_reports_the_progress_of_the_frames_it_kept(tmp_path):
    def runner(job, *, on_event, cancel=None, config=None):  # two frames, then out of memory
        folder = tmp_path / "out" / "oom_20240101000000"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(2):
            outputs.write_frame(folder, "20240101000000", i, np.zeros((8, 8, 3), np.uint8))
        on_event({"type": "start", "folder": str(folder), "timestring": "20240101000000", "clips": 2,
                  "frames_total": 8, "frames_on_disk": 0})
        on_event({"type": "error", "message": "CUDA out of memory"})
        return {"status": "failed", "error": "CUDA out of memory", "folder": str(folder),
                "timestring": "20240101000000", "frames_on_disk": 2, "frames_total": 8}

    q = JobQueue(tmp_path / "jobs.sqlite3", runner=runner, outdir=tmp_path / "out", default_model="vace").start()
    try:
        _, (job_id,) = q.submit([SETTINGS])
        assert q.wait([job_id], WAIT)
        rec = q.get(job_id)
        assert (rec.status, rec.frames_written, rec.frames_total) == (jobs.FAILED, 2, 8)
        assert rec.phase_progress == pytest.approx(0.25)  # was 0: the record said 2/8 frames but 0 % done
    finally:
        q.close()
