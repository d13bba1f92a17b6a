"""The tab's init image: kept where the API keeps its inputs, refused outside the allowed folders, laid over the
settings for the plan and the job, and the render's first clip starts from it (a tiny VACE render in a worker)."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deforum_wan.core.settings import load_settings
from deforum_wan.renderer import fetch, outputs
from deforum_wan.service import jobs
from deforum_wan.service.bridge import WorkerConfig
from deforum_wan.service.validation import Validator
from deforum_wan.webui import init_image
from deforum_wan.webui.init_image import InitChoice, InitImageError, InitImages
from deforum_wan.webui.tab_data import Controls

SHARED = Path(__file__).resolve().parents[2] / "shared" / "deforum-settings"
SIMPLE = SHARED / "a1111-deforum-test-simple.txt"
RED = (200, 30, 20)


def _png(path: Path, size=(40, 24), colour=RED) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


@pytest.fixture()
def images(tmp_path):
    queue = jobs.JobQueue(tmp_path / "jobs.sqlite3", outdir=tmp_path / "out")
    try:
        yield InitImages(Validator(queue, [tmp_path / "out"]), lambda: fetch.FetchPolicy(allow_loopback=True))
    finally:
        queue.close()


def test_an_upload_is_kept_in_the_inputs_folder_under_its_hash(images, tmp_path):
    upload = _png(tmp_path / "gradio" / "abc" / "holiday.png")
    choice = images.upload(str(upload))
    saved = Path(choice.path)
    assert saved.parent == (tmp_path / "out" / "deforum_wan_api_inputs").resolve() and saved.suffix == ".png"
    assert saved.read_bytes() == upload.read_bytes() and choice.shown == "the uploaded image"
    assert images.upload(str(upload)).path == choice.path  # the same picture is one file
    assert InitChoice.from_state(choice.to_state()) == choice and InitChoice.from_state(None) is None


@pytest.mark.parametrize("given, words", [
    ("/etc/hostname", "only http(s) URLs, data: URLs and files inside the web UI's output or input folders"),
    ("~/x.png", "paths starting with '~' are not allowed"),
    ("ftp://example.com/a.png", "ftp: URLs are not allowed"),
    ("data:image/png;base64,!!!", "the data: URL is not valid base64"),
    ("", "give a path or an http(s) URL"),
])
def test_paths_and_urls_the_api_refuses_are_refused_with_its_words(images, given, words):
    with pytest.raises(InitImageError) as caught:
        images.given(given)
    assert words in str(caught.value)


def test_a_file_that_is_not_an_image_or_is_missing_or_too_large(images, tmp_path, monkeypatch):
    text = tmp_path / "out" / "notes.png"
    text.parent.mkdir(parents=True)
    text.write_text("not a picture")
    with pytest.raises(InitImageError, match="not an image PIL can read"):
        images.given(str(text))
    with pytest.raises(InitImageError, match="not an image PIL can read"):
        images.upload(str(text))
    with pytest.raises(InitImageError, match="no such file"):
        images.given(str(tmp_path / "out" / "gone.png"))
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(InitImageError, match="the file is empty"):
        images.upload(str(empty))
    monkeypatch.setitem(fetch.MAX_BYTES, fetch.IMAGE, 100)
    with pytest.raises(InitImageError, match="larger than"):
        images.upload(str(_png(tmp_path / "big.png", size=(64, 64))))


def test_a_path_inside_the_output_folder_and_a_data_url_are_taken(images, tmp_path):
    inside = _png(tmp_path / "out" / "Deforum_1" / "frame.png", colour=(0, 90, 200))
    choice = images.given(str(inside))
    assert Path(choice.path).parent.name == "deforum_wan_api_inputs" and choice.shown == str(inside)
    import base64

    url = "data:image/png;base64," + base64.b64encode(inside.read_bytes()).decode()
    assert images.given(url) == InitChoice(choice.path, "a data: URL")


def test_a_url_is_fetched_once_into_the_inputs_folder(images, tmp_path):
    from netfixtures import LocalServer, png_bytes

    with LocalServer() as web:
        web.routes.add("/start.png", png_bytes((40, 24)), "image/png")
        web.routes.add("/page", b"<html></html>", "text/html")
        choice = images.given(web.url("/start.png"))
        assert Path(choice.path).parent.name == "deforum_wan_api_inputs" and choice.shown == web.url("/start.png")
        with pytest.raises(InitImageError, match="cannot fetch it"):
            images.given(web.url("/page"))


def test_the_choice_replaces_the_settings_init_image_and_strength_and_only_for_the_render():
    settings = load_settings(SIMPLE)
    choice = InitChoice("/out/deforum_wan_api_inputs/abc.png", "the uploaded image").to_state()
    rendered = init_image.apply(settings, choice, 0.55)
    assert (rendered.use_init, rendered.init_image, rendered.raw["strength"]) == (True, choice["path"], 0.55)
    assert settings.use_init is False and settings.raw["strength"] == 0.8
    assert init_image.apply(settings, None, 0.3) is settings  # no init image at all: strength means nothing
    own = load_settings({**json.loads(SIMPLE.read_text()), "use_init": True, "init_image": "/pics/a.png"})
    assert init_image.apply(own, None, 0.8) is own  # the control untouched: the file as it is
    assert init_image.apply(own, None, 0.4).raw["strength"] == 0.4
    with pytest.raises(InitImageError, match="strength must be between 0 and 1, got 1.5"):
        init_image.apply(settings, choice, 1.5)
    text = init_image.describe(own, choice, 0.55)
    assert text.startswith("**The render starts from the uploaded image** (strength 0.55), in place of the "
                           "settings' init_image `/pics/a.png` (use_init on)")
    assert "settings' init_image `/pics/a.png` (strength 0.80)" in init_image.describe(own, None, 0.8)
    assert init_image.describe(settings, None, 0.8).startswith("No init image")
    assert init_image.settings_strength(settings) == 0.8 and init_image.settings_strength({"strength": "x"}) == 0.8


def test_an_uploaded_image_reaches_the_job_and_the_first_clip_starts_from_it(tiny_models, tmp_path):
    """What Generate does: the tab's settings and options go to the shared JobQueue, whose worker renders them."""
    from conftest import require_render_stack

    require_render_stack()
    models = tmp_path / "models"
    models.mkdir()
    (models / "vace").symlink_to(tiny_models["vace"], target_is_directory=True)
    queue = jobs.JobQueue(tmp_path / "jobs.sqlite3", outdir=tmp_path / "out", models_dir=models,
                          config=WorkerConfig(deps_dir=""))
    try:
        validator = Validator(queue, [tmp_path / "out"], [models, tiny_models["vace"].resolve().parent])
        choice = InitImages(validator).upload(str(_png(tmp_path / "gradio" / "start.png", size=(64, 48))))
        data = {**json.loads(SIMPLE.read_text()), "color_coherence": "LAB", "batch_name": "init_{timestring}"}
        settings = init_image.apply(load_settings(data), choice.to_state(), 0.7)
        controls = Controls(model_path=str(models / "vace"), width=32, height=32, steps=2,
                            init_image=choice.to_state(), init_strength=0.7)
        overrides = controls.overrides()
        # The API's validation accepts exactly these settings and options, the saved file included.
        checked, _ = validator.request({"deforum_settings": [settings.to_dict()], "options_overrides": overrides})
        assert checked[0]["init_image"] == choice.path and checked[0]["use_init"] is True
        done = threading.Event()
        queue.subscribe(lambda record, event: done.set() if record.status in ("SUCCEEDED", "FAILED") else None)
        _batch, (job_id,) = queue.start().submit([settings.to_dict()], overrides)
        assert done.wait(600), "the render did not finish"
        record = queue.get(job_id)
        assert record.status == "SUCCEEDED", record.message
    finally:
        queue.close()
    folder, ts = Path(record.outdir), record.timestring
    saved = load_settings(outputs.settings_file(folder, ts))
    assert (saved.use_init, saved.init_image, saved.raw["strength"]) == (True, choice.path, 0.7)
    plan = json.loads(outputs.plan_file(folder, ts).read_text())
    assert plan["clips"][0]["mode"] == "vace"  # started from the picture, not from text
    frames = np.stack([np.asarray(Image.open(folder / outputs.frame_name(ts, i))) for i in range(5)])
    mean = frames.reshape(-1, 3).mean(axis=0)  # the tiny model's noise, anchored to the init image's colours
    assert mean[0] > 150 and mean[1] < 90 and mean[2] < 90, mean
