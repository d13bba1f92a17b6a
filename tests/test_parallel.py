"""One clip across several GPUs, run here as two gloo ranks on the CPU under torchrun.

The ranks are real: torch's launcher starts two worker processes, diffusers' context
parallelism splits every denoising step between them, and rank 0 alone writes. The
frames must equal a single process's pixel for pixel; a rank killed mid-clip must fail
the job with a message in bounded time, and a resume must finish it.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import require_render_stack
from deforum_wan.renderer import outputs
from deforum_wan.renderer.parallel import ParallelError, check_request, cp_config_args, parse_gpus
from deforum_wan.service.torchrun import failed_ranks, failure_message, torchrun_command

# One thread per process everywhere, as torchrun gives each rank: a CPU matmul's rounding can change with its
# thread count (and MKL picks that by load), which is not what these tests compare.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SETTINGS = {"prompts": {"0": "a red fox", "12": "a blue bird"}, "max_frames": 24, "fps": 16, "W": 32, "H": 32,
            "seed": 11, "batch_name": "par_{timestring}", "animation_mode": "3D"}


def _job(tmp_path: Path, model: Path, name: str, **extra) -> Path:
    job = {"settings": SETTINGS, "model": str(model), "outdir": str(tmp_path / name), "device": "cpu",
           "make_video": False, "options": {"steps": 2, "max_clip_frames": 9, "min_clip_seconds": 0}, **extra}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(job))
    return path


def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def _worker(job: Path, timeout: float = 300) -> tuple[int, list[dict], str]:
    out = subprocess.run([sys.executable, "-m", "deforum_wan", "worker", str(job)], capture_output=True, text=True,
                         env=ENV, timeout=timeout)
    return out.returncode, _events(out.stdout), out.stderr


def _frames(done: dict) -> np.ndarray:
    folder, ts = Path(done["folder"]), done["timestring"]
    indices = outputs.existing_frames(folder, ts)
    assert indices == list(range(SETTINGS["max_frames"]))
    return np.stack([np.asarray(Image.open(folder / outputs.frame_name(ts, i))) for i in indices])


# --------------------------------------------------------------------------- pure rules


def test_gpu_lists_are_parsed_and_bad_ones_named():
    assert parse_gpus("0,1") == (0, 1) and parse_gpus(" 2 , 3 ") == (2, 3) and parse_gpus([0, 1]) == (0, 1)
    assert parse_gpus(None) == () and parse_gpus("") == ()
    for bad in ("0,0", "a,b", "0;1", "-1", [0, "1"], 1.5):
        with pytest.raises(ParallelError, match="gpus"):
            parse_gpus(bad)


def test_what_several_ranks_cannot_do_is_refused_before_anything_starts():
    check_request((0, 1), "cpu")  # CPU ranks (gloo): fine
    check_request((0,), "cpu", "ring")  # one GPU: no parallelism, nothing to check
    with pytest.raises(ParallelError, match="ring.*log-sum-exp.*ulysses"):
        check_request((0, 1), "cpu", "ring")
    with pytest.raises(ParallelError, match="cache"):
        check_request((0, 1), "cuda", cache="fbcache:0.05")
    with pytest.raises(ParallelError, match="device"):
        check_request((0, 1), "cuda:1")
    with pytest.raises(ParallelError, match="context_parallel"):
        check_request((0, 1), "cuda", "tensor")


def test_context_parallel_settings_follow_the_head_count():
    assert cp_config_args(2, 12) == {"ulysses_degree": 2, "ulysses_anything": False}  # Wan 1.3B: 12 heads
    assert cp_config_args(3, 40) == {"ulysses_degree": 3, "ulysses_anything": True}  # 14B on 3 GPUs
    assert cp_config_args(4, 40, "ring") == {"ring_degree": 4, "ring_anything": True}
    with pytest.raises(ParallelError):
        cp_config_args(1, 12)


def test_torchrun_is_torchs_own_launcher_and_its_report_names_the_rank():
    argv = torchrun_command("job.json", 2)
    assert argv[1:5] == ["-s", "-m", "torch.distributed.run", "--standalone"]
    assert argv[argv.index("--nproc-per-node") + 1] == "2" and argv[-3:] == ["deforum_wan", "worker", "job.json"]
    report = ("Root Cause (first observed failure):\n[0]:\n  time      : 2026-01-01_00:00:00\n  host      : h\n"
              "  rank      : 1 (local_rank: 1)\n  exitcode  : -9 (pid: 4242)\n  error_file: <N/A>\n")
    failures = failed_ranks(report)
    assert failures == [{"rank": 1, "exitcode": -9, "pid": 4242}]
    message = failure_message(failures, 2, {"error_type": "RuntimeError", "message": "Connection closed by peer"},
                              {"folder": "/out/x", "timestring": "20260101000000"})
    assert message.startswith("rank 1 of 2 (pid 4242) died (signal 9, SIGKILL)")
    assert "rank 0 stopped with it (RuntimeError)" in message and "--resume 20260101000000" in message


def test_the_api_takes_gpus_and_names_the_field_when_they_cannot_run(tmp_path):
    from types import SimpleNamespace

    from deforum_wan.service.jobdata import build_job
    from deforum_wan.service.validation import ApiError, Validator

    queue = SimpleNamespace(outdir=str(tmp_path), models_dir=None, resolve_model=lambda model=None: "t2v")
    validator = Validator(queue)
    overrides, _ = validator.overrides({"gpus": "0,1", "context_parallel": "ring"})
    assert overrides == {"gpus": [0, 1], "context_parallel": "ring"}
    job = build_job({"prompts": {"0": "a"}}, overrides, outdir=str(tmp_path), models_dir=None, model="vace")
    assert job["gpus"] == [0, 1] and job["context_parallel"] == "ring"  # into the worker's RenderJob
    for raw, field, words in (({"gpus": "0,0"}, "gpus", "each GPU once"),
                              ({"gpus": "first"}, "gpus", "separated by commas"),
                              ({"context_parallel": "tensor"}, "context_parallel", "ulysses"),
                              ({"gpus": [0, 1], "device": "cpu", "context_parallel": "ring"}, "gpus", "log-sum-exp"),
                              ({"gpus": [0, 1], "cache": "fbcache:0.05"}, "gpus", "step caches")):
        with pytest.raises(ApiError) as caught:
            validator.overrides(raw)
        assert caught.value.status == 422
        assert [(loc, msg) for loc, msg in caught.value.errors if loc == ("options_overrides", field)
                and words in msg], caught.value.errors


def test_the_command_line_refuses_ring_on_cpu_before_starting_any_rank(tmp_path):
    settings = tmp_path / "s.json"
    settings.write_text(json.dumps(SETTINGS))
    out = subprocess.run([sys.executable, "-m", "deforum_wan", "render", str(settings), "--model", "t2v", "--device",
                          "cpu", "--gpus", "0,1", "--context-parallel", "ring", "--outdir", str(tmp_path / "o")],
                         capture_output=True, text=True, env=ENV, timeout=120)
    assert out.returncode == 1 and "log-sum-exp" in out.stderr + out.stdout
    assert "torch.distributed" not in out.stderr and not (tmp_path / "o").exists()


def test_a_dead_rank_is_a_failure_the_queue_retries():
    from deforum_wan.service.jobdata import RETRYABLE, TERMINAL, failure_type

    assert failure_type("rank 1 of 2 (pid 7) died (signal 9, SIGKILL)", {"error_type": "RankFailed"}) == RETRYABLE
    assert failure_type("gpus: each GPU once, got '0,0'", {"error_type": "ParallelError"}) == TERMINAL


# --------------------------------------------------------------------------- real ranks


@pytest.fixture(scope="module")
def stack():
    require_render_stack()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["t2v", "vace"])
def test_two_gloo_ranks_render_the_same_frames_as_one_process(stack, tiny_models, tmp_path, kind):
    rc, one, _ = _worker(_job(tmp_path, tiny_models[kind], "one"))
    assert rc == 0 and one[-1]["type"] == "done"
    rc, two, err = _worker(_job(tmp_path, tiny_models[kind], "two", gpus=[0, 1]))
    assert rc == 0, err[-3000:]
    assert two[-1]["type"] == "done" and two[-1]["frames_on_disk"] == SETTINGS["max_frames"]
    par = next(e for e in two if e.get("ranks"))
    assert par["backend"] == "gloo" and [r["rank"] for r in par["ranks"]] == [0, 1]
    assert len({r["pid"] for r in par["ranks"]}) == 2  # two processes
    assert [e["type"] for e in two].count("start") == 1  # rank 0 alone reports
    clips = [e for e in two if e["type"] == "clip"]
    assert len(clips) >= 4 and (kind == "t2v" or {c["mode"] for c in clips[1:]} == {"vace"})
    np.testing.assert_array_equal(_frames(one[-1]), _frames(two[-1]))
    # Rank 0 alone writes: one batch folder, and the plan and settings once.
    assert len(list((tmp_path / "two").iterdir())) == 1


def _kill_mid_clip(proc: subprocess.Popen, clip: int) -> tuple[list[dict], float]:
    events: list[dict] = []
    pids: dict[int, int] = {}
    for line in proc.stdout:  # type: ignore[union-attr]
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        events.append(event)
        if event.get("ranks"):
            pids = {r["rank"]: r["pid"] for r in event["ranks"]}
        if event["type"] == "step" and event["clip"] == clip and event["step"] == 1:
            os.kill(pids[1], signal.SIGKILL)
            return events, time.monotonic()
    raise AssertionError(f"the render ended before clip {clip}: {events[-1:]}")


@pytest.mark.slow
def test_a_rank_killed_mid_clip_fails_the_job_with_a_message_and_a_resume_finishes(stack, tiny_models, tmp_path):
    model = tiny_models["vace"]
    job = _job(tmp_path, model, "killed", gpus=[0, 1], options={"steps": 3, "max_clip_frames": 9, "min_clip_seconds": 0})
    proc = subprocess.Popen([sys.executable, "-m", "deforum_wan", "worker", str(job)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        events, killed_at = _kill_mid_clip(proc, clip=2)
        rest, err = proc.communicate(timeout=120)  # nothing hangs: torchrun ends the job
    finally:
        if proc.poll() is None:
            proc.kill()
    assert time.monotonic() - killed_at < 120
    events += _events(rest)
    assert proc.returncode == 1
    last = events[-1]
    assert last["type"] == "error" and last["error_type"] == "RankFailed", last
    assert "rank 1 of 2" in last["message"] and "SIGKILL" in last["message"]
    start = next(e for e in events if e["type"] == "start")
    folder, ts = Path(start["folder"]), start["timestring"]
    assert f"--resume {ts}" in last["message"]
    kept = outputs.existing_frames(folder, ts)
    assert 0 < len(kept) < SETTINGS["max_frames"]

    resume = json.loads(job.read_text())
    resume["resume"] = ts
    job.write_text(json.dumps(resume))
    rc, again, err = _worker(job)
    assert rc == 0, err[-3000:]
    begun = next(e for e in again if e["type"] == "start")
    assert begun["resumed"] and begun["frames_on_disk"] == len(kept)
    rc, one, _ = _worker(_job(tmp_path, model, "one", options=resume["options"]))
    assert rc == 0
    np.testing.assert_array_equal(_frames(again[-1]), _frames(one[-1]))


@pytest.mark.slow
def test_a_settings_error_on_rank_0_ends_every_rank_with_its_own_message(stack, tiny_models, tmp_path):
    job = _job(tmp_path, tiny_models["t2v"], "bad", gpus=[0, 1],
               options={"steps": 1, "max_clip_frames": 9, "loras": ["no-such-lora"]})
    started = time.monotonic()
    rc, events, err = _worker(job, timeout=120)
    assert rc == 1 and time.monotonic() - started < 120
    last = events[-1]
    assert last["type"] == "error" and last["error_type"] != "RankFailed" and "no-such-lora" in last["message"], last
    assert not any(e.get("ranks") for e in events)  # refused before any rank loaded the model
    assert not any((tmp_path / "bad").rglob("*.png"))


@pytest.mark.slow
def test_render_gpus_on_the_command_line(stack, tiny_models, tmp_path):
    settings = tmp_path / "s.json"
    settings.write_text(json.dumps(SETTINGS))
    out = subprocess.run([sys.executable, "-m", "deforum_wan", "render", str(settings), "--model",
                          str(tiny_models["t2v"]), "--device", "cpu", "--gpus", "0,1", "--steps", "1", "--no-video",
                          "--outdir", str(tmp_path / "o")], capture_output=True, text=True, env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 ranks (gloo), ulysses attention" in out.stderr + out.stdout
    assert f"{SETTINGS['max_frames']} frames and no video in" in out.stdout


@pytest.mark.slow
def test_the_stop_file_stops_every_rank_at_the_same_step_and_a_resume_finishes(stack, tiny_models, tmp_path):
    stop = tmp_path / "stop"
    job = _job(tmp_path, tiny_models["t2v"], "stopped", gpus=[0, 1], stop_file=str(stop),
               options={"steps": 3, "max_clip_frames": 9, "min_clip_seconds": 0})
    proc = subprocess.Popen([sys.executable, "-m", "deforum_wan", "worker", str(job)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    events: list[dict] = []
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.startswith("{"):
                events.append(json.loads(line))
                if events[-1]["type"] == "step" and events[-1]["clip"] == 1:
                    stop.touch()
                    break
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    events += _events(rest)
    assert proc.returncode == 130 and events[-1]["type"] == "interrupted"
    stop.unlink()
    data = json.loads(job.read_text())
    data["resume"] = events[-1]["timestring"]
    job.write_text(json.dumps(data))
    rc, again, err = _worker(job)
    assert rc == 0 and again[-1]["type"] == "done", err[-3000:]
    assert again[-1]["frames_on_disk"] == SETTINGS["max_frames"]
