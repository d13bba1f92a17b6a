"""Settings files become frames and an mp4 through the real (tiny) diffusers pipelines."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import require_render_stack
from deforum_wan.renderer import outputs
from deforum_wan.core.plan import PlanOptions
from deforum_wan.core.settings import load_settings, settings_from_dict

require_render_stack()

from deforum_wan.renderer.render import RenderJob, render  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "deforum-settings"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def small_settings(**kw):
    data = {"prompts": {"0": "a red fox", "12": "a blue bird --neg blurry"}, "max_frames": 24, "fps": 16,
            "W": 32, "H": 32, "seed": 11, "batch_name": "test_{timestring}", "animation_mode": "3D"}
    data.update(kw)
    return settings_from_dict(data)


def read_frames(folder: Path, timestring: str) -> np.ndarray:
    indices = outputs.existing_frames(folder, timestring)
    return np.stack([np.asarray(Image.open(folder / outputs.frame_name(timestring, i))) for i in indices])


def check_output(result, settings, size=(32, 32)):
    folder, ts = result.folder, result.timestring
    assert outputs.existing_frames(folder, ts) == list(range(settings.max_frames))
    for i in (0, settings.max_frames - 1):
        assert Image.open(folder / outputs.frame_name(ts, i)).size == size
    assert outputs.settings_file(folder, ts).is_file() and outputs.plan_file(folder, ts).is_file()
    assert load_settings(outputs.settings_file(folder, ts)).max_frames == settings.max_frames
    assert result.video == outputs.video_file(folder, ts)
    assert outputs.probe_video(result.video) == (settings.max_frames, float(settings.fps))


CHAINS = {
    "t2v+i2v": ("t2v", "i2v", ["t2v", "i2v"]),
    "vace": ("vace", None, ["t2v", "vace"]),
    "ti2v-5b": ("ti2v-5b", None, ["t2v", "i2v"]),
    "a14b two experts": ("a14b-t2v", "a14b-i2v", ["t2v", "i2v"]),
}


@pytest.mark.parametrize("name", list(CHAINS))
def test_every_model_kind_renders_a_chained_plan(tiny_models, tmp_path, name):
    kind, i2v, modes = CHAINS[name]
    s = small_settings()
    job = RenderJob(settings=s, model=str(tiny_models[kind]), i2v_model=str(tiny_models[i2v]) if i2v else None,
                    outdir=str(tmp_path), options=PlanOptions(steps=2, max_clip_frames=9))
    events = []
    result = render(job, on_event=events.append)
    assert result.status == "done" and result.model_loads == 1
    assert {c.mode for c in result.plan.clips} == set(modes)
    assert len(result.plan.clips) >= 3  # longer than one 9-frame clip: really chained
    check_output(result, s)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and "step" in kinds and "frames" in kinds


def test_i2v_model_starts_from_the_init_image(tiny_models, tmp_path):
    init = tmp_path / "init.png"
    Image.fromarray(np.full((48, 64, 3), 200, np.uint8)).save(init)
    s = small_settings(use_init=True, init_image=str(init), max_frames=12)
    result = render(RenderJob(settings=s, model=str(tiny_models["i2v"]), outdir=str(tmp_path / "out"),
                              options=PlanOptions(steps=2, max_clip_frames=9)))
    assert [c.mode for c in result.plan.clips] == ["i2v", "i2v"]
    check_output(result, s)


class Recorder:
    """Real pipelines, with every request they get and every clip they return kept for inspection."""

    def __init__(self, pipelines):
        self.inner, self.clips, self.requests = pipelines, [], []

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name not in ("t2v", "i2v", "vace"):
            return attr

        def call(request):
            frames = attr(request)
            self.requests.append(request)
            self.clips.append(frames)
            return frames

        return call


def test_seam_drops_the_duplicated_frame(tiny_models, tmp_path):
    from deforum_wan.renderer.loading import load_pipelines
    from deforum_wan.renderer.models import classify_model

    s = small_settings(max_frames=20)
    pipes = Recorder(load_pipelines(classify_model(tiny_models["t2v"]), i2v_info=classify_model(tiny_models["i2v"])))
    job = RenderJob(settings=s, model=str(tiny_models["t2v"]), i2v_model=str(tiny_models["i2v"]), outdir=str(tmp_path),
                    options=PlanOptions(steps=2, max_clip_frames=9, color_match=False))
    result = render(job, pipelines=pipes)
    disk = read_frames(result.folder, result.timestring)
    assert len(disk) == 20
    for clip, frames in zip(result.plan.clips, pipes.clips):
        shown = disk[clip.output_start:clip.output_end]
        if clip.mode == "i2v":
            # Frame 0 of an I2V clip repeats the previous clip's last frame: it is never shown.
            assert clip.overlap == 1 and clip.sources[0] == (1, 1, 0.0)
            np.testing.assert_array_equal(shown, frames[1:1 + len(shown)])
        else:
            np.testing.assert_array_equal(shown, frames[: len(shown)])
    # 16 fps in, 16 fps out: every generated frame but the repeated ones is shown once.
    assert sum(c.num_frames - c.overlap for c in result.plan.clips) - result.plan.metrics.surplus_frames == 20


def test_same_seed_same_frames(tiny_models, tmp_path):
    s = small_settings(max_frames=10)
    job = lambda out, seed: RenderJob(settings=s, model=str(tiny_models["vace"]), outdir=str(out),  # noqa: E731
                                      options=PlanOptions(steps=2, max_clip_frames=9, seed=seed), make_video=False)
    a, b, c = render(job(tmp_path / "a", 3)), render(job(tmp_path / "b", 3)), render(job(tmp_path / "c", 4))
    fa, fb, fc = (read_frames(r.folder, r.timestring) for r in (a, b, c))
    np.testing.assert_array_equal(fa, fb)
    assert not np.array_equal(fa, fc)


def test_interrupt_keeps_frames_and_resume_finishes(tiny_models, tmp_path):
    s = small_settings(max_frames=24)
    steps = {"n": 0}

    def stop_after_some_steps():
        steps["n"] += 1
        return steps["n"] > 7

    base = dict(settings=s, model=str(tiny_models["vace"]), outdir=str(tmp_path),
                options=PlanOptions(steps=2, max_clip_frames=9, seed=9))
    first = render(RenderJob(**base), should_stop=stop_after_some_steps)
    assert first.status == "interrupted" and first.video is None
    kept = outputs.existing_frames(first.folder, first.timestring)
    assert 0 < len(kept) < 24 and kept == list(range(len(kept)))
    tails = first.folder / f"{first.timestring}_wan_tails"
    assert any(tails.iterdir())  # the resume continues from these
    second = render(RenderJob(**base, resume=first.timestring))
    assert second.status == "done" and second.folder == first.folder
    check_output(second, s)
    assert not tails.exists()  # finished: nothing left to continue from, nothing left behind
    fresh = render(RenderJob(**{**base, "outdir": str(tmp_path / "fresh")}))
    np.testing.assert_array_equal(read_frames(second.folder, second.timestring), read_frames(fresh.folder, fresh.timestring))


def test_resume_refuses_changed_settings(tiny_models, tmp_path):
    from deforum_wan.renderer.render import RenderError

    s = small_settings(max_frames=10)
    r = render(RenderJob(settings=s, model=str(tiny_models["t2v"]), outdir=str(tmp_path),
                         options=PlanOptions(steps=1, seed=2, min_clip_seconds=0), make_video=False))
    changed = small_settings(max_frames=10, prompts={"0": "a", "5": "b"})  # a new cut at frame 5
    with pytest.raises(RenderError, match="changed since it started"):
        render(RenderJob(settings=changed, model=str(tiny_models["t2v"]), outdir=str(tmp_path),
                         options=PlanOptions(steps=1, min_clip_seconds=0), resume=r.timestring))


def _worker_job(path: Path, **job) -> Path:
    path.write_text(json.dumps(job))
    return path


def _events(stdout: str) -> list[dict]:
    """The render's events (the worker's opening environment event is checked in test_hosts.py)."""
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return [e for e in events if e["type"] != "environment"]


def test_sigkill_mid_render_then_resume_is_complete_and_identical(tiny_models, tmp_path):
    settings = json.loads((SHARED / "a1111-deforum-test-simple.txt").read_text())
    settings.update(max_frames=40, fps=16, W=32, H=32, seed=21, prompts={"0": "a cat", "20": "a dog"})
    job = dict(settings=settings, model=str(tiny_models["vace"]), outdir=str(tmp_path / "out"),
               options={"steps": 3, "max_clip_frames": 9})
    proc = subprocess.Popen([sys.executable, "-m", "deforum_wan", "worker", str(_worker_job(tmp_path / "job.json", **job))],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=ENV)
    folder = ts = None
    deadline = time.time() + 240
    for line in proc.stdout:
        event = json.loads(line)
        if event["type"] == "start":
            folder, ts = Path(event["folder"]), event["timestring"]
        if event["type"] == "frames" and event["frames_written"] >= 8:
            os.kill(proc.pid, signal.SIGKILL)
            break
        assert time.time() < deadline
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    partial = outputs.existing_frames(folder, ts)
    assert 0 < len(partial) < 40
    resumed = subprocess.run([sys.executable, "-m", "deforum_wan", "worker",
                              str(_worker_job(tmp_path / "job2.json", **job, resume=ts))],
                             capture_output=True, text=True, env=ENV, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:]
    events = _events(resumed.stdout)
    assert events[0]["type"] == "start" and events[0]["resumed"] and events[0]["frames_on_disk"] == len(partial)
    names = sorted(p.name for p in folder.glob(f"{ts}_*.png"))
    assert names == [outputs.frame_name(ts, i) for i in range(40)]  # no gap, no duplicate
    assert not list(folder.glob(".*.tmp"))
    assert outputs.probe_video(outputs.video_file(folder, ts)) == (40, 16.0)
    clean = subprocess.run([sys.executable, "-m", "deforum_wan", "worker",
                            str(_worker_job(tmp_path / "job3.json", **{**job, "outdir": str(tmp_path / "clean")},))],
                           capture_output=True, text=True, env=ENV, timeout=300)
    done = _events(clean.stdout)[-1]
    np.testing.assert_array_equal(read_frames(folder, ts), read_frames(Path(done["folder"]), done["timestring"]))


def test_worker_reports_errors_as_its_last_event(tmp_path):
    bad = _worker_job(tmp_path / "bad.json", settings={"prompts": {"0": "a"}, "zoom": "0:(1+"}, model=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "deforum_wan", "worker", str(bad)], capture_output=True, text=True,
                         env=ENV, timeout=120)
    assert out.returncode == 1
    last = _events(out.stdout)[-1]
    assert last["type"] == "error"


def test_main_job_cli_on_a1111_default(tiny_models, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "deforum_wan", "render", str(SHARED / "a1111-deforum-default.txt"),
         "--model", str(tiny_models["t2v"]), "--steps", "1", "--width", "32", "--height", "32",
         "--outdir", str(tmp_path)],
        capture_output=True, text=True, env=ENV, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    folder = tmp_path / "Deforum_20230812221310"
    ts = outputs.find_timestrings(folder)[0]
    assert outputs.existing_frames(folder, ts) == list(range(120))
    assert outputs.settings_file(folder, ts).is_file()
    assert outputs.probe_video(outputs.video_file(folder, ts)) == (120, 15.0)


def test_cli_stop_file_keeps_frames_and_says_how_to_resume(tiny_models, tmp_path):
    settings = tmp_path / "s.txt"
    settings.write_text(json.dumps({"prompts": {"0": "a cat", "16": "a dog"}, "max_frames": 40, "fps": 16, "W": 32,
                                    "H": 32, "seed": 3, "batch_name": "stopme"}))
    stop = tmp_path / "STOP"
    proc = subprocess.Popen(
        [sys.executable, "-m", "deforum_wan", "render", str(settings), "--model", str(tiny_models["vace"]),
         "--steps", "3", "--max-clip-frames", "9", "--outdir", str(tmp_path / "out"), "--stop-file", str(stop)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    folder = tmp_path / "out" / "stopme"
    deadline = time.time() + 240
    while not (folder.is_dir() and len(list(folder.glob("*_0*.png"))) >= 4):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.2)
    stop.touch()
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130
    ts = outputs.find_timestrings(folder)[0]
    kept = outputs.existing_frames(folder, ts)
    assert 4 <= len(kept) < 40 and kept == list(range(len(kept)))
    assert f"--resume {ts}" in err


def test_two_renders_in_the_same_second_get_their_own_timestrings(tiny_models, tmp_path):
    s = small_settings(max_frames=5, batch_name="fixed")
    job = RenderJob(settings=s, model=str(tiny_models["t2v"]), outdir=str(tmp_path),
                    options=PlanOptions(steps=1, seed=1), make_video=False)
    a, b = render(job), render(job)
    assert a.folder == b.folder and a.timestring != b.timestring
    assert outputs.existing_frames(a.folder, a.timestring) == outputs.existing_frames(b.folder, b.timestring) == list(range(5))


def test_a_finished_render_leaves_only_deforum_files(tiny_models, tmp_path):
    s = small_settings(max_frames=20)
    for make_video in (True, False):
        result = render(RenderJob(settings=s, model=str(tiny_models["vace"]), outdir=str(tmp_path / str(make_video)),
                                  options=PlanOptions(steps=1, max_clip_frames=9), make_video=make_video))
        assert len(result.plan.clips) >= 3
        ts = result.timestring
        expected = {outputs.frame_name(ts, i) for i in range(20)} | {f"{ts}_settings.txt", f"{ts}_wan_plan.json"}
        assert {p.name for p in result.folder.iterdir()} == expected | ({f"{ts}.mp4"} if make_video else set())


def test_a_render_that_fails_before_its_first_frame_removes_its_folder(tiny_models, tmp_path):
    from netfixtures import LocalServer, png_bytes

    from deforum_wan.renderer.render import RenderError

    with LocalServer() as server:
        server.routes.add("/init.png", png_bytes((64, 48)), "image/png")
        s = small_settings(use_init=True, init_image=server.url("/init.png"), max_frames=12, batch_name="fail_{timestring}")
        events = []
        with pytest.raises(RenderError, match="init_image .* loopback"):
            render(RenderJob(settings=s, model=str(tiny_models["i2v"]), outdir=str(tmp_path),
                             options=PlanOptions(steps=1, max_clip_frames=9)), on_event=events.append)
        assert server.routes.seen == []  # refused before connecting: the render fetches through deforum_wan.renderer.fetch
    assert list(tmp_path.iterdir()) == []
    assert any(e["type"] == "warning" and "failed before its first frame" in e["message"] for e in events)
    # A shared batch folder (a fixed batch_name) keeps what other renders wrote there.
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "20200101000000_000000000.png").write_bytes(png_bytes())
    with pytest.raises(RenderError):
        render(RenderJob(settings=small_settings(use_init=True, init_image="http://127.0.0.1:9/x.png", max_frames=12,
                                                 batch_name="shared"),
                         model=str(tiny_models["i2v"]), outdir=str(tmp_path), options=PlanOptions(steps=1)))
    assert [p.name for p in shared.iterdir()] == ["20200101000000_000000000.png"]


def test_a_full_disk_is_named_and_the_render_resumes_once_space_is_free(tiny_models, tmp_path, monkeypatch):
    import errno

    from deforum_wan.renderer import render as render_module
    from deforum_wan.renderer.render import DiskFullError

    s = small_settings(max_frames=20)
    base = dict(settings=s, model=str(tiny_models["vace"]), outdir=str(tmp_path),
                options=PlanOptions(steps=1, max_clip_frames=9, seed=4), make_video=False)
    real_write = outputs.write_frame

    def full_after_six(folder, timestring, index, image):
        if index >= 6:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / outputs.frame_name(timestring, index)))
        return real_write(folder, timestring, index, image)

    monkeypatch.setattr(render_module.outputs, "write_frame", full_after_six)
    with pytest.raises(DiskFullError, match="No space left on device.*free some space, then resume") as info:
        render(RenderJob(**base))
    folder = next(tmp_path.iterdir())
    timestring = folder.name.split("_")[-1]
    assert timestring in str(info.value)
    assert outputs.existing_frames(folder, timestring) == list(range(6))  # kept for the resume
    monkeypatch.setattr(render_module.outputs, "write_frame", real_write)  # space freed
    resumed = render(RenderJob(**base, resume=timestring))
    assert resumed.status == "done" and outputs.existing_frames(folder, timestring) == list(range(20))
    fresh = render(RenderJob(**{**base, "outdir": str(tmp_path / "fresh")}))
    np.testing.assert_array_equal(read_frames(folder, timestring), read_frames(fresh.folder, fresh.timestring))


def test_a_url_soundtrack_is_fetched_by_the_render_not_by_ffmpeg(tiny_models, tmp_path, monkeypatch):
    from netfixtures import LocalServer, wav_bytes

    from deforum_wan.renderer import fetch
    from deforum_wan.renderer import render as render_module

    with LocalServer() as server:
        server.routes.add("/song.wav", wav_bytes(2.0), "audio/wav")
        s = small_settings(max_frames=10, add_soundtrack="File", soundtrack_path=server.url("/song.wav"))
        job = RenderJob(settings=s, model=str(tiny_models["t2v"]), outdir=str(tmp_path / "default"),
                        options=PlanOptions(steps=1))
        result = render(job)  # the default policy refuses this machine: the video is saved without sound
        assert result.video.is_file() and any("loopback" in w for w in result.warnings), result.warnings
        assert server.routes.seen == []
        real_fetch = fetch.fetch
        monkeypatch.setattr(fetch, "fetch", lambda url, kind, policy=None: real_fetch(
            url, kind, fetch.FetchPolicy(allow_loopback=True)))
        result = render(RenderJob(**{**job.__dict__, "outdir": str(tmp_path / "fetched")}))
        assert server.routes.seen == ["/song.wav"] and not [w for w in result.warnings if "soundtrack" in w]
    info = subprocess.run([outputs.ffmpeg_exe(), "-hide_banner", "-i", str(result.video)], capture_output=True,
                          text=True).stderr
    assert "Audio: aac" in info
    assert sorted(p.name for p in result.folder.iterdir() if p.name.startswith(".")) == []  # the fetched copy is gone


class _RecordingPipelines:
    """Stands in for loaded pipelines: records each ClipRequest and returns grey frames of its size."""

    def __init__(self):
        self.requests = []

    def _frames(self, request):
        self.requests.append(request)
        return np.full((request.num_frames, request.height, request.width, 3), 128, np.uint8)

    t2v = i2v = vace = _frames


def test_each_clip_gets_the_plans_guidance_2_and_flow_shift(tiny_models, tmp_path):
    """A14B: the official (high, low) pair reaches the pipeline call as guidance and guidance_2."""
    pipes = _RecordingPipelines()
    job = RenderJob(settings=small_settings(), model=str(tiny_models["a14b-t2v"]), outdir=str(tmp_path),
                    options=PlanOptions(steps=1, max_clip_frames=9), make_video=False)
    result = render(job, pipelines=pipes)
    assert result.status == "done" and pipes.requests
    assert {(r.guidance, r.guidance_2, r.flow_shift) for r in pipes.requests} == {(4.0, 3.0, 12.0)}
    assert all(r.negative_prompt for r in pipes.requests)  # the settings' --neg, else Wan's default


def test_an_i2v_model_without_an_init_image_fails_before_loading(tiny_models, tmp_path, monkeypatch):
    from deforum_wan.core.plan import PlanError
    from deforum_wan.renderer import loading

    monkeypatch.setattr(loading, "load_pipelines", lambda *a, **k: pytest.fail("the model was loaded"))
    job = RenderJob(settings=small_settings(), model=str(tiny_models["i2v"]), outdir=str(tmp_path / "out"),
                    options=PlanOptions(steps=1, max_clip_frames=9))
    with pytest.raises(PlanError, match=r"^init_image: Wan2.1 I2V \(i2v\) cannot start a clip from text"):
        render(job)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("key, settings", [
    ("init_image", {"use_init": True, "init_image": "{bad}"}),
    ("color_coherence_image_path", {"color_coherence": "Image", "color_coherence_image_path": "{bad}"}),
])
def test_an_unreadable_image_fails_before_the_model_loads(tiny_models, tmp_path, monkeypatch, key, settings):
    from deforum_wan.renderer import loading
    from deforum_wan.renderer.render import RenderError

    bad = tmp_path / "not-an-image.png"
    bad.write_text("this is text")
    monkeypatch.setattr(loading, "load_pipelines", lambda *a, **k: pytest.fail("the model was loaded"))
    values = {k: v.format(bad=bad) if isinstance(v, str) else v for k, v in settings.items()}
    job = RenderJob(settings=small_settings(**values), model=str(tiny_models["vace"]), outdir=str(tmp_path / "out"),
                    options=PlanOptions(steps=1))
    with pytest.raises(RenderError, match=rf"^{key} '.*not-an-image.png' cannot be read"):
        render(job)
    assert not list((tmp_path / "out").rglob("*.png"))


def test_a_chained_clip_continues_from_the_last_frame_shown(tiny_models, tmp_path):
    """At 24 fps a prompt segment's last clip has surplus Wan frames (4n+1 rounding) no output frame shows:
    the next clip must continue from the frames before them, not from the surplus."""
    from deforum_wan.renderer.loading import load_pipelines
    from deforum_wan.renderer.models import classify_model

    s = small_settings(max_frames=40, fps=24, prompts={"0": "a red fox", "13": "a blue bird", "27": "a cat"})
    pipes = Recorder(load_pipelines(classify_model(tiny_models["vace"])))
    job = RenderJob(settings=s, model=str(tiny_models["vace"]), outdir=str(tmp_path), make_video=False,
                    options=PlanOptions(steps=1, overlap=2, min_clip_seconds=0, color_match=False))
    result = render(job, pipelines=pipes)
    plan = result.plan
    assert result.status == "done" and plan.timing == "interpolate" and len(plan.clips) == len(pipes.clips) >= 3
    assert any(c.tail_end < c.num_frames for c in plan.clips[:-1])  # surplus exists before some join
    for (clip, frames), nxt, request in zip(zip(plan.clips, pipes.clips), plan.clips[1:], pipes.requests[1:]):
        assert nxt.mode == "vace" and len(request.known_frames) == nxt.overlap == 2
        expected = frames[clip.tail_end - 2:clip.tail_end]
        np.testing.assert_array_equal(np.stack(request.known_frames), expected)
    assert outputs.existing_frames(result.folder, result.timestring) == list(range(40))


def _mean_rgb(frames: np.ndarray) -> np.ndarray:
    return frames.reshape(-1, 3).astype(np.float64).mean(axis=0)


def test_colour_stays_anchored_to_frame_0_over_20_chained_clips(tiny_models, tmp_path):
    """color_coherence LAB matches every clip to frame 0: however the tiny VACE drifts clip after clip, the last
    clip's mean colour stays near frame 0's. Without matching it wanders off."""
    from deforum_wan.renderer.loading import load_pipelines
    from deforum_wan.renderer.models import classify_model

    pipes = load_pipelines(classify_model(tiny_models["vace"]))
    means = {}
    for matched in (True, False):
        s = small_settings(max_frames=20 * 4 + 1, fps=16, prompts={"0": "a red fox"}, color_coherence="LAB")
        job = RenderJob(settings=s, model=str(tiny_models["vace"]), outdir=str(tmp_path / str(matched)),
                        make_video=False, options=PlanOptions(steps=1, seed=3, max_clip_frames=5, overlap=1,
                                                              color_match=matched))
        result = render(job, pipelines=pipes)
        assert len(result.plan.clips) == 20 and result.plan.color_match is matched
        disk = read_frames(result.folder, result.timestring)
        last = result.plan.clips[-1]
        means[matched] = (_mean_rgb(disk[:1]), _mean_rgb(disk[last.output_start:last.output_end]))
    reference, last = means[True]
    assert np.abs(last - reference).max() <= 12, (reference, last)
    free_reference, free_last = means[False]
    np.testing.assert_allclose(free_reference, reference, atol=1)  # the same frame 0: it is the reference
    assert np.abs(free_last - free_reference).max() > np.abs(last - reference).max()


def test_colour_reference_image_and_init_image(tiny_models, tmp_path):
    """color_coherence Image matches every clip (the first too) to color_coherence_image_path."""
    red = tmp_path / "red.png"
    Image.fromarray(np.tile(np.array([200, 40, 30], np.uint8), (32, 32, 1))).save(red)
    s = small_settings(max_frames=24, color_coherence="Image", color_coherence_image_path=str(red))
    job = RenderJob(settings=s, model=str(tiny_models["vace"]), outdir=str(tmp_path), make_video=False,
                    options=PlanOptions(steps=1, seed=3))
    result = render(job, pipelines=None)
    mean = _mean_rgb(read_frames(result.folder, result.timestring))
    assert mean[0] > 150 and mean[1] < 90 and mean[2] < 90, mean
    missing = small_settings(max_frames=24, color_coherence="Image", color_coherence_image_path=str(tmp_path / "no.png"))
    from deforum_wan.renderer.render import RenderError

    with pytest.raises(RenderError, match=r"^color_coherence_image_path '.*no.png' cannot be read"):
        render(RenderJob(settings=missing, model=str(tiny_models["vace"]), outdir=str(tmp_path), make_video=False,
                         options=PlanOptions(steps=1, seed=3)))


def test_a_render_with_a_preset_a_lora_per_clip_and_a_step_cache(tiny_models, tmp_path):
    """--preset turbo, --lora and a prompt's <lora:...> tag, --cache: the real tiny pipelines get the preset's
    scheduler and steps, the LoRA at each clip's weight, the cache on the transformer; all are gone afterwards."""
    from test_loras import lora_tensors, save_safetensors

    from deforum_wan.renderer.loading import load_pipelines
    from deforum_wan.renderer.loras import read_transformer_config
    from deforum_wan.renderer.models import classify_model

    config = read_transformer_config(tiny_models["t2v"])
    models = tmp_path / "models" / "wan"
    save_safetensors(models / "loras" / "style.safetensors", lora_tensors("comfyui", config, seed=1))
    pipes = Recorder(load_pipelines(classify_model(tiny_models["t2v"])))
    weights, schedulers = [], []
    original = pipes.inner.t2v

    def spy(request):
        transformer = pipes.inner.main.transformer
        layer = transformer.blocks[0].attn1.to_q
        weights.append({k: float(v) for k, v in getattr(layer, "scaling", {}).items()})
        schedulers.append(request.scheduler)
        return original(request)

    pipes.inner.t2v = spy
    s = small_settings(max_frames=32, prompts={"0": "a red fox", "16": "a blue bird <lora:style:0.5>"})
    job = RenderJob(settings=s, model=str(tiny_models["t2v"]), models_dir=str(models), outdir=str(tmp_path / "out"),
                    make_video=False, options=PlanOptions(seed=3, preset="turbo", loras=("style:0.8",),
                                                          cache="fbcache:0.05", min_clip_seconds=0))
    result = render(job, pipelines=pipes)
    assert result.status == "done" and [c.steps for c in result.plan.clips] == [4, 4]
    assert [c.guidance for c in result.plan.clips] == [1.0, 1.0]
    assert schedulers == ["FlowMatchEulerDiscreteScheduler"] * 2
    assert [list(w.values()) for w in weights] == [[0.8], [0.5]]  # the user's weight, then the tag's
    transformer = pipes.inner.main.transformer
    assert not hasattr(transformer.blocks[0].attn1.to_q, "scaling")  # LoRA unloaded
    from deforum_wan.renderer.caches import active_cache

    assert active_cache(transformer) is None  # cache removed
    missing = RenderJob(settings=s, model=str(tiny_models["t2v"]), models_dir=str(models), outdir=str(tmp_path / "x"),
                        make_video=False, options=PlanOptions(seed=3, loras=("nowhere",)))
    from deforum_wan.renderer.render import RenderError

    with pytest.raises(RenderError, match=r"nowhere"):
        render(missing)


def test_motion_guide_reaches_vace_for_every_chained_clip_and_survives_resume(tiny_models, tmp_path):
    """--motion guide: every VACE clip gets its known frames, then the last frame shown warped along the camera
    path (2D translation_x here, so the guide moves right), with a mask of the right shape; a resumed render
    gives the later clips the same guides."""
    from deforum_wan.renderer.loading import load_pipelines
    from deforum_wan.renderer.models import classify_model

    pipes = load_pipelines(classify_model(tiny_models["vace"]))
    seen: dict[str, list] = {}

    def spy(key):
        original = pipes._run

        def run(pipe, extra, request):
            if "video" in extra:
                seen.setdefault(key, []).append((request, extra))
            return original(pipe, extra, request)

        return run

    s = small_settings(max_frames=36, animation_mode="2D", translation_x="0: (2)", prompts={"0": "a red fox"})
    options = PlanOptions(steps=1, seed=3, max_clip_frames=13, overlap=2, motion="guide")
    pipes._run = spy("full")
    full = render(RenderJob(settings=s, model=str(tiny_models["vace"]), outdir=str(tmp_path / "a"), make_video=False,
                            options=options), pipelines=pipes)
    calls = seen["full"]
    # No init image: the first clip starts from frame 0 of a short T2V render and is guided like the others.
    assert full.status == "done" and full.plan.bootstrap and len(calls) == len(full.plan.clips) >= 3
    assert [c.overlap for c in full.plan.clips[:2]] == [1, 2]
    for (request, extra), clip in zip(calls, full.plan.clips):
        assert len(extra["video"]) == len(extra["mask"]) == clip.num_frames
        assert extra["video"][0].size == (full.plan.width, full.plan.height)
        assert [np.asarray(m).max() for m in extra["mask"]] == [0] * clip.overlap + [255] * (clip.num_frames
                                                                                            - clip.overlap)
        assert extra["conditioning_scale"] == pytest.approx(0.65 / 0.65)  # Deforum's default strength
        assert len(request.guide_frames) == clip.num_frames - clip.overlap
        guide = np.asarray(request.guide_frames, dtype=np.float64)
        # translation_x 2 px a frame to the right: later guide frames are the earlier ones moved right.
        shift = int(np.argmin([np.abs(guide[-1][:, 8:-8] - np.roll(guide[0], d, axis=1)[:, 8:-8]).mean()
                               for d in range(0, 12)]))
        assert shift > 0, shift

    def stop_in_the_first_vace_clip() -> bool:
        return len(seen.get("first", [])) >= 1

    pipes._run = spy("first")
    job = RenderJob(settings=s, model=str(tiny_models["vace"]), outdir=str(tmp_path / "b"), make_video=False,
                    options=options)
    part = render(job, pipelines=pipes, should_stop=stop_in_the_first_vace_clip)
    assert part.status == "interrupted"
    pipes._run = spy("resumed")
    rest = render(replace(job, resume=part.timestring), pipelines=pipes)
    assert rest.status == "done"
    by_clip = {r.seed: np.asarray(r.guide_frames) for r, _ in seen["resumed"]}
    for request, _extra in calls:
        if request.seed in by_clip:
            np.testing.assert_array_equal(by_clip[request.seed], np.asarray(request.guide_frames))
    assert by_clip  # some clip was rendered after the resume
