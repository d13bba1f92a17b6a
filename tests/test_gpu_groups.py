"""GPU groups: the queue runs one job per group at once, each pinned to its group, each exactly once."""
from __future__ import annotations

import json
import threading
import time

import pytest
from test_jobs import SETTINGS, WAIT, FakeRunner
from test_webui_host import A1111State, progressapi

from deforum_wan.renderer import outputs
from deforum_wan.service import bridge, gpu_groups
from deforum_wan.service.jobs import CANCELLED, SUCCEEDED, JobQueue
from deforum_wan.webui import host


def test_groups_are_parsed_from_the_setting_or_the_environment():
    assert gpu_groups.parse_gpu_groups("") == (None,)
    assert gpu_groups.parse_gpu_groups(" 0, 1 ; 2,3 ") == ("0,1", "2,3")
    assert gpu_groups.parse_gpu_groups("0;1;2;3") == ("0", "1", "2", "3")
    assert gpu_groups.parse_gpu_groups("GPU-8f2a1c3d-aaaa;MIG-1b2c") == ("GPU-8f2a1c3d-aaaa", "MIG-1b2c")
    assert gpu_groups.configured_groups(None, {"DEFORUM_WAN_GPUS": "0,1;2,3"}) == ("0,1", "2,3")
    assert gpu_groups.configured_groups("4;5", {"DEFORUM_WAN_GPUS": "0,1;2,3"}) == ("4", "5")  # the setting wins
    assert gpu_groups.configured_groups("", {}) == (None,)
    assert gpu_groups.pin_env("2,3") == {"CUDA_VISIBLE_DEVICES": "2,3"} and gpu_groups.pin_env(None) == {}


@pytest.mark.parametrize("text, message", [
    ("0;;1", "group 2 of '0;;1' is empty"),
    ("0,", "group 1 of '0,' is empty"),
    ("0,1;1,2", "GPU 1 is in group 1 and group 2"),
    ("cuda:0", "'cuda:0' in group 1 is not a GPU index"),
    ("0;$(rm -rf /)", "is not a GPU index"),
])
def test_bad_groups_name_the_variable_and_the_problem(text, message):
    with pytest.raises(ValueError, match="DEFORUM_WAN_GPUS: ") as info:
        gpu_groups.configured_groups(None, {"DEFORUM_WAN_GPUS": text})
    assert message in str(info.value)
    with pytest.raises(ValueError, match="deforum_wan_gpus: "):
        gpu_groups.configured_groups(text, {})
    with pytest.raises(ValueError, match="job.gpu_group"):
        gpu_groups.pin_env("0;1")


def test_a_job_takes_its_groups_gpus_along(tmp_path):
    """The worker job carries the group (for a render that splits a clip); run_job pins the process to it."""
    gate = threading.Event()
    runner = FakeRunner(tmp_path / "out", gate=gate)
    queue = JobQueue(tmp_path / "jobs.sqlite3", runner=runner, outdir=tmp_path / "out", default_model="vace",
                     slots=("0,1", "2,3")).start()
    try:
        ids = queue.submit([SETTINGS, SETTINGS, SETTINGS])[1]
        deadline = time.monotonic() + WAIT
        while len(queue.running_jobs()) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        running = queue.running_jobs()
        assert [r.id for r in running] == ids[:2]  # FIFO: the first two, one per group
        assert sorted(r.gpus for r in running) == ["0,1", "2,3"]
        assert queue.get(ids[2]).phase == "QUEUED"  # no third group: it waits
        assert sorted(job["gpu_group"] for job in runner.calls) == ["0,1", "2,3"]
        from deforum_wan.service import api  # the API's job list shows both running jobs and their groups

        list_jobs = next(endpoint for path, endpoint, methods, _ in api.route_table(queue)
                         if path.endswith("/jobs") and methods == ["GET"])
        listed = json.loads(list_jobs().body)
        assert {i: (listed[i]["phase"] != "QUEUED", listed[i]["gpus"]) for i in ids} == {
            ids[0]: (True, running[0].gpus), ids[1]: (True, running[1].gpus), ids[2]: (False, None)}
        assert queue.cancel(ids[0])  # one group's job stops; the other keeps rendering
        assert queue.wait([ids[0]], WAIT) and queue.get(ids[0]).status == CANCELLED
        assert queue.get(ids[1]).running
        gate.set()
        assert queue.wait(ids, WAIT)
        assert [queue.get(i).status for i in ids[1:]] == [SUCCEEDED, SUCCEEDED]
        assert runner.max_active == 2 and runner.count == 3
        assert queue.get(ids[2]).to_dict()["gpus"] in ("0,1", "2,3")
    finally:
        queue.close(WAIT)


def test_the_hosts_progress_shows_every_running_job_and_interrupt_stops_them(tmp_path):
    gate = threading.Event()
    runner = FakeRunner(tmp_path / "out", frames=4, gate=gate)
    queue = JobQueue(tmp_path / "jobs.sqlite3", runner=runner, outdir=tmp_path / "out", default_model="vace",
                     slots=("0", "1"))
    state = A1111State()
    queue.subscribe(host.HostMirror(queue, state, poll_seconds=0.02))
    queue.start()
    try:
        ids = queue.submit([SETTINGS, SETTINGS])[1]
        deadline = time.monotonic() + WAIT
        while not (state.textinfo and all(i in state.textinfo for i in ids)) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert state.textinfo.startswith("Wan, 2 jobs") and all(i in state.textinfo for i in ids), state.textinfo
        assert state.begins == 1 and state.job_count == 4  # two jobs of two clips each
        assert 0 < progressapi(state)["progress"] <= 1
        state.interrupt()  # the host's Interrupt: every job of ours stops, keeping its frames
        assert queue.wait(ids, WAIT)
        assert [queue.get(i).status for i in ids] == [CANCELLED, CANCELLED]
        assert all(queue.get(i).frames_written >= 1 for i in ids)
        assert state.begins == 1 and state.ends == 1 and state.job_count == 0
    finally:
        gate.set()
        queue.close(WAIT)


@pytest.mark.slow
def test_two_gpu_groups_render_two_jobs_at_once_each_exactly_once(tiny_models, tmp_path):
    """Two groups on this CPU machine ("0" and "1": no CUDA, so each worker renders on the CPU) run two real
    tiny T2V renders in two worker processes whose run intervals overlap; each job runs once, pinned."""
    queue = JobQueue(tmp_path / "jobs.sqlite3", outdir=tmp_path / "out", slots=("0", "1"),
                     config=bridge.WorkerConfig(deps_dir=""))
    seen: dict[str, list[tuple[float, dict]]] = {}
    lock = threading.Lock()

    def record(rec, event):
        if event is not None:
            with lock:
                seen.setdefault(rec.id, []).append((time.monotonic(), event))

    queue.subscribe(record)
    settings = {**SETTINGS, "max_frames": 20, "W": 32, "H": 32, "batch_name": "groups_{timestring}"}
    try:
        ids = queue.submit([settings, settings], {"model": str(tiny_models["t2v"]), "steps": 1,
                                                  "max_clip_frames": 5, "device": "cpu"})[1]
        queue.start()
        assert queue.wait(ids, 300)
        records = [queue.get(i) for i in ids]
        assert [r.status for r in records] == [SUCCEEDED, SUCCEEDED], [r.message for r in records]
        intervals = []
        for r in records:
            events = seen[r.id]
            kinds = [e["type"] for _, e in events]
            assert kinds.count("worker") == 1 and kinds.count("start") == 1 and kinds.count("done") == 1  # once
            assert r.attempts == 1
            environment = next(e for _, e in events if e["type"] == "environment")
            assert environment["visible_devices"] == r.gpus  # the worker process saw only its group
            assert r.worker["visible_devices"] == r.gpus
            assert outputs.existing_frames(r.outdir, r.timestring) == list(range(20))
            intervals.append((next(t for t, e in events if e["type"] == "start"),
                              next(t for t, e in events if e["type"] == "done")))
        assert sorted(r.gpus for r in records) == ["0", "1"]
        assert records[0].outdir != records[1].outdir or records[0].timestring != records[1].timestring
        (start_a, end_a), (start_b, end_b) = intervals
        assert max(start_a, start_b) < min(end_a, end_b), intervals  # both rendered at the same time
    finally:
        queue.close(WAIT)


def test_doctor_says_how_many_jobs_run_at_once(tmp_path, monkeypatch):
    from deforum_wan.service import doctor

    monkeypatch.delenv("DEFORUM_WAN_FARM", raising=False)
    monkeypatch.setenv("DEFORUM_WAN_GPUS", "0,1;2,3")
    report = doctor.diagnose(tmp_path, probe=False)
    assert report["jobs"] == {"gpu_groups": ["0,1", "2,3"], "farm": None}
    assert "jobs at once           2, one per GPU group: 0,1; 2,3" in doctor.format_report(report)
    monkeypatch.setenv("DEFORUM_WAN_GPUS", "0;0")
    report = doctor.diagnose(tmp_path, probe=False)
    assert any(fix.startswith("DEFORUM_WAN_GPUS: GPU 0 is in group 1 and group 2") for fix in report["fixes"])
    monkeypatch.setenv("DEFORUM_WAN_FARM", "auto")
    assert "on the Ray farm at auto" in doctor.format_report(doctor.diagnose(tmp_path, probe=False))


def test_a_pinned_job_splits_its_clips_across_its_whole_group_as_its_worker_numbers_them():
    """CUDA_VISIBLE_DEVICES=2,3 makes them cuda:0 and cuda:1 inside the worker: those are what the ranks use."""
    assert gpu_groups.group_gpus("2,3") == (0, 1)
    assert gpu_groups.group_gpus("5") == () and gpu_groups.group_gpus(None) == ()
    with pytest.raises(ValueError, match="job.gpu_group"):
        gpu_groups.group_gpus("0;1")
