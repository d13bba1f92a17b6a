"""The Wan tab: pure helpers in this venv, and the tab built under both hosts' gradio (3.41.2 and 4.40.0)."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import host_python

from deforum_wan.renderer import outputs
from deforum_wan.webui import tab_data as ui_data
from deforum_wan.webui import plot as ui_plot
from deforum_wan.core.plan import ClipPlan, plan_clips
from deforum_wan.core.prompts import prompt_at
from deforum_wan.core.settings import load_settings
from deforum_wan.core.specs import MODEL_SPECS

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "deforum-settings"
SIMPLE = SHARED / "a1111-deforum-test-simple.txt"


def _settings(**changes):
    data = json.loads(SIMPLE.read_text())
    data.update(changes)
    return load_settings(data)


def _plan(settings, kind: str = "vace") -> ClipPlan:
    from deforum_wan.core.plan import PlanOptions

    return plan_clips(settings, MODEL_SPECS[kind], PlanOptions(width=32, height=32, max_clip_frames=21,
                                                                min_clip_seconds=0))


# ---------------------------------------------------------------- plan table and prompt edits


def test_plan_rows_show_clips_with_their_keyframe_text():
    settings = _settings(max_frames=120, fps=16)
    plan = _plan(settings)
    rows = ui_data.plan_rows(plan, settings)
    assert len(rows) == len(plan.clips) == 8
    assert [len(r) for r in rows] == [len(ui_data.PLAN_HEADERS)] * 8
    first = rows[0]
    assert first[:6] == [0, "0-16", "0.00-1.06", 17, "t2v", 1]
    assert first[6].startswith("tiny cute swamp bunny") and "zoom in" in first[7]
    # The coconut keyframe has a --neg part: the table shows only the positive text.
    assert rows[4][6] == "a beautiful coconut"


def test_prompt_edit_becomes_wan_prompts_and_reaches_the_plan():
    settings = _settings(max_frames=120, fps=16)
    plan = _plan(settings)
    rows = ui_data.plan_rows(plan, settings)
    rows[4][6] = "a ripe mango"  # clip 4 belongs to keyframe "60", which has "--neg photo, realistic"
    edited = ui_data.apply_prompt_edits(plan, settings, rows)
    wan = edited.wan_value("prompts")
    assert wan["60"] == "a ripe mango --neg photo, realistic"
    assert set(wan) == {"0", "30", "60", "90"} and wan["0"] == settings.prompts[0][1]
    assert edited.to_dict()["wan_prompts"] == wan  # saved with the settings file
    replanned = _plan(edited)
    assert replanned.clips[4].prompt == "a ripe mango" and replanned.clips[4].negative_prompt == "photo, realistic"
    assert prompt_at(edited, 0).positive.startswith("tiny cute swamp bunny")


def test_no_edit_keeps_settings_and_first_edit_of_a_keyframe_wins():
    settings = _settings(max_frames=120, fps=16)
    plan = _plan(settings)
    rows = ui_data.plan_rows(plan, settings)
    assert ui_data.apply_prompt_edits(plan, settings, rows) is settings
    rows[2][6], rows[3][6] = "first edit", "second edit"  # clips 2 and 3 share keyframe "30"
    assert ui_data.edited_prompts(plan, settings, rows)["30"] == "first edit"


def test_table_values_accepts_every_shape_gradio_hands_over():
    rows = [[1, "a"], [2, "b"]]
    assert ui_data.table_values(rows) == rows
    assert ui_data.table_values({"data": rows, "headers": ["n", "s"]}) == rows
    assert ui_data.table_values(None) == []

    class Frame:  # the pandas.DataFrame duck type
        columns = ["n", "s"]
        values = np.array(rows, dtype=object)

    assert ui_data.table_values(Frame()) == rows


# ---------------------------------------------------------------- Deforum's last settings


def test_newest_settings_looks_in_batch_folders_and_the_webui_root(tmp_path):
    out = tmp_path / "outputs" / "img2img-images"
    old = out / "Deforum_1" / "20240101000000_settings.txt"
    new = out / "Deforum_2" / "20240102000000_settings.txt"
    dated = tmp_path / "outputs" / "deforum" / "2024-01" / "Batch" / "20240103000000_settings.txt"
    for i, path in enumerate((old, new, dated)):
        path.parent.mkdir(parents=True)
        path.write_text("{}")
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
    (out / "Deforum_2" / "20240102000000_000000000.png").write_bytes(b"x")
    assert ui_data.newest_settings([out], None) == new
    assert ui_data.newest_settings([out, tmp_path / "outputs" / "deforum"], None) == dated
    root_file = tmp_path / ui_data.DEFORUM_SETTINGS_NAME
    root_file.write_text("{}")
    assert ui_data.newest_settings([out], tmp_path) == root_file
    assert ui_data.newest_settings([tmp_path / "missing"], tmp_path / "missing") is None


def test_our_renders_settings_come_after_deforums_own(tmp_path):
    """Our renders save {ts}_settings.txt beside Deforum's: the newest file may be ours, with resume flags."""
    out = tmp_path / "outputs"
    deforum = out / "Deforum_1" / "20240101000000_settings.txt"
    ours = out / "Wan_1" / "20240102000000_settings.txt"
    for i, path in enumerate((deforum, ours)):
        path.parent.mkdir(parents=True)
        path.write_text("{}")
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
    (ours.parent / "20240102000000_wan_plan.json").write_text("{}")
    assert ui_data.is_wan_render_settings(ours) and not ui_data.is_wan_render_settings(deforum)
    assert ui_data.newest_settings([out]) == deforum
    deforum.unlink()
    assert ui_data.newest_settings([out]) == ours  # only ours left: taken, its resume flag cleared on import


def test_an_imported_file_never_turns_generate_into_a_resume(tmp_path):
    from deforum_wan.webui.tab import load_settings_file

    path = tmp_path / "20240102000000_settings.txt"
    path.write_text(json.dumps({**json.loads(SIMPLE.read_text()), "resume_from_timestring": True,
                                "resume_timestring": "20240102000000"}))
    state, summary, status = load_settings_file(str(path))
    assert state["resume_from_timestring"] is False and state["resume_timestring"] == "20240102000000"
    assert "resume render 20240102000000" in status and "Unfinished renders" in status and summary
    assert load_settings(state).resume_from_timestring is False
    state, _summary, status = load_settings_file(str(SIMPLE), shown="simple.txt")
    assert status == "Imported `simple.txt`" and state["resume_from_timestring"] is False


def test_uploads_are_named_by_their_own_file_name(tmp_path):
    from types import SimpleNamespace

    # gradio 3.41: a temporary-file wrapper whose name and orig_name are both the temporary path
    wrapper = SimpleNamespace(name="/tmp/gradio/abc/dance.txt", orig_name="/tmp/gradio/abc/dance.txt")
    assert ui_data.upload_source(wrapper) == ("/tmp/gradio/abc/dance.txt", "dance.txt")
    assert ui_data.upload_source("/tmp/gradio/0f3e/dance.txt") == ("/tmp/gradio/0f3e/dance.txt", "dance.txt")
    assert ui_data.upload_source({"path": "/tmp/x/y.txt", "orig_name": "z.txt"}) == ("/tmp/x/y.txt", "z.txt")
    assert ui_data.upload_source(None) == (None, None)


# ---------------------------------------------------------------- setup states


def test_the_setup_banner_says_what_is_missing_and_the_command_that_fixes_it(tmp_path, monkeypatch):
    from test_deps import SMALL_REPORT, FakePip

    from deforum_wan.service import bridge, deps, doctor

    monkeypatch.setenv(deps.ENV_DEPS_DIR, str(tmp_path / "deps"))
    monkeypatch.delenv(bridge.ENV_WORKER_PYTHON, raising=False)
    text = doctor.setup_banner()
    assert "Renders cannot run yet" in text and "renderer libraries" in text and deps.install_command() in text
    assert "Check again" in text
    deps.install_private_deps(str(tmp_path / "deps"), runner=FakePip(SMALL_REPORT), out=lambda s: None)
    assert doctor.setup_banner() == ""  # ready: hidden
    # The worker's own account (Check again): a torch that does not import is a setup problem too.
    report = {"private": {"problem": None}, "worker": {"errors": {"torch": "ImportError: libcudart.so.12"}}}
    text = doctor.setup_banner(report)
    assert "cannot import torch (ImportError: libcudart.so.12)" in text and deps.install_command() in text
    assert doctor.setup_banner({"private": {"problem": None}, "worker": {"error": "exited with code 1: boom"}})
    assert doctor.setup_banner({"private": {"problem": None}, "worker": {"errors": {}}}) == ""


def test_no_banner_from_the_private_folder_when_renders_use_a_python_of_their_own(tmp_path, monkeypatch):
    from deforum_wan.service import bridge, deps, doctor

    monkeypatch.setenv(deps.ENV_DEPS_DIR, str(tmp_path / "empty"))
    other = tmp_path / "python"
    other.write_text("")
    monkeypatch.setenv(bridge.ENV_WORKER_PYTHON, str(other))
    assert doctor.setup_banner() == ""


# ---------------------------------------------------------------- resume list


def _fake_render(outdir: Path, name: str, ts: str, frames: int, total: int, plan: bool = True,
                 clips: list | None = None) -> Path:
    folder = outdir / name
    folder.mkdir(parents=True)
    for i in range(frames):
        (folder / outputs.frame_name(ts, i)).write_bytes(b"png")
    (folder / f"{ts}_settings.txt").write_text("{}")
    if plan:
        (folder / f"{ts}_wan_plan.json").write_text(json.dumps({"max_frames": total, "model_kind": "vace",
                                                                "clips": clips or []}))
    return folder


def test_unfinished_renders_lists_short_batches_newest_first(tmp_path):
    _fake_render(tmp_path, "Done", "20240101000000", 5, 5)
    b = _fake_render(tmp_path, "Half", "20240102000000", 3, 10)
    _fake_render(tmp_path, "Deforum", "20240103000000", 2, 10, plan=False)  # Deforum's own render: not ours
    c = _fake_render(tmp_path, "Enhanced", "20240104000000", 0, 10,
                     clips=[{"index": 0, "enhanced_prompt": "a fox, golden hour"}])  # a resume keeps the prompts
    (b / outputs.frame_name("20240102000000", 5)).write_bytes(b"png")  # a gap: resume starts at 3
    found = ui_data.unfinished_renders(tmp_path)
    assert [(r.folder, r.timestring, r.frames_on_disk, r.frames_total) for r in found] == [
        (c, "20240104000000", 0, 10), (b, "20240102000000", 3, 10)]
    assert found[1].label == "Half / 20240102000000: 3/10 frames (vace)"
    assert found[1].settings_path == b / "20240102000000_settings.txt"
    assert ui_data.unfinished_renders(tmp_path / "nowhere") == []


def test_a_render_that_stopped_before_its_first_frame_is_not_unfinished(tmp_path):
    """A failed (or cancelled, or killed) start leaves settings and a plan but no frame: nothing to resume."""
    _fake_render(tmp_path, "Failed", "20240105000000", 0, 10, clips=[{"index": 0, "enhanced_prompt": None}])
    _fake_render(tmp_path, "Broken", "20240106000000", 0, 10)
    (tmp_path / "Broken" / "20240106000000_wan_plan.json").write_text("[1, 2]")  # not a plan at all
    assert ui_data.unfinished_renders(tmp_path) == []


# ---------------------------------------------------------------- models, plot data, progress


def test_model_choices_and_default(tmp_path):
    from types import SimpleNamespace

    infos = [SimpleNamespace(name=name, kind=kind, path=tmp_path / name)
             for name, kind in (("Wan2.1-T2V-1.3B", "t2v"), ("Wan2.1-VACE-1.3B", "vace"))]
    choices = ui_data.model_choices(infos)
    assert list(choices) == ["Wan2.1-T2V-1.3B (t2v)", "Wan2.1-VACE-1.3B (vace)"]
    assert ui_data.pick_default_model(choices, "Wan2.1-VACE-1.3B") == "Wan2.1-VACE-1.3B (vace)"
    assert ui_data.pick_default_model(choices, str(tmp_path / "Wan2.1-T2V-1.3B")) == "Wan2.1-T2V-1.3B (t2v)"
    assert ui_data.pick_default_model(choices, "missing") == "Wan2.1-VACE-1.3B (vace)"  # VACE first
    assert ui_data.pick_default_model({}, None) is None


def test_camera_series_integrates_increments():
    settings = _settings(max_frames=10, animation_mode="3D", translation_z="0:(2)", rotation_3d_y="0:(0), 5:(1)",
                         zoom="0:(1.1)")
    series = {s.key: s for s in ui_plot.camera_series(settings)}
    assert set(series) == {"translation_z", "rotation_3d_y"}  # 3D ignores zoom; static axes are left out
    np.testing.assert_allclose(series["translation_z"].path, np.arange(1, 11) * 2.0)
    assert series["rotation_3d_y"].path[-1] == pytest.approx(sum(np.linspace(0, 1, 6)) + 4)
    two_d = {s.key: s for s in ui_plot.camera_series(_settings(max_frames=4, zoom="0:(1.1)"))}
    np.testing.assert_allclose(two_d["zoom"].path, 1.1 ** np.arange(1, 5))


def test_plot_marks_clip_starts_and_keyframes():
    settings = _settings(max_frames=120, fps=16)
    clips, keys = ui_plot.plot_marks(_plan(settings), settings)
    assert clips == [17, 30, 46, 60, 76, 90, 106]
    assert keys == [(0, "0"), (30, "30"), (60, "60"), (90, "90")]


def test_camera_figure_draws_when_matplotlib_is_there():
    pytest.importorskip("matplotlib")
    settings = _settings(max_frames=60, fps=16)
    fig = ui_plot.camera_figure(settings, _plan(settings))
    top, bottom = fig.axes[:2]  # the third is the top-down view
    assert top.get_lines() and bottom.get_xlabel() == "frame"


def test_progress_html_and_terminal_states():
    assert "No render" in ui_data.progress_html(None)
    running = {"status": "ACCEPTED", "phase": "GENERATING", "frames_written": 30, "frames_total": 120,
               "eta_seconds": 75, "message": "clip 2/8, step 1/2"}
    html = ui_data.progress_html(running)
    assert 'style="width:25.0%"' in html and "30/120 frames" in html and "ETA 1m 15s" in html
    assert 'data-status="ACCEPTED"' in html and not ui_data.is_terminal(running)
    done = {**running, "status": "SUCCEEDED", "frames_written": 120}
    assert ui_data.is_terminal(done) and "ETA" not in ui_data.progress_html(done)
    assert ui_data.progress_fraction({"status": "SUCCEEDED"}) == 1.0
    assert ui_data.format_eta(3725) == "1h 02m" and ui_data.format_eta(None) == ""
    assert "&lt;b&gt;" in ui_data.progress_html({"status": "FAILED", "message": "<b>"})


def test_enhance_rows_reads_several_shapes():
    assert ui_data.enhance_rows({"clips": [{"clip": 0, "before": "a", "after": "b"}]}) == [[0, "a", "b"]]
    assert ui_data.enhance_rows([{"index": 1, "prompt": "a", "enhanced_prompt": "c"}]) == [[1, "a", "c"]]
    assert ui_data.enhance_rows([["a", "b"]]) == [[0, "a", "b"]]


def test_controls_give_the_job_queue_its_override_keys():
    from deforum_wan.service import jobs
    from deforum_wan.webui.tab import Controls

    overrides = Controls(model_path="/m/vace", width=64, height=0, steps=2, guidance=0, continuity="vace", overlap=3,
                         color_match=False, enhance=True, style="noir").overrides()
    assert set(overrides) <= set(jobs.OVERRIDE_KEYS)
    assert overrides["width"] == 64 and "height" not in overrides and "guidance" not in overrides
    assert overrides["color_match"] is False and overrides["enhance_style"] == "noir"


# ---------------------------------------------------------------- both hosts' gradio


@pytest.mark.parametrize("host", ["a1111", "forge"])
def test_tab_builds_in_host_env(host, tmp_path):
    """tests/host_ui_check.py in .venv-a1111 (gradio 3.41.2) and .venv-forge (gradio 4.40.0)."""
    python = host_python(host)
    env = {**os.environ, "DEFORUM_WAN_JOBS_DB": str(tmp_path / "jobs.sqlite3"), "GRADIO_ANALYTICS_ENABLED": "False"}
    started = time.monotonic()
    result = subprocess.run([str(python), str(REPO / "tests" / "host_ui_check.py"), str(SIMPLE)], capture_output=True,
                            text=True, env=env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["gradio"] == {"a1111": "3.41.2", "forge": "4.40.0"}[host]
    assert seen["clips"] >= 1 and time.monotonic() - started < 600
