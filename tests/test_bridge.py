"""The web-UI side of a render: a worker process with its own libraries, streamed, cancelled, killed, survived."""
from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deforum_wan.service import bridge, deps
from deforum_wan.renderer import outputs
from deforum_wan.service.bridge import HostProgress, WorkerConfig, run_job, worker_command

NO_DEPS = WorkerConfig(deps_dir="")  # the test environment has the renderer libraries itself


def settings(**kw) -> dict:
    data = {"prompts": {"0": "a red fox", "12": "a blue bird"}, "max_frames": 24, "fps": 16, "W": 32, "H": 32,
            "seed": 5, "batch_name": "bridge_{timestring}", "animation_mode": "3D"}
    data.update(kw)
    return data


def tiny_job(tiny_models, outdir: Path, **kw) -> dict:
    job = {"settings": settings(), "model": str(tiny_models["vace"]), "outdir": str(outdir),
           "options": {"steps": 2, "max_clip_frames": 9, "seed": 7}}
    job.update(kw)
    return job


class Events(list):
    """Collects events; `then` runs once, on the first event of type `on_type` that `when` accepts."""

    def __init__(self, on_type: str | None = None, then=None, when=lambda event: True):
        super().__init__()
        self.on_type, self.then, self.when, self.fired = on_type, then, when, False

    def __call__(self, event: dict) -> None:
        self.append(event)
        if self.then and not self.fired and event["type"] == self.on_type and self.when(event):
            self.fired = True
            self.then(self, event)

    def of(self, kind: str) -> list[dict]:
        return [e for e in self if e["type"] == kind]

    @property
    def pid(self) -> int:
        return self.of("worker")[0]["pid"]


def assert_complete(outcome, frames: int) -> None:
    assert outcome.status == "done", outcome.error
    assert outcome.returncode == 0 and outcome.error is None
    assert outcome.frames_on_disk == outcome.frames_total == frames
    assert outputs.existing_frames(outcome.folder, outcome.timestring) == list(range(frames))
    assert outcome.video and outputs.probe_video(outcome.video) == (frames, 16.0)


# --------------------------------------------------------------------------- real renders through the worker


def test_a_job_runs_in_a_worker_and_streams_its_events(tiny_models, tmp_path):
    events = Events()
    outcome = run_job(tiny_job(tiny_models, tmp_path), on_event=events, config=NO_DEPS)
    assert_complete(outcome, 24)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "worker" and events[0]["pid"] > 0
    # the worker says what it runs on before the render starts; the job record keeps it
    assert kinds[1] == "environment" and events[1]["torch"] and events[1]["diffusers"] and events[1]["device"] == "cpu"
    assert kinds[2] == "start" and kinds[-1] == "done" and "step" in kinds and "frames" in kinds
    assert outcome.last_event["type"] == "done" and Path(outcome.folder).name.startswith("bridge_")


def test_killed_worker_is_reported_as_crashed_and_the_next_job_succeeds(tiny_models, tmp_path):
    def kill(events: Events, _event: dict) -> None:
        os.kill(events.pid, signal.SIGKILL)

    events = Events("frames", kill, when=lambda e: e["frames_written"] > 0)  # the writer thread has saved some
    outcome = run_job(tiny_job(tiny_models, tmp_path), on_event=events, config=NO_DEPS)
    assert outcome.status == "crashed"
    assert outcome.returncode == -signal.SIGKILL
    assert "SIGKILL" in outcome.error and "worker died" in outcome.error
    assert "clip" in outcome.error and outcome.timestring in outcome.error  # where it died and how to resume
    assert 0 < outcome.frames_on_disk < 24
    assert outputs.existing_frames(outcome.folder, outcome.timestring) == list(range(outcome.frames_on_disk))

    # this process is still here, and the next job renders from start to finish
    again = run_job(tiny_job(tiny_models, tmp_path / "again"), on_event=Events(), config=NO_DEPS)
    assert_complete(again, 24)


def test_cancel_interrupts_keeps_frames_and_resume_finishes(tiny_models, tmp_path):
    cancel = threading.Event()
    events = Events("frames", lambda ev, e: cancel.set())
    first = run_job(tiny_job(tiny_models, tmp_path), on_event=events, cancel=cancel, config=NO_DEPS)
    assert first.status == "interrupted", first.error
    assert first.returncode == 130 and first.video is None
    assert 0 < first.frames_on_disk < 24
    assert outputs.existing_frames(first.folder, first.timestring) == list(range(first.frames_on_disk))
    assert events[-1]["type"] == "interrupted" and events[-1]["resume"] == f"--resume {first.timestring}"

    second = run_job(tiny_job(tiny_models, tmp_path, resume=first.timestring), on_event=Events(), config=NO_DEPS)
    assert_complete(second, 24)
    assert second.folder == first.folder


def test_a_bad_schedule_fails_with_the_workers_message(tiny_models, tmp_path):
    job = tiny_job(tiny_models, tmp_path, settings=settings(zoom="0:(1+"))
    outcome = run_job(job, on_event=Events(), config=NO_DEPS)
    assert outcome.status == "failed" and outcome.returncode == 1
    assert "zoom" in outcome.error and "\n" not in outcome.error
    assert outcome.last_event["type"] == "error" and outcome.last_event["message"] == outcome.error


# --------------------------------------------------------------------------- the private folder


@pytest.fixture(scope="module")
def private_diffusers(tmp_path_factory) -> Path:
    """A private folder holding a copy of the installed diffusers that records where it was imported from."""
    require = pytest.importorskip("diffusers")
    folder = tmp_path_factory.mktemp("private") / "deps"
    source = Path(require.__file__).parent
    shutil.copytree(source, folder / "diffusers", ignore=shutil.ignore_patterns("__pycache__"))
    dist = importlib.metadata.distribution("diffusers")
    info = Path(dist._path)  # the dist-info folder  # noqa: SLF001
    shutil.copytree(info, folder / info.name)
    init = folder / "diffusers" / "__init__.py"
    init.write_text(init.read_text() + textwrap.dedent("""
        import os as _os
        if _os.environ.get("DEFORUM_WAN_TEST_MARKER"):
            with open(_os.environ["DEFORUM_WAN_TEST_MARKER"], "a") as _f:
                _f.write(__file__ + "\\n")
    """))
    return folder


def test_worker_imports_diffusers_from_the_private_folder(tiny_models, tmp_path, private_diffusers):
    config = WorkerConfig(deps_dir=str(private_diffusers), env={"DEFORUM_WAN_TEST_MARKER": str(tmp_path / "marker")})
    argv, env = worker_command(tmp_path / "job.json", config)
    paths = env["PYTHONPATH"].split(os.pathsep)
    assert paths[0] == str(private_diffusers.resolve()) and paths[1] == str(bridge.SCRIPTS_DIR)
    assert argv[1:5] == ["-s", "-m", "deforum_wan", "worker"]
    probe = subprocess.run([config.python, "-c", "import diffusers, importlib.metadata as m; "
                            "print(diffusers.__file__); print(m.distribution('diffusers')._path)"],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    module_file, dist_info = probe.stdout.split()
    assert Path(module_file).is_relative_to(private_diffusers.resolve())
    assert Path(dist_info).is_relative_to(private_diffusers.resolve())  # version checks see the private copy too

    events = Events()
    outcome = run_job(tiny_job(tiny_models, tmp_path / "out", settings=settings(max_frames=9)), on_event=events,
                      config=config)
    assert_complete(outcome, 9)
    assert events[0]["deps_dir"] == str(private_diffusers)
    imported = (tmp_path / "marker").read_text().split()
    assert imported and all(Path(p).is_relative_to(private_diffusers.resolve()) for p in imported)


def test_default_config_uses_the_private_folder_only_when_it_is_complete(tmp_path, monkeypatch):
    from test_deps import SMALL_REPORT, FakePip

    target = tmp_path / "deps"
    monkeypatch.setenv(deps.ENV_DEPS_DIR, str(target))
    _argv, env = worker_command("job.json", WorkerConfig())
    assert str(target) not in env["PYTHONPATH"]
    deps.install_private_deps(str(target), runner=FakePip(SMALL_REPORT), out=lambda s: None)
    _argv, env = worker_command("job.json", WorkerConfig())
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(target.resolve())
    _argv, env = worker_command("job.json", WorkerConfig(deps_dir=""))
    assert str(target) not in env["PYTHONPATH"]


def test_worker_python_follows_the_environment(monkeypatch):
    monkeypatch.setenv(bridge.ENV_WORKER_PYTHON, "/opt/other/python")
    assert WorkerConfig().python == "/opt/other/python"
    assert worker_command("j.json", WorkerConfig())[0][0] == "/opt/other/python"
    monkeypatch.delenv(bridge.ENV_WORKER_PYTHON)
    assert WorkerConfig().python == sys.executable


# --------------------------------------------------------------------------- workers that misbehave (no render)

FAKE_WORKER = """\
import json, os, signal, sys, time
mode = os.environ["FAKE_MODE"]
job = json.load(open(sys.argv[-1]))
def emit(e):
    print(json.dumps(e), flush=True)
if mode == "exit3":
    print("starting up", flush=True)
    print("Traceback: something broke badly", file=sys.stderr, flush=True)
    sys.exit(3)
if mode == "missing":
    emit({"type": "error", "error_type": "ModuleNotFoundError", "message": "No module named 'diffusers'"})
    sys.exit(1)
if mode in ("stubborn", "polite"):  # polite: only the stop file stops it
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
emit({"type": "start", "folder": os.getcwd(), "timestring": "20240101000000", "clips": 1, "frames_total": 4,
      "frames_on_disk": 0})
for step in range(100000):
    emit({"type": "step", "clip": 0, "clips": 1, "step": step, "steps": 100000})
    if mode == "polite" and os.path.exists(job["stop_file"]):
        emit({"type": "interrupted", "frames_on_disk": 0, "frames_total": 4})
        sys.exit(130)
    time.sleep(0.05)
"""


@pytest.fixture
def fake_worker(tmp_path):
    script = tmp_path / "fake_python"
    script.write_text(f"#!{sys.executable}\n" + FAKE_WORKER)
    script.chmod(0o755)

    def config(mode: str, **kw) -> WorkerConfig:
        return WorkerConfig(python=str(script), deps_dir="", env={"FAKE_MODE": mode}, **kw)

    return config


def test_a_worker_that_exits_without_a_result_is_a_crash_with_its_last_words(fake_worker, tmp_path):
    events = Events()
    outcome = run_job({"settings": {}, "model": "x"}, on_event=events, config=fake_worker("exit3"), workdir=tmp_path)
    assert outcome.status == "crashed" and outcome.returncode == 3
    assert "code 3" in outcome.error and "something broke badly" in outcome.error
    assert {"type": "log", "message": "starting up"} in events


def test_missing_renderer_libraries_say_how_to_install_them(fake_worker, tmp_path):
    outcome = run_job({"settings": {}, "model": "x"}, on_event=Events(), config=fake_worker("missing"), workdir=tmp_path)
    assert outcome.status == "failed"
    assert "No module named 'diffusers'" in outcome.error and deps.install_command() in outcome.error


def test_cancel_uses_the_stop_file(fake_worker, tmp_path):
    cancel = threading.Event()
    events = Events("step", lambda ev, e: cancel.set())
    outcome = run_job({"settings": {}, "model": "x"}, on_event=events, cancel=cancel, config=fake_worker("polite"),
                      workdir=tmp_path)
    assert outcome.status == "interrupted" and outcome.returncode == 130


@pytest.mark.skipif(os.name == "nt", reason="POSIX signals")
def test_a_worker_that_ignores_cancel_is_killed_after_the_grace_period(fake_worker, tmp_path):
    cancel = threading.Event()
    events = Events("step", lambda ev, e: cancel.set())
    outcome = run_job({"settings": {}, "model": "x"}, on_event=events, cancel=cancel,
                      config=fake_worker("stubborn", stop_grace_seconds=1.0), workdir=tmp_path)
    assert outcome.status == "interrupted" and outcome.returncode == -signal.SIGKILL
    assert "killed" in outcome.error


def test_a_failing_event_callback_stops_the_worker_and_propagates(fake_worker, tmp_path):
    def boom(events: Events, _event: dict) -> None:
        raise RuntimeError("callback broke")

    events = Events("step", boom)
    with pytest.raises(RuntimeError, match="callback broke"):
        run_job({"settings": {}, "model": "x"}, on_event=events, config=fake_worker("stubborn", stop_grace_seconds=1),
                workdir=tmp_path)
    with pytest.raises(ProcessLookupError):
        os.kill(events.pid, 0)  # gone, not orphaned


def test_a_worker_that_cannot_start_is_a_crash(tmp_path):
    outcome = run_job({"settings": {}, "model": "x"}, on_event=Events(),
                      config=WorkerConfig(python=str(tmp_path / "no-python"), deps_dir=""), workdir=tmp_path)
    assert outcome.status == "crashed" and "cannot start the worker" in outcome.error


def test_cancel_before_start_runs_nothing(tmp_path):
    cancel = threading.Event()
    cancel.set()
    events = Events()
    outcome = run_job({"settings": {}, "model": "x"}, on_event=events, cancel=cancel, workdir=tmp_path)
    assert outcome.status == "interrupted" and events == []


def test_the_job_file_and_stop_file_are_cleaned_up(fake_worker, tmp_path):
    run_job({"settings": {}, "model": "x"}, on_event=Events(), config=fake_worker("exit3"), workdir=tmp_path)
    assert not list(tmp_path.glob("job-*.json")) and not list(tmp_path.glob("stop-*"))


# --------------------------------------------------------------------------- the host's progress and model


class FakeState:
    """The fields of A1111/Forge `shared.state` the tab relies on."""

    def __init__(self):
        self.job_count = self.job_no = self.sampling_step = self.sampling_steps = 0
        self.textinfo = None
        self.interrupted = False
        self.images = []

    def assign_current_image(self, image):
        self.images.append(image)


def test_host_progress_mirrors_events_into_shared_state(tmp_path):
    frame = tmp_path / "frame.png"
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(frame)
    state = FakeState()
    progress = bridge.state_updater(state)
    progress({"type": "worker", "pid": 1})
    progress({"type": "start", "clips": 3, "frames_total": 40, "frames_on_disk": 0})
    assert state.job_count == 3 and state.job_no == 0
    progress({"type": "clip", "clip": 1, "clips": 3, "mode": "vace"})
    progress({"type": "step", "clip": 1, "clips": 3, "step": 4, "steps": 20, "eta_seconds": 95.0,
              "frames_written": 13, "frames_total": 40})
    assert (state.job_no, state.sampling_step, state.sampling_steps) == (1, 4, 20)
    assert "clip 2/3" in state.textinfo and "step 4/20" in state.textinfo and "1m35s" in state.textinfo
    progress({"type": "frames", "clip": 1, "frames_written": 26, "frames_total": 40, "preview": str(frame)})
    assert len(state.images) == 1 and state.images[0].size == (32, 32)
    live = tmp_path / ".ts_preview0.png"
    Image.fromarray(np.full((16, 24, 3), 200, np.uint8)).save(live)
    progress({"type": "preview", "clip": 2, "step": 4, "steps": 8, "path": str(live)})
    assert len(state.images) == 2 and state.images[1].size == (24, 16)  # the denoising preview reaches the host
    progress({"type": "done", "frames_on_disk": 40, "frames_total": 40})
    assert state.job_no == 3 and "done" in state.textinfo
    assert not progress.cancel.is_set()


def test_host_progress_turns_interrupt_into_cancel():
    state = FakeState()
    progress = HostProgress(state)
    progress({"type": "status", "phase": "loading", "message": "loading model"})
    assert not progress.cancel.is_set() and "loading model" in state.textinfo
    state.interrupted = True
    progress({"type": "step", "clip": 0, "clips": 1, "step": 1, "steps": 2})
    assert progress.cancel.is_set()


def test_host_progress_notices_interrupt_while_the_worker_is_silent():
    state = FakeState()
    with HostProgress(state, poll_seconds=0.05) as progress:
        state.interrupted = True
        assert progress.cancel.wait(30)


def test_host_progress_survives_a_strange_state():
    class ReadOnly:
        interrupted = False

        def __setattr__(self, name, value):
            raise AttributeError(name)

    progress = HostProgress(ReadOnly())
    progress({"type": "start", "clips": 2, "frames_total": 4})
    progress({"type": "step", "clip": "x"})


def test_unload_host_model_outside_a_web_ui_does_nothing(monkeypatch):
    monkeypatch.delitem(sys.modules, "modules.shared", raising=False)
    assert bridge.unload_host_model() is None


def _fake_modules(monkeypatch, **mods):
    for name, module in mods.items():
        monkeypatch.setitem(sys.modules, name, module)


class FakeA1111Models:
    """A1111 1.10's sd_models as far as unloading goes: `shared.sd_model` loads a checkpoint when none is loaded."""

    def __init__(self, loaded: object | None):
        self.model_data = types.SimpleNamespace(sd_model=loaded)
        self.loads: list[str] = []
        self.moved: list[object] = []

    def shared_sd_model(self):  # the property A1111's shared module exposes
        if self.model_data.sd_model is None:
            self.loads.append("load_model")  # "Stable diffusion model failed to load" without a checkpoint
            self.model_data.sd_model = object()
        return self.model_data.sd_model

    def unload_model_weights(self, sd_model=None, info=None):
        self.moved.append(sd_model or self.shared_sd_model())
        return sd_model


def _fake_a1111(monkeypatch, loaded):
    calls = []
    sd_models = FakeA1111Models(loaded)
    modules = types.ModuleType("modules")
    devices = types.SimpleNamespace(torch_gc=lambda: calls.append("gc"))
    modules.sd_models = sd_models
    monkeypatch.delitem(sys.modules, "backend.memory_management", raising=False)
    monkeypatch.delitem(sys.modules, "modules_forge", raising=False)
    _fake_modules(monkeypatch, modules=modules, **{"modules.shared": types.ModuleType("modules.shared"),
                                                   "modules.sd_models": sd_models, "modules.devices": devices})
    return sd_models, calls


def test_unload_host_model_in_a1111_moves_the_loaded_checkpoint(monkeypatch):
    checkpoint = object()
    sd_models, calls = _fake_a1111(monkeypatch, checkpoint)
    assert bridge.unload_host_model() == "moved the SD checkpoint off the GPU"
    assert sd_models.moved == [checkpoint] and calls == ["gc"] and sd_models.loads == []


def test_unload_host_model_in_a1111_never_loads_a_checkpoint_to_unload_it(monkeypatch):
    sd_models, calls = _fake_a1111(monkeypatch, None)
    assert bridge.unload_host_model() is None  # nothing loaded: nothing to free, nothing said
    assert sd_models.loads == [] and sd_models.moved == [] and calls == []


def test_unload_host_model_in_forge(monkeypatch):
    calls = []
    mm = types.SimpleNamespace(unload_all_models=lambda: calls.append("all"), soft_empty_cache=lambda: calls.append("cache"))
    _fake_modules(monkeypatch, **{"modules.shared": types.ModuleType("modules.shared"), "backend.memory_management": mm})
    assert "Forge" in bridge.unload_host_model()
    assert calls == ["all", "cache"]


def test_unload_host_model_never_raises(monkeypatch, caplog):
    def broken():
        raise RuntimeError("CUDA error")

    mm = types.SimpleNamespace(unload_all_models=broken)
    _fake_modules(monkeypatch, **{"modules.shared": types.ModuleType("modules.shared"), "backend.memory_management": mm})
    assert bridge.unload_host_model() is None
    assert "CUDA error" in caplog.text


def test_bridge_and_deps_import_nothing_heavy():
    code = ("import sys, json; import deforum_wan.service.bridge, deforum_wan.service.deps; "
            "print(json.dumps([m for m in ('torch', 'diffusers', 'transformers', 'gradio', 'numpy') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
