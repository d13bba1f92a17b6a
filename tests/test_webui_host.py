"""Jobs inside the web UI behave as the host's own: begin/end, /sdapi/v1/progress, Interrupt, stale flags.

`A1111State` reproduces what Automatic1111 1.10's modules/shared_state.py does
in begin(), end() and interrupt(), and `progressapi` what its
/sdapi/v1/progress computes from it (modules/api/api.py), so these tests fail
the way the real host failed: a TypeError when a job runs without begin(), a
cancelled job when an old Interrupt was never cleared.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

from test_jobs import SETTINGS, WAIT, FakeRunner

from deforum_wan.service.jobs import CANCELLED, SUCCEEDED, JobQueue
from deforum_wan.webui import host


class A1111State:
    """The fields and methods of A1111's `shared.state` that a job touches."""

    def __init__(self):
        self.job_count = 0
        self.job_no = 0
        self.sampling_step = 0
        self.sampling_steps = 0
        self.time_start = None
        self.interrupted = False
        self.stopping_generation = False
        self.textinfo = None
        self.job = ""
        self.begins = self.ends = 0

    def begin(self, job: str = "(unknown)"):
        self.sampling_step = 0
        self.time_start = time.time()
        self.job_count = -1
        self.job_no = 0
        self.interrupted = False
        self.stopping_generation = False
        self.textinfo = None
        self.job = job
        self.begins += 1

    def end(self):
        self.job = ""
        self.job_count = 0
        self.ends += 1

    def interrupt(self):
        self.interrupted = True


def progressapi(state: A1111State) -> dict:
    """What A1111's /sdapi/v1/progress returns (the arithmetic that raised a TypeError before)."""
    if state.job_count == 0:
        return {"progress": 0, "eta_relative": 0, "job_count": 0}
    progress = 0.01
    if state.job_count > 0:
        progress += state.job_no / state.job_count
    if state.sampling_steps > 0:
        progress += 1 / state.job_count * state.sampling_step / state.sampling_steps
    time_since_start = time.time() - state.time_start
    eta = time_since_start / progress
    return {"progress": min(progress, 1), "eta_relative": eta - time_since_start, "job_count": state.job_count}


def _queue(tmp_path: Path, runner: FakeRunner) -> tuple[JobQueue, A1111State, host.HostMirror]:
    queue = JobQueue(tmp_path / "jobs.sqlite3", runner=runner, outdir=tmp_path / "out", default_model="vace")
    state = A1111State()
    mirror = host.HostMirror(queue, state, poll_seconds=0.02)
    queue.subscribe(mirror)
    return queue.start(), state, mirror


def test_an_interrupt_pressed_before_the_job_does_not_cancel_it(tmp_path):
    queue, state, _mirror = _queue(tmp_path, FakeRunner(tmp_path / "out"))
    try:
        state.interrupt()  # pressed while idle, or to stop an SD job long ago
        (job_id,) = queue.submit([SETTINGS])[1]
        assert queue.wait([job_id], WAIT)
        assert queue.get(job_id).status == SUCCEEDED
        assert state.begins == 1 and state.ends == 1 and state.job == "" and state.job_count == 0
    finally:
        queue.close()


def test_the_hosts_progress_api_works_during_and_after_a_job(tmp_path):
    gate = threading.Event()
    runner = FakeRunner(tmp_path / "out", frames=4, gate=gate)
    queue, state, _mirror = _queue(tmp_path, runner)
    try:
        (job_id,) = queue.submit([SETTINGS])[1]
        assert runner.started.wait(WAIT)
        deadline = time.monotonic() + WAIT
        while state.sampling_steps == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        during = progressapi(state)  # before: TypeError (time_start None) because begin() never ran
        assert 0 < during["progress"] <= 1 and during["job_count"] == 2 and state.job == "Deforum Wan"
        gate.set()
        assert queue.wait([job_id], WAIT)
        assert progressapi(state) == {"progress": 0, "eta_relative": 0, "job_count": 0}  # not a stale "job_count 2"
    finally:
        queue.close()


def test_an_interrupt_during_the_job_cancels_it_once_and_keeps_its_frames(tmp_path):
    gate = threading.Event()
    runner = FakeRunner(tmp_path / "out", frames=4, gate=gate)
    queue, state, _mirror = _queue(tmp_path, runner)
    cancels = []
    original = queue.cancel

    def counting_cancel(job_id):
        cancels.append(job_id)
        return original(job_id)

    queue.cancel = counting_cancel
    try:
        (job_id,) = queue.submit([SETTINGS])[1]
        assert runner.started.wait(WAIT)
        state.interrupt()  # the worker is silent (held at its first frame): the watcher notices
        assert queue.wait([job_id], WAIT)
        record = queue.get(job_id)
        assert record.status == CANCELLED and record.frames_written >= 1
        assert cancels == [job_id]  # once: the cancel's own notification does not cancel again
        assert state.ends == 1 and state.job_count == 0
        (next_id,) = queue.submit([SETTINGS])[1]  # the flag is cleared at the next job's start
        gate.set()
        assert queue.wait([next_id], WAIT) and queue.get(next_id).status == SUCCEEDED
    finally:
        queue.close()


def test_mirroring_is_subscribed_once_per_queue(tmp_path, monkeypatch):
    queue = JobQueue(tmp_path / "jobs.sqlite3", runner=FakeRunner(tmp_path / "out"), outdir=tmp_path / "out")
    monkeypatch.setattr(host, "_state", lambda: A1111State())
    try:
        first = host.mirror_host_progress(queue)
        assert first is not None and host.mirror_host_progress(queue) is first
    finally:
        queue.close()


def test_each_web_ui_folder_has_its_own_queue_file(tmp_path, monkeypatch):
    """A1111 and Forge sharing one extension checkout must not render each other's jobs."""
    monkeypatch.delenv("DEFORUM_WAN_JOBS_DB", raising=False)
    monkeypatch.setattr(host, "_webui_root", lambda: str(tmp_path / "a1111"))
    a1111 = host.db_path()
    monkeypatch.setattr(host, "_webui_root", lambda: str(tmp_path / "forge"))
    forge = host.db_path()
    assert a1111 != forge and a1111.parent == forge.parent and host.db_path() == forge
    monkeypatch.setenv("DEFORUM_WAN_JOBS_DB", str(tmp_path / "mine.sqlite3"))
    assert host.db_path() == tmp_path / "mine.sqlite3"


def test_registering_never_walks_the_stack(monkeypatch):
    """A1111/Forge's public on_* find the caller with inspect.stack() (about 70 ms each in a started web UI)."""
    import inspect
    import sys
    import types

    calls = []

    def add_callback(callbacks, fun, *, name=None, category="unknown", filename=None):  # as in both hosts
        if filename is None:
            filename = inspect.stack()[1].filename
        callbacks.append((filename, category, fun))

    callback_map = {"callbacks_ui_tabs": [], "callbacks_ui_settings": [], "callbacks_app_started": []}
    cb = types.ModuleType("modules.script_callbacks")
    cb.add_callback, cb.callback_map = add_callback, callback_map
    for key, category, name in host.CALLBACKS:
        setattr(cb, name, lambda fn, _k=key, _c=category: add_callback(callback_map[_k], fn, category=_c))
    modules = types.ModuleType("modules")
    modules.script_callbacks = cb
    monkeypatch.setitem(sys.modules, "modules", modules)
    monkeypatch.setitem(sys.modules, "modules.script_callbacks", cb)
    monkeypatch.setattr(inspect, "stack", lambda *a, **k: calls.append("stack") or [])
    host.register("/webui/extensions/deforum-wan/scripts/deforum_wan_tab.py")
    assert calls == []
    assert [entry[:2] for entries in callback_map.values() for entry in entries] == [
        ("/webui/extensions/deforum-wan/scripts/deforum_wan_tab.py", "ui_tabs"),
        ("/webui/extensions/deforum-wan/scripts/deforum_wan_tab.py", "ui_settings"),
        ("/webui/extensions/deforum-wan/scripts/deforum_wan_tab.py", "app_started")]
    del cb.add_callback  # a host without it: the public functions still register everything
    for entries in callback_map.values():
        entries.clear()
    monkeypatch.setattr(inspect, "stack", lambda *a, **k: [types.SimpleNamespace(filename="x")] * 2)
    host.register("/webui/extensions/deforum-wan/scripts/deforum_wan_tab.py")
    assert sum(len(v) for v in callback_map.values()) == 3
