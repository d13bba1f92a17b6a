"""Depth models: the tiny one loads through the real path, predicts at the picture's size, and bends the guide."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import require_render_stack
from deforum_wan.core.plan import PlanOptions, plan_clips
from deforum_wan.core.settings import settings_from_dict
from deforum_wan.core.specs import MODEL_SPECS

NAME = "tiny-depth-anything"


@pytest.fixture(scope="module")
def depth_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny depth model, built as `deforum-wan make-tiny-models DIR --kinds depth` builds it."""
    require_render_stack()
    from deforum_wan.renderer.tiny import make_tiny_models

    return make_tiny_models(tmp_path_factory.mktemp("depth-models"), ["depth"])["depth"]


def models_root(depth_folder: Path) -> Path:
    return depth_folder.parents[1]  # <models>/depth/<name>


def dolly_settings(use_depth_warping: bool = True, **kw):
    data = {"prompts": {"0": "a red fox"}, "max_frames": 24, "fps": 16, "W": 64, "H": 48, "seed": 5,
            "animation_mode": "3D", "translation_z": "0: (6)", "use_depth_warping": use_depth_warping,
            "depth_algorithm": "Depth-Anything-V2-Small", "batch_name": "depth_{timestring}"}
    data.update(kw)
    return settings_from_dict(data)


def picture(height: int, width: int) -> np.ndarray:
    """Stripes and dots: a warp with depth moves them differently from a flat one."""
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(1)
    image = np.stack([(x * 9) % 256, (y * 13) % 256, (x * y) % 256], axis=-1).astype(np.float64)
    image += rng.normal(0, 20, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


class Counting:
    """A depth model that counts its predictions."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def predict(self, image):
        self.calls.append(image.shape)
        return self.model.predict(image)


def test_the_tiny_depth_model_loads_through_the_real_path_and_predicts_at_the_pictures_size(depth_folder):
    from deforum_wan.renderer.depth import DepthModel, find_depth_model

    folder = depth_folder
    assert folder.parent.name == "depth" and folder.name == NAME
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors", "preprocessor_config.json"}
    assert json.loads((folder / "config.json").read_text())["model_type"] == "depth_anything"
    assert find_depth_model(NAME, models_root(depth_folder)) == folder.resolve()
    assert find_depth_model(str(folder)) == folder.resolve()  # a folder works as well as a name
    model = DepthModel(find_depth_model(NAME, models_root(depth_folder)), device="cpu")
    try:
        depth = model.predict(picture(40, 72))
        assert depth.shape == (40, 72) and depth.dtype == np.float32
        assert np.isfinite(depth).all() and depth.max() > depth.min()
        assert model.predict(picture(40, 72)[..., 0]).shape == (40, 72)  # grey pictures too
    finally:
        model.free()
    with pytest.raises(Exception, match="freed"):
        model.predict(picture(8, 8))


def test_a_missing_depth_model_says_where_it_looked(depth_folder, tmp_path):
    from deforum_wan.renderer.depth import DepthModelError, find_depth_model

    root = models_root(depth_folder)
    with pytest.raises(DepthModelError) as err:
        find_depth_model("nope", root)
    text = str(err.value)
    assert "'nope' not found" in text and str(root / "depth" / "nope") in text and NAME in text
    with pytest.raises(DepthModelError, match="not a model folder"):
        find_depth_model(str(tmp_path / "empty"), root)
    with pytest.raises(DepthModelError, match="no depth models in"):
        find_depth_model("nope", tmp_path)


@pytest.mark.parametrize("use_depth_warping", [True, False])
def test_the_guide_warps_with_predicted_depth_only_when_use_depth_warping_is_on(depth_folder, use_depth_warping):
    """A 3D dolly: with depth warping on, near and far pixels move apart, so the guide differs from the flat one,
    with one prediction per warped frame; with it off Deforum ignores depth, and so does the guide."""
    from deforum_wan.renderer.depth import load_depth_model
    from deforum_wan.renderer.guide import clip_guide

    settings = dolly_settings(use_depth_warping)
    plan = plan_clips(settings, MODEL_SPECS["vace"], PlanOptions(seed=1, motion="guide", max_clip_frames=13,
                                                                 overlap=2, width=64, height=48, exact_size=True))
    clip = plan.clips[1]
    shown = picture(plan.height, plan.width)
    model = load_depth_model(NAME, models_root(depth_folder), device="cpu")
    try:
        counting = Counting(model)
        flat = clip_guide(settings, plan, clip, shown)
        deep = clip_guide(settings, plan, clip, shown, depth_model=counting)
    finally:
        model.free()
    assert deep.frames.shape == flat.frames.shape and deep.revealed.shape == flat.revealed.shape
    if use_depth_warping:
        assert len(counting.calls) == clip.output_end - clip.output_start  # one map per warped frame
        assert set(counting.calls) == {(plan.height, plan.width, 3)}
        assert not np.array_equal(deep.frames, flat.frames)
        assert np.abs(deep.frames.astype(int) - flat.frames.astype(int)).mean() > 1
    else:
        assert counting.calls == []
        np.testing.assert_array_equal(deep.frames, flat.frames)
        np.testing.assert_array_equal(deep.revealed, flat.revealed)


@pytest.mark.parametrize("use_depth_warping", [True, False])
def test_a_render_loads_the_depth_model_only_when_the_guide_uses_it_and_frees_it(tiny_models, depth_folder, tmp_path,
                                                                                   monkeypatch, use_depth_warping):
    require_render_stack()
    from deforum_wan.renderer import depth as depth_module
    from deforum_wan.renderer import guide as guide_module
    from deforum_wan.renderer.render import RenderJob, render

    seen, loaded, freed = [], [], []
    real_guide, real_init, real_free = guide_module.clip_guide, depth_module.DepthModel.__init__, \
        depth_module.DepthModel.free

    def spy_guide(*args, depth_model=None):
        seen.append(depth_model)
        return real_guide(*args, depth_model=depth_model)

    def spy_init(self, *args, **kw):
        loaded.append(args)
        real_init(self, *args, **kw)

    def spy_free(self):
        freed.append(self.folder)
        real_free(self)

    monkeypatch.setattr(guide_module, "clip_guide", spy_guide)
    monkeypatch.setattr(depth_module.DepthModel, "__init__", spy_init)
    monkeypatch.setattr(depth_module.DepthModel, "free", spy_free)
    from PIL import Image

    init = tmp_path / "init.png"
    Image.fromarray(picture(32, 32)).save(init)
    settings = dolly_settings(use_depth_warping, W=32, H=32, use_init=True, init_image=str(init))
    result = render(RenderJob(settings=settings, model=str(tiny_models["vace"]), outdir=str(tmp_path),
                              models_dir=str(models_root(depth_folder)), depth_model=NAME, make_video=False,
                              device="cpu", options=PlanOptions(steps=1, seed=3, max_clip_frames=9, overlap=2,
                                                                motion="guide")))
    assert result.status == "done" and len(seen) == sum(c.mode == "vace" for c in result.plan.clips) >= 2
    if use_depth_warping:
        assert len(loaded) == 1 and all(isinstance(m, depth_module.DepthModel) for m in seen)
        assert freed == [depth_folder.resolve()]
    else:
        assert loaded == [] and seen == [None] * len(seen) and freed == []


def test_a_wrong_depth_model_is_a_one_line_error_before_the_video_model_loads(tiny_models, depth_folder, tmp_path,
                                                                              monkeypatch):
    require_render_stack()
    from deforum_wan.renderer import loading
    from deforum_wan.renderer.render import RenderError, RenderJob, render

    def no_load(*args, **kw):
        raise AssertionError("the video model must not load")

    monkeypatch.setattr(loading, "load_pipelines", no_load)
    job = RenderJob(settings=dolly_settings(W=32, H=32), model=str(tiny_models["vace"]), outdir=str(tmp_path / "a"),
                    models_dir=str(models_root(depth_folder)), depth_model="Depth-Anything-V2-Small-hf",
                    options=PlanOptions(steps=1, seed=3, max_clip_frames=9, overlap=2, motion="guide"))
    with pytest.raises(RenderError, match="depth model 'Depth-Anything-V2-Small-hf' not found"):
        render(job)
    assert not list((tmp_path / "a").rglob("*.png"))

    settings_file = tmp_path / "settings.txt"
    settings_file.write_text(json.dumps(dolly_settings(W=32, H=32).to_dict()))
    out = subprocess.run(
        [sys.executable, "-m", "deforum_wan", "render", str(settings_file), "--model", str(tiny_models["vace"]),
         "--models-dir", str(models_root(depth_folder)), "--depth-model", "nope", "--motion", "guide",
         "--outdir", str(tmp_path / "b"), "--steps", "1", "--device", "cpu", "--no-video"],
        capture_output=True, text=True)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert "depth model 'nope' not found" in out.stderr and NAME in out.stderr
    assert "loading" not in out.stdout + out.stderr


@pytest.mark.parametrize("value", ["/etc", "../depth/x", "~/models/depth", "depth/x", "C:\\models\\x", ".hidden",
                                   "", 7, ["x"]])
def test_the_api_takes_a_depth_model_by_name_never_by_path(value):
    from deforum_wan.service.overrides import override_checks

    with pytest.raises(ValueError):
        override_checks()["depth_model"](value)


def test_the_api_refuses_a_depth_model_path_and_passes_a_name_to_the_worker(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from deforum_wan.service import api
    from deforum_wan.service.jobdata import build_job
    from deforum_wan.service.jobs import JobQueue
    from deforum_wan.service.worker import job_from_dict

    small = {"prompts": {"0": "a red fox"}, "max_frames": 4, "W": 32, "H": 32, "fps": 16, "seed": 3}
    queue = JobQueue(tmp_path / "jobs.sqlite3", runner=lambda job, **kw: None, outdir=tmp_path / "out",
                     default_model="vace")
    try:
        app = FastAPI()
        api.add_routes(app, queue)
        with TestClient(app) as client:
            r = client.post("/deforum_wan/txt2vid", json={"deforum_settings": small,
                                                          "options_overrides": {"depth_model": "/etc/passwd"}})
            assert r.status_code == 422 and "options_overrides.depth_model" in r.json()["message"], r.text
            assert "not by a path" in r.text
            r = client.post("/deforum_wan/txt2vid", json={"deforum_settings": small,
                                                          "options_overrides": {"depth_model": "Depth-Anything-V2-Small-hf"}})
            assert r.status_code == 202, r.text
    finally:
        queue.close()
    job = build_job(small, {"depth_model": "Depth-Anything-V2-Small-hf"}, outdir=str(tmp_path), models_dir=None,
                    model="vace")
    assert job["depth_model"] == "Depth-Anything-V2-Small-hf"
    assert job_from_dict(job).depth_model == "Depth-Anything-V2-Small-hf"
