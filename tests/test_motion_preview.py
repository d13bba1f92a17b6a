"""`deforum-wan preview`: the picture flown along the camera path, its strip, its plain frames, and the tab's button."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import host_python

from deforum_wan.core.plan import PlanOptions, plan_clips
from deforum_wan.core.settings import load_settings
from deforum_wan.core.specs import DEFAULT_MODEL_KIND, MODEL_SPECS
from deforum_wan.renderer import motion_preview as mp
from deforum_wan.renderer import outputs

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "deforum-settings"
FILES = sorted(SHARED.glob("*.txt"))
SIMPLE = SHARED / "a1111-deforum-test-simple.txt"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deforum_wan", *args], capture_output=True, text=True, cwd=cwd)


def _write(tmp_path: Path, name: str = "moving.txt", **changes) -> Path:
    data = json.loads(SIMPLE.read_text())
    data.update(changes)
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _png(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def _plan(settings):
    return plan_clips(settings, MODEL_SPECS[DEFAULT_MODEL_KIND], PlanOptions(seed=1))


# ---------------------------------------------------------------- the command on real Deforum files


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_preview_writes_every_frame_at_the_settings_fps(path: Path, tmp_path: Path):
    out = tmp_path / "camera.mp4"
    started = time.monotonic()
    result = run("preview", str(path), "--out", str(out), "--max-side", "160")
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    original = json.loads(path.read_text())
    frames, fps = outputs.probe_video(out)
    assert frames == original["max_frames"]
    assert fps == pytest.approx(original["fps"], rel=1e-3)
    assert seconds < 60, f"{path.name}: {seconds:.1f} s"
    assert str(out) in result.stdout and "test card" in result.stdout


def test_the_default_output_is_under_outputs_preview(tmp_path: Path):
    settings = _write(tmp_path, "my_dance.txt")
    result = run("preview", str(settings), "--max-side", "64", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "outputs" / "preview" / "my_dance_camera.mp4"
    assert outputs.probe_video(out)[0] == 5
    assert run("preview", str(settings), "--max-side", "64", cwd=tmp_path).returncode == 0  # an mp4 is replaced


def test_other_files_are_never_overwritten(tmp_path: Path):
    settings = _write(tmp_path)
    notes = tmp_path / "notes.mp4"
    notes.write_text("my notes")
    for target in (notes, tmp_path / "camera.gif", settings):
        result = run("preview", str(settings), "--out", str(target), "--max-side", "64")
        assert result.returncode == 2 and "error:" in result.stderr, result.stderr
    assert notes.read_text() == "my notes" and json.loads(settings.read_text())["max_frames"] == 5
    assert run("preview", str(settings), "--plain", "--max-side", "64").returncode == 2  # --plain needs --frames


# ---------------------------------------------------------------- plain frames: Deforum's names, the real warp


def test_plain_frames_follow_the_schedule(tmp_path: Path):
    settings = _write(tmp_path, animation_mode="2D", max_frames=12, translation_x="0:(4)", translation_y="0:(0)",
                      zoom="0:(1.0)", angle="0:(0)", W=320, H=200)
    frames = tmp_path / "frames"
    result = run("preview", str(settings), "--out", str(tmp_path / "c.mp4"), "--plain", "--frames", str(frames),
                 "--max-side", "160")
    assert result.returncode == 0, result.stderr
    names = sorted(p.name for p in frames.iterdir())
    assert names == [outputs.frame_name(mp.PREVIEW_TIMESTRING, i) for i in range(12)]
    first = _png(frames / names[0])
    assert first.shape == (100, 160, 3)
    assert np.array_equal(first, mp.make_test_card(160, 100))  # frame 0 is the source, scaled
    dots = [mp.centre_dot(_png(frames / n)) for n in names]
    xs, ys = [d[0] for d in dots], [d[1] for d in dots]
    # translation_x 4 px a frame at 320 wide is 2 px a frame at 160: the dot moves right, not up or down.
    assert np.diff(xs) == pytest.approx([2.0] * 11, abs=0.3)
    assert max(ys) - min(ys) < 0.3
    assert len(outputs.existing_frames(frames, mp.PREVIEW_TIMESTRING)) == 12


def test_plain_frames_are_core_warps_of_the_given_image(tmp_path: Path):
    from PIL import Image

    from deforum_wan.core.warp import fly, scaled_path
    from deforum_wan.renderer.frames import fit_image

    rng = np.random.default_rng(3)
    picture = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
    Image.fromarray(picture).save(tmp_path / "pic.png")
    path = _write(tmp_path, animation_mode="3D", max_frames=6, translation_z="0:(3)", rotation_3d_y="0:(1)", W=96,
                  H=64)
    frames = tmp_path / "frames"
    result = run("preview", str(path), "--image", str(tmp_path / "pic.png"), "--out", str(tmp_path / "c.mp4"),
                 "--plain", "--frames", str(frames), "--max-side", "96")
    assert result.returncode == 0, result.stderr
    source = fit_image(picture, 96, 64)
    saved = [_png(frames / outputs.frame_name(mp.PREVIEW_TIMESTRING, i)) for i in range(6)]
    assert np.array_equal(saved[0], source)
    settings = load_settings(path)
    expected = [w for _i, w, _m in fly(source, 0, 5, scaled_path(settings, 96, 64))]
    assert all(np.array_equal(a, b) for a, b in zip(saved[1:], expected))
    assert not np.array_equal(saved[5], saved[0])


def test_init_image_is_used_when_use_init(tmp_path: Path):
    from PIL import Image

    Image.new("RGB", (40, 40), (200, 10, 10)).save(tmp_path / "red.png")
    settings = load_settings(_write(tmp_path, use_init=True, init_image=str(tmp_path / "red.png")))
    picture, source = mp.source_image(settings, None, 32, 32)
    assert source == "init_image" and (picture == (200, 10, 10)).all()
    picture, source = mp.source_image(load_settings(_write(tmp_path, use_init=False)), None, 32, 32)
    assert source == "test card" and mp.centre_dot(picture) == pytest.approx((16, 16), abs=1)
    with pytest.raises(mp.PreviewError, match="cannot be read"):
        mp.source_image(settings, str(tmp_path / "missing.png"), 32, 32)


def test_preview_size_keeps_the_aspect_and_never_grows():
    assert mp.preview_size(1280, 720, 512) == (512, 288)
    assert mp.preview_size(512, 512, 384) == (384, 384)
    assert mp.preview_size(100, 60, 512) == (100, 60)
    w, h = mp.preview_size(101, 61, 512)
    assert w % 2 == h % 2 == 0 and abs(w - 101) <= 1 and abs(h - 61) <= 1  # even sides for yuv420p


# ---------------------------------------------------------------- the strip


def test_the_strip_marks_clips_and_prompts_and_touches_only_its_rows():
    settings = load_settings(SHARED / "a1111-deforum-default.txt")
    plan = _plan(settings)
    assert len(plan.clips) > 1
    marks = mp.frame_marks(settings, plan)
    boundary = plan.clips[1].output_start
    mark = marks[boundary]
    assert mark.clip_start and mark.clip == 1 and mark.since_clip == 0
    assert not marks[boundary + FLASH_AFTER].clip_start and marks[boundary - 1].clip == 0
    assert marks[30].prompt_key == "30" and marks[30].prompt.startswith("anthropomorphic clean cat")
    assert "--neg" not in marks[60].prompt and marks[29].prompt_key == "0"
    assert [m.frame for m in marks if m.prompt_start] == [30, 60, 90]

    plain = mp.make_test_card(192, 192)
    burned = mp.burn_in(plain, mark, settings.fps, settings.max_frames, len(plan.clips))
    rows = mp.strip_height(192, 192)
    assert 0 < rows < 192 // 3
    changed = np.flatnonzero((burned != plain).any(axis=(1, 2)))
    assert changed.size and changed.max() < rows  # the picture below the strip is untouched
    # The boundary looks different from an ordinary frame of the same clip.
    later = mp.burn_in(plain, marks[boundary + FLASH_AFTER], settings.fps, settings.max_frames, len(plan.clips))
    assert np.abs(burned[:rows].astype(int) - later[:rows]).mean() > 10
    assert np.array_equal(later[rows:], plain[rows:])


FLASH_AFTER = mp.FLASH_FRAMES + 2


def test_video_frames_carry_the_strip_over_the_plain_frames(tmp_path: Path):
    import imageio_ffmpeg

    path = _write(tmp_path, animation_mode="2D", max_frames=6, translation_x="0:(2)", W=128, H=128)
    out, frames = tmp_path / "c.mp4", tmp_path / "frames"
    assert run("preview", str(path), "--out", str(out), "--plain", "--frames", str(frames)).returncode == 0
    reader = imageio_ffmpeg.read_frames(str(out))
    meta = next(reader)
    assert tuple(meta["size"]) == (128, 128)
    video = [np.frombuffer(f, np.uint8).reshape(128, 128, 3) for f in reader]
    assert len(video) == 6
    rows = mp.strip_height(128, 128)
    luma = lambda image: image.astype(float) @ (0.299, 0.587, 0.114)  # noqa: E731  (yuv420p keeps it whole)
    for i, frame in enumerate(video):
        plain = luma(_png(frames / outputs.frame_name(mp.PREVIEW_TIMESTRING, i)))
        below, strip = np.abs(luma(frame) - plain)[rows + 2:].mean(), np.abs(luma(frame) - plain)[:rows].mean()
        assert below < 4 and strip > 5 * below, (i, below, strip)  # x264 is lossy; the strip is not the picture


# ---------------------------------------------------------------- the tab


def test_tab_preview_returns_an_mp4_path_and_clears_old_ones(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    stale, recent = tmp_path / f"{mp.TAB_PREFIX}old", tmp_path / f"{mp.TAB_PREFIX}new"
    for folder in (stale, recent):
        folder.mkdir()
        (folder / "camera.mp4").write_bytes(b"x")
    os.utime(stale, (time.time() - 2 * mp.TAB_KEEP_SECONDS,) * 2)
    settings = load_settings(SIMPLE)
    video = mp.tab_preview(settings, _plan(settings), max_side=64)
    assert video.endswith(".mp4") and os.path.isfile(video) and Path(video).parent.parent == tmp_path
    assert outputs.probe_video(video)[0] == settings.max_frames
    assert not stale.exists() and recent.exists()


HOST_CHECK = r"""
import json, os, runpy, sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import host_ui_check as h

root = Path(tempfile.mkdtemp(prefix="deforum-wan-camera-"))
os.environ["DEFORUM_WAN_DEPS_DIR"] = str(root / "no-deps")
registered = h.fake_host(root)
runpy.run_path(sys.argv[2])
blocks = registered["on_ui_tabs"][0]()[0][0]
ids = h._elem_ids(blocks)
assert {"deforum_wan_preview_camera", "deforum_wan_camera_video"} <= ids, sorted(ids)
assert ("deforum_wan_preview_camera", "click") in h._triggers(blocks, "on_preview_camera")
state, _summary, status, _plan = h._fn(blocks, "on_load")(sys.argv[3])
defaults = list(h.DEFAULTS)
video, note = h._fn(blocks, "on_preview_camera")(state, None, None, *defaults)
path = h._value(video)
assert path and path.endswith(".mp4") and os.path.isfile(path), (video, note)
bad, note = h._fn(blocks, "on_preview_camera")(None, None, None, *defaults)
assert h._value(bad) is None and "Cannot preview" in h._value(note), note
import gradio
print(json.dumps({"gradio": gradio.__version__, "video": path}))
"""


@pytest.mark.parametrize("host", ["a1111", "forge"])
def test_tab_button_renders_a_preview_in_host_env(host: str, tmp_path: Path):
    python = host_python(host)
    env = {**os.environ, "DEFORUM_WAN_JOBS_DB": str(tmp_path / "jobs.sqlite3"), "GRADIO_ANALYTICS_ENABLED": "False"}
    result = subprocess.run([str(python), "-c", HOST_CHECK, str(REPO / "tests"),
                             str(REPO / "scripts" / "deforum_wan_tab.py"), str(SIMPLE)],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["gradio"] == {"a1111": "3.41.2", "forge": "4.40.0"}[host]
    assert outputs.probe_video(seen["video"])[0] == 5
