"""The Wan tab in a real browser: headless Debian chromium driven by Playwright, against `deforum-wan ui`.

The standalone app runs in `.venv-forge` (gradio 4.40) exactly as a user starts
it; renders go through the job queue to a worker run by this venv's python
(DEFORUM_WAN_WORKER_PYTHON), with a tiny random VACE model. A second app runs in
`.venv-a1111` (gradio 3.41) with the renderer libraries missing, for the setup
banner and the page as Automatic1111's gradio draws it (no render there).
Screenshots land in test-artifacts/browser/ (the README's pictures are taken in
the real web UIs).
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
A1111_PYTHON = REPO / ".venv-a1111" / "bin" / "python"
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


def _serve(python: Path, root: Path, models: Path, env: dict, log_name: str = "server.log"):
    """`deforum-wan ui` from `python` on a free port; yields its app dict, stops it and keeps its log."""
    outdir = root / "outputs"
    port = _free_port()
    log = open(root / log_name, "w")
    proc = subprocess.Popen([str(python), "-m", "deforum_wan", "ui", "--port", str(port), "--outdir", str(outdir),
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
        pytest.fail(f"the standalone app did not start:\n{(root / log_name).read_text()[-3000:]}")
    yield {"url": url, "root": root, "outdir": outdir}
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(root / log_name, ARTIFACTS / log_name)


@pytest.fixture(scope="module")
def app(tiny_models, tmp_path_factory):
    """`deforum-wan ui` from .venv-forge, a tiny VACE model in its models folder."""
    require_render_stack()
    if not FORGE_PYTHON.exists():
        _missing(".venv-forge")
    root = tmp_path_factory.mktemp("browser")
    models = root / "models"
    models.mkdir()
    (models / tiny_models["vace"].name).symlink_to(tiny_models["vace"], target_is_directory=True)
    env = {**os.environ, "DEFORUM_WAN_WORKER_PYTHON": sys.executable, "DEFORUM_WAN_JOBS_DB": str(root / "jobs.db"),
           "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    yield from _serve(FORGE_PYTHON, root, models, env)


@pytest.fixture(scope="module")
def app_341(tmp_path_factory):
    """`deforum-wan ui` from .venv-a1111 (gradio 3.41), its renderer libraries missing (an empty private folder)."""
    if not A1111_PYTHON.exists():
        _missing(".venv-a1111")
    root = tmp_path_factory.mktemp("browser-341")
    env = {k: v for k, v in os.environ.items() if k != "DEFORUM_WAN_WORKER_PYTHON"}
    env.update(DEFORUM_WAN_DEPS_DIR=str(root / "no-deps"), DEFORUM_WAN_JOBS_DB=str(root / "jobs.db"),
               HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    (root / "models").mkdir()
    yield from _serve(A1111_PYTHON, root, root / "models", env, "server-341.log")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not CHROMIUM.exists():
        _missing(str(CHROMIUM))
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 1000})
        yield context
        context.close()


def _open(browser, url: str):
    page = browser.new_page()
    page.set_default_timeout(60_000)
    page.goto(url)
    page.wait_for_selector("#deforum_wan_generate")
    return page


@pytest.fixture(scope="module")
def page(app, browser):
    page = _open(browser, app["url"])
    yield page
    page.close()


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


def _upload(page, path: Path) -> None:
    page.set_input_files("#deforum_wan_upload input[type=file]", str(path))


def _settings_file(folder: Path, name: str, **changes) -> Path:
    data = json.loads((SHARED / "a1111-deforum-test-simple.txt").read_text())
    data.update(changes)
    path = folder / name
    path.write_text(json.dumps(data, indent=4))
    return path


# The rows the user sees: gradio 4.40 draws a hidden table first, one row of the longest values, to
# measure the columns; the last tbody is the one shown (gradio 3.41 has only that one).
_SHOWN_ROWS = "[...document.querySelectorAll('#deforum_wan_plan_table tbody')].pop().querySelectorAll('tr')"


def _shown_rows(page) -> int:
    return page.evaluate(f"() => {_SHOWN_ROWS}.length")


def _seed_lines(page) -> list[int]:
    """Lines each shown row's seed takes, counted from its text's line boxes (gradio 4.40's cells
    break anywhere, and its seed column is as wide as the header "seed": a 10-digit seed broke in two)."""
    return page.evaluate(f"""() => [...{_SHOWN_ROWS}].map(tr => {{
        const td = tr.querySelectorAll('td')[5];
        const range = document.createRange();
        range.selectNodeContents(td.querySelector('span') || td);
        return new Set([...range.getClientRects()].map(r => Math.round(r.top))).size;
    }})""")


def _resume_options(page) -> list[str]:
    """The Unfinished renders choices, as the open dropdown lists them."""
    page.click("#deforum_wan_resume_list input")
    time.sleep(0.3)
    items = [t.strip() for t in page.locator("#deforum_wan_resume_list li").all_inner_texts()]
    page.keyboard.press("Escape")
    return items


def _check_page_before_and_after_import(page, settings: Path) -> None:
    """No plan table before a plan (no fake row, no "New row"); an upload is named by its own name;
    the seeds stay on one line; the note follows the size as it changes."""
    assert not page.locator("#deforum_wan_plan_table").is_visible()
    assert not page.get_by_text("New row").first.is_visible()
    _upload(page, settings)
    page.wait_for_selector("#deforum_wan_plan_table :text('tiny cute swamp bunny')")
    status = page.inner_text("#deforum_wan_import_status")
    assert f"Imported {settings.name}" in status and "gradio" not in status and "/tmp" not in status, status
    assert page.locator("#deforum_wan_plan_table").is_visible()
    assert _shown_rows(page) == 1  # one clip, no default row
    assert not page.get_by_text("New row").first.is_visible()
    for elem_id, value in (("deforum_wan_width", 48), ("deforum_wan_height", 32)):
        _set_number(page, elem_id, value)
    page.wait_for_selector("#deforum_wan_plan_note :text('48×32')", timeout=20_000)
    long = settings.with_name("long_" + settings.name)
    # 2 s per prompt at 15 fps: each prompt stays its own clip (shorter ones are merged).
    long.write_text(json.dumps({**json.loads(settings.read_text()), "max_frames": 120, "fps": 15}))
    _load(page, long)  # four clips with long prompts
    page.wait_for_selector("#deforum_wan_plan_table :text('a beautiful durian')")
    assert _seed_lines(page) == [1, 1, 1, 1]


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
    # 0. Everything is set up: no banner.
    assert not page.locator("#deforum_wan_setup").is_visible()
    # 1. Upload a real Deforum settings file: the summary, the plan rows and the camera plot appear.
    settings = _settings_file(tmp_path, "simple_settings.txt", seed=4294967295)
    _check_page_before_and_after_import(page, settings)
    _load(page, settings)
    page.wait_for_selector("#deforum_wan_plan_note :text('5 frames at 20 fps')")
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

    # 3. A longer render, interrupted once frames are on disk: the frames stay and it is listed for resume.
    data = json.loads(settings.read_text())
    data.update(max_frames=120, fps=15, wan_max_clip_frames=21, batch_name="Long_{timestring}")
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
    listed = f"{long_folder.name} / "

    # 4. A render stopped before its first frame leaves its settings and plan, but nothing to resume.
    early = _settings_file(tmp_path, "early_settings.txt", max_frames=120, fps=15, wan_max_clip_frames=21,
                           batch_name="Early_{timestring}")
    _load(page, early)
    page.wait_for_selector("#deforum_wan_plan_table :text('a beautiful durian')")
    _set_number(page, "deforum_wan_steps", 40)  # a slow first clip: the stop lands before its frames
    page.click("#deforum_wan_generate")
    # The render's start event (its settings and plan are saved by then) says "N clip(s), M frames".
    started_run = _watch_run(page, lambda s: s["status"] == "FAILED" or (s["status"] == "ACCEPTED" and any(
        word in s["text"] for word in ("clip(s),", "loading", "attention"))), 120)
    assert started_run[-1]["status"] == "ACCEPTED" and started_run[-1]["frames"] == 0, started_run[-3:]
    page.click("#deforum_wan_interrupt")
    seen = _watch_run(page, lambda s: s["status"] in ("SUCCEEDED", "FAILED", "CANCELLED"), 120)
    assert seen[-1]["status"] == "CANCELLED" and seen[-1]["frames"] == 0, seen[-3:]
    early_folder = next(app["outdir"].glob("Early_*"))
    assert list(early_folder.glob("*_settings.txt")) and list(early_folder.glob("*_wan_plan.json"))
    options = _resume_options(page)
    assert any(o.startswith(listed) for o in options) and not any(o.startswith("Early_") for o in options), options

    # 5. A reloaded page lists the unfinished renders as they are now, not as they were at start.
    page.reload()
    page.wait_for_selector("#deforum_wan_generate")
    time.sleep(1.0)  # the page's load event fills the list
    options = _resume_options(page)
    assert any(o.startswith(listed) and f"{final['frames']}/120 frames" in o for o in options), options
    (ARTIFACTS / "timings.json").write_text(json.dumps({"browser_test_seconds": round(time.monotonic() - started, 1)}))


def test_gradio_341_page_setup_banner_and_plan_table(app_341, browser, tmp_path):
    """Automatic1111's gradio, the renderer libraries missing: the banner is at the top with the command."""
    page = _open(browser, app_341["url"])
    try:
        banner = page.locator("#deforum_wan_setup")
        assert banner.is_visible()
        text = page.inner_text("#deforum_wan_setup_note")
        assert "Renders cannot run yet" in text and "install.py" in text and str(A1111_PYTHON) in text, text
        top = page.locator("#deforum_wan_upload").bounding_box()["y"]
        assert banner.bounding_box()["y"] < top
        settings = _settings_file(tmp_path, "my_dance_settings.txt", seed=4294967295)
        _check_page_before_and_after_import(page, settings)
        page.screenshot(path=str(ARTIFACTS / "04-gradio-341-setup.png"), full_page=True)
        # Check again asks the worker, which cannot import the renderer's diffusers: still shown, and says so.
        page.click("#deforum_wan_setup_check")
        page.wait_for_selector("#deforum_wan_setup_note :text('cannot import diffusers')", timeout=120_000)
        assert banner.is_visible()
    finally:
        page.close()


def test_init_image_upload_reaches_the_render_and_a_bad_path_is_named(app, page, tmp_path):
    """Drop a picture on the Init image box: it is kept in the API's inputs folder, the plan and the note say the
    render starts from it, and the rendered frames carry its colours; a path outside the output folders is refused."""
    import numpy as np
    from PIL import Image

    settings = _settings_file(tmp_path, "init_settings.txt", color_coherence="LAB", batch_name="Init_{timestring}")
    _load(page, settings)
    page.wait_for_selector("#deforum_wan_plan_note :text('5 frames at 20 fps')")
    page.locator("#deforum_wan_init").get_by_text("Init image", exact=True).first.click()
    red = tmp_path / "red_start.png"
    Image.new("RGB", (64, 48), (200, 30, 20)).save(red)
    page.set_input_files("#deforum_wan_init_image input[type=file]", str(red))
    page.wait_for_selector("#deforum_wan_init_status :text('The render starts from the uploaded image')")
    assert "use_init off" in page.inner_text("#deforum_wan_init_status")
    page.wait_for_selector("#deforum_wan_plan_note :text('init image: the uploaded image from the tab')")
    page.wait_for_selector("#deforum_wan_init_image img")  # the thumbnail
    page.screenshot(path=str(ARTIFACTS / "05-init-image.png"), full_page=True)

    for elem_id, value in (("deforum_wan_width", 32), ("deforum_wan_height", 32), ("deforum_wan_steps", 2)):
        _set_number(page, elem_id, value)
    page.click("#deforum_wan_generate")
    seen = _watch_run(page, lambda s: s["status"] in ("SUCCEEDED", "FAILED", "CANCELLED"), RENDER_TIMEOUT_MS / 1000)
    assert seen[-1]["status"] == "SUCCEEDED", seen[-3:]
    folder = next(app["outdir"].glob("Init_*"))
    saved = json.loads(next(folder.glob("*_settings.txt")).read_text())
    init = Path(saved["init_image"])
    assert saved["use_init"] is True and init.parent == (app["outdir"] / "deforum_wan_api_inputs").resolve()
    assert init.read_bytes() == red.read_bytes()
    frames = np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*_?????????.png"))])
    mean = frames.reshape(-1, 3).mean(axis=0)
    assert len(frames) == 5 and mean[0] > 150 and mean[1] < 90 and mean[2] < 90, mean

    _text_input(page, "deforum_wan_init_path").fill("/etc/hostname")
    page.click("#deforum_wan_init_use")
    page.wait_for_selector("#deforum_wan_init_status :text('Cannot use the init image')")
    status = page.inner_text("#deforum_wan_init_status")
    assert "files inside the web UI's output or input folders" in status, status
    assert "The render starts from the uploaded image" in status  # the earlier choice stays


def test_gradio_341_init_image_upload_and_a_file_that_is_not_an_image(app_341, browser, tmp_path):
    """Automatic1111's gradio draws the same Init image box: a dropped picture is taken, a text file is refused."""
    from PIL import Image

    page = _open(browser, app_341["url"])
    try:
        _load(page, _settings_file(tmp_path, "init_341_settings.txt", use_init=True, init_image="/pics/own.png"))
        page.locator("#deforum_wan_init").get_by_text("Init image", exact=True).first.click()
        page.wait_for_selector("#deforum_wan_init_status :text('/pics/own.png')")  # the file's own, shown first
        picture = tmp_path / "start.png"
        Image.new("RGB", (40, 24), (0, 90, 200)).save(picture)
        page.set_input_files("#deforum_wan_init_image input[type=file]", str(picture))
        page.wait_for_selector("#deforum_wan_init_status :text('The render starts from the uploaded image')")
        status = page.inner_text("#deforum_wan_init_status")
        assert "in place of the settings' init_image /pics/own.png (use_init on)" in status, status
        saved = list((app_341["outdir"] / "deforum_wan_api_inputs").glob("*.png"))
        assert len(saved) == 1, saved
        notes = app_341["outdir"] / "notes.png"
        notes.write_text("not a picture")
        _text_input(page, "deforum_wan_init_path").fill(str(notes))
        page.click("#deforum_wan_init_use")
        page.wait_for_selector("#deforum_wan_init_status :text('not an image PIL can read')")
        page.screenshot(path=str(ARTIFACTS / "06-gradio-341-init-image.png"), full_page=True)
    finally:
        page.close()
