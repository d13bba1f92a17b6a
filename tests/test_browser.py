"""The Wan tab in a real browser: headless Debian chromium driven by Playwright, against `deforum-wan ui`.

The standalone app runs in `.venv-forge` (gradio 4.40, no torch) exactly as a user
starts it; renders go through the job queue to a worker run by this venv's python
(DEFORUM_WAN_WORKER_PYTHON), with a tiny random VACE model. Screenshots land in
test-artifacts/browser/; with DEFORUM_WAN_UPDATE_SCREENSHOT=1 the first finished
render also refreshes docs/wan-tab.png for the README.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import require_render_stack

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "deforum-settings"
FORGE_PYTHON = REPO / ".venv-forge" / "bin" / "python"
CHROMIUM = Path(os.environ.get("DEFORUM_WAN_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = REPO / "test-artifacts" / "browser"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
RENDER_TIMEOUT_MS = 240_000


def _missing(what: str) -> None:
    """Skip locally when a piece is missing; in CI (`make test` builds everything) it is a failure."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing; `make test` should have installed it")
    pytest.skip(f"{what} is missing (run `make test` or `make host-envs browser`)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tiny_models, tmp_path_factory):
    """`deforum-wan ui` from .venv-forge on a free port, a tiny VACE model in its models folder."""
    require_render_stack()
    if not FORGE_PYTHON.exists():
        _missing(".venv-forge")
    root = tmp_path_factory.mktemp("browser")
    models = root / "models"
    models.mkdir()
    (models / tiny_models["vace"].name).symlink_to(tiny_models["vace"], target_is_directory=True)
    outdir = root / "outputs"
    port = _free_port()
    env = {**os.environ, "DEFORUM_WAN_WORKER_PYTHON": sys.executable, "DEFORUM_WAN_JOBS_DB": str(root / "jobs.db"),
           "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([str(FORGE_PYTHON), "-m", "deforum_wan", "ui", "--port", str(port), "--outdir", str(outdir),
                             "--models-dir", str(models)], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.3)
    else:
        proc.kill()
    if proc.poll() is not None:
        log.close()
        pytest.fail(f"the standalone app did not start:\n{(root / 'server.log').read_text()[-3000:]}")
    yield {"url": url, "root": root, "outdir": outdir}
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(root / "server.log", ARTIFACTS / "server.log")


@pytest.fixture(scope="module")
def page(app):
    if not CHROMIUM.exists():
        _missing(str(CHROMIUM))
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(app["root"] / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000})
        page = context.pages[0] if context.pages else context.new_page()
        page.set_default_timeout(60_000)
        page.goto(app["url"])
        page.wait_for_selector("#deforum_wan_generate")
        yield page
        context.close()


def _text_input(page, elem_id: str):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def _set_number(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input").first
    box.fill(str(value))
    box.press("Tab")


def _load(page, path: Path) -> None:
    box = _text_input(page, "deforum_wan_settings_path")
    box.fill(str(path))
    page.click("#deforum_wan_load_path")


def _progress(page) -> dict:
    node = page.locator("#deforum_wan_progress .deforum-wan-progress").first
    return {"status": node.get_attribute("data-status") or "", "frames": int(node.get_attribute("data-frames") or 0),
            "text": node.inner_text()}


def _watch_run(page, until, timeout_s: float) -> list[dict]:
    """Progress snapshots every 0.2 s until `until(snapshot)` holds."""
    seen: list[dict] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            snap = _progress(page)
        except Exception:  # the block is being re-rendered
            time.sleep(0.1)
            continue
        if not seen or snap != seen[-1]:
            seen.append(snap)
        if until(snap):
            return seen
        time.sleep(0.2)
    raise AssertionError(f"timed out; progress seen: {json.dumps(seen[-8:], indent=1)}")


def test_import_plan_generate_interrupt(app, page, tmp_path):
    started = time.monotonic()
    # 1. Import a real Deforum settings file: the summary, the plan rows and the camera plot appear.
    settings = tmp_path / "simple_settings.txt"
    shutil.copy(SHARED / "a1111-deforum-test-simple.txt", settings)
    _load(page, settings)
    page.wait_for_selector("#deforum_wan_plan_table :text('tiny cute swamp bunny')")
    assert "frames 5 at 20 fps" in _text_input(page, "deforum_wan_summary").input_value()
    page.wait_for_selector("#deforum_wan_plot img, #deforum_wan_plot svg, #deforum_wan_plot canvas")
    assert "vace" in page.inner_text("#deforum_wan_plan_note").lower()
    page.screenshot(path=str(ARTIFACTS / "01-imported.png"), full_page=True)

    # 2. Generate with the tiny model: progress moves, then the video player and the folder appear.
    for elem_id, value in (("deforum_wan_width", 32), ("deforum_wan_height", 32), ("deforum_wan_steps", 2)):
        _set_number(page, elem_id, value)
    page.click("#deforum_wan_generate")
    seen = _watch_run(page, lambda s: s["status"] in ("SUCCEEDED", "FAILED", "CANCELLED"), RENDER_TIMEOUT_MS / 1000)
    assert seen[-1]["status"] == "SUCCEEDED", seen[-3:]
    assert len({s["text"] for s in seen}) >= 3, seen  # submitted, preparing/generating, done
    page.wait_for_selector("#deforum_wan_video video", timeout=RENDER_TIMEOUT_MS)
    folder = Path(_text_input(page, "deforum_wan_outfolder").input_value())
    assert folder.is_dir() and folder.parent == app["outdir"].resolve()
    assert len(list(folder.glob("*_000000004.png"))) == 1 and list(folder.glob("*.mp4"))
    shot = ARTIFACTS / "02-rendered.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("DEFORUM_WAN_UPDATE_SCREENSHOT"):
        (REPO / "docs").mkdir(exist_ok=True)
        shutil.copy(shot, REPO / "docs" / "wan-tab.png")

    # 3. A longer render, interrupted once frames are on disk: the frames stay and it is listed for resume.
    data = json.loads(settings.read_text())
    data.update(max_frames=120, fps=16, wan_max_clip_frames=21, batch_name="Long_{timestring}")
    long_settings = tmp_path / "long_settings.txt"
    long_settings.write_text(json.dumps(data, indent=4))
    _load(page, long_settings)
    page.wait_for_selector("#deforum_wan_plan_table :text('a beautiful durian')")  # 8 clips, 4 prompts
    page.click("#deforum_wan_generate")
    running = _watch_run(page, lambda s: (s["status"] == "ACCEPTED" and s["frames"] > 0) or s["status"] == "FAILED",
                         RENDER_TIMEOUT_MS / 1000)
    assert running[-1]["status"] == "ACCEPTED", running[-3:]
    page.click("#deforum_wan_interrupt")
    seen = _watch_run(page, lambda s: s["status"] in ("SUCCEEDED", "FAILED", "CANCELLED"), 120)
    final = seen[-1]
    assert final["status"] == "CANCELLED", seen[-3:]
    assert 0 < final["frames"] < 120, final
    assert "frames kept" in final["text"], final
    long_folder = next(app["outdir"].glob("Long_*"))
    assert len(list(long_folder.glob("*_?????????.png"))) == final["frames"]
    assert not list(long_folder.glob("*.mp4"))
    page.screenshot(path=str(ARTIFACTS / "03-interrupted.png"), full_page=True)
    page.click("#deforum_wan_resume_list input")
    page.locator("li", has_text=f"{final['frames']}/120 frames").first.wait_for()
    page.keyboard.press("Escape")
    (ARTIFACTS / "timings.json").write_text(json.dumps({"browser_test_seconds": round(time.monotonic() - started, 1)}))
