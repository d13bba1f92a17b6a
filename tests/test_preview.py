"""Live previews while a clip denoises: the latent -> RGB projection, and renders that show it.

The projection is checked on latents with a known pattern (16 and 48 channels);
the renders go through the real diffusers pipelines with the tiny models.
"""
from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import require_render_stack
from deforum_wan.core.plan import PlanOptions
from deforum_wan.core.settings import settings_from_dict
from deforum_wan.renderer import outputs, preview


def expected_colour(factors, bias, weights) -> list[int]:
    """The colour a latent pixel with these channel values must get: ((w @ F + b) + 1) / 2 * 255, clipped."""
    rgb = np.asarray(weights, np.float64) @ np.asarray(factors, np.float64) + np.asarray(bias)
    return np.clip((rgb + 1.0) * 127.5, 0, 255).round().astype(int).tolist()


# --- the projection (pure) ---------------------------------------------------------------


@pytest.mark.parametrize("channels,factors,bias", [
    (16, preview.WAN21_RGB_FACTORS, preview.WAN21_RGB_BIAS),
    (48, preview.WAN22_RGB_FACTORS, preview.WAN22_RGB_BIAS),
])
def test_a_known_latent_pattern_gives_the_expected_colours(channels, factors, bias):
    assert len(factors) == channels and all(len(row) == 3 for row in factors) and len(bias) == 3
    latent = np.zeros((channels, 4, 6), np.float32)
    latent[2, :, :3] = 1.0  # left half: channel 2 on
    latent[:, 3, 5] = -2.0  # one pixel: every channel at -2
    rgb = preview.latent_to_rgb(latent)
    assert rgb.shape == (4, 6, 3) and rgb.dtype == np.uint8
    one_hot = np.eye(channels)[2]
    assert rgb[0, 0].tolist() == rgb[3, 2].tolist() == expected_colour(factors, bias, one_hot)
    assert rgb[0, 5].tolist() == expected_colour(factors, bias, np.zeros(channels))  # zeros: the bias alone
    assert rgb[3, 5].tolist() == expected_colour(factors, bias, np.full(channels, -2.0))
    # Colours are clipped, not wrapped: a huge latent saturates.
    assert set(preview.latent_to_rgb(latent * 1000)[0, 0].tolist()) <= {0, 255}


def test_wan21_colours_match_comfyui_by_hand():
    """Spot values worked out from the table: zeros give the bias, channel 14 (a bright channel) is light grey."""
    zero = preview.latent_to_rgb(np.zeros((16, 1, 1), np.float32))[0, 0].tolist()
    assert zero == [round((1 - 0.1835) * 127.5), round((1 - 0.0868) * 127.5), round((1 - 0.3360) * 127.5)]
    c14 = np.zeros((16, 1, 1), np.float32)
    c14[14] = 1.0
    assert preview.latent_to_rgb(c14)[0, 0].tolist() == [
        round((1 + 0.3477 - 0.1835) * 127.5), round((1 + 0.2275 - 0.0868) * 127.5), round((1 + 0.2950 - 0.3360) * 127.5)]


def test_other_channel_counts_and_shapes_are_refused():
    with pytest.raises(ValueError, match="no latent->RGB factors for 4 channels"):
        preview.latent_to_rgb(np.zeros((4, 2, 2)))
    with pytest.raises(ValueError, match=r"\[C, h, w\]"):
        preview.latent_to_rgb(np.zeros((16, 3, 2, 2)))
    with pytest.raises(ValueError):
        preview.middle_frame(np.zeros((16, 2, 2)))


def test_the_middle_latent_frame_is_previewed():
    latents = np.arange(21)[None, None, :, None, None] * np.ones((1, 16, 21, 2, 3))
    assert (preview.middle_frame(latents) == 10).all() and preview.middle_frame(latents).shape == (16, 2, 3)
    assert (preview.middle_frame(latents[0]) == 10).all()


def test_sizes_keep_the_aspect_and_stay_small():
    assert preview.preview_size(832, 480) == (256, 148)
    assert preview.preview_size(480, 832) == (148, 256)
    assert preview.preview_size(1280, 704) == (256, 141)
    assert preview.preview_size(32, 32) == (32, 32)  # never enlarged past the clip
    latent = np.random.default_rng(0).normal(size=(16, 60, 104)).astype(np.float32)  # 480p, 8x
    assert preview.preview_image(latent).shape == (148, 256, 3)  # no size: the VAE's stride
    assert preview.preview_image(latent, (832, 480), max_side=128).shape == (74, 128, 3)
    wan22 = np.zeros((48, 44, 80), np.float32)  # TI2V-5B 1280x704, 16x
    assert preview.preview_image(wan22).shape == (141, 256, 3)
    assert preview.preview_image(np.zeros((16, 4, 8), np.float32), (64, 32)).shape == (32, 64, 3)


def test_previews_are_due_every_nth_step_and_at_the_last():
    assert [s for s in range(1, 11) if preview.due(s, 10, 4)] == [4, 8, 10]
    assert [s for s in range(1, 3) if preview.due(s, 2, 4)] == [2]  # at least once per clip
    assert [s for s in range(1, 4) if preview.due(s, 3, 1)] == [1, 2, 3]
    assert not any(preview.due(s, 10, 0) for s in range(1, 11))


def test_preview_files_take_turns_and_are_removed(tmp_path):
    files = preview.PreviewFiles(tmp_path, "20240101000000")
    image = np.zeros((4, 4, 3), np.uint8)
    a, b, c = files.write(image), files.write(image), files.write(image)
    assert a != b and a == c and a.name.startswith(".") and a.is_file() and b.is_file()
    assert outputs.existing_frames(tmp_path, "20240101000000") == [] and outputs.find_timestrings(tmp_path) == []
    files.remove()
    assert list(tmp_path.iterdir()) == []


def test_the_scheduler_clean_prediction_is_previewed_not_the_noisy_latents():
    torch = pytest.importorskip("torch")
    from deforum_wan.renderer.pipelines import _preview_latent

    noisy = torch.zeros(1, 16, 3, 2, 2)
    clean = torch.ones(1, 16, 3, 2, 2)
    unipc = types.SimpleNamespace(scheduler=types.SimpleNamespace(config={"predict_x0": True}, model_outputs=[None, clean]))
    assert (_preview_latent(unipc, noisy) == 1).all()
    euler = types.SimpleNamespace(scheduler=types.SimpleNamespace(config={}))
    assert (_preview_latent(euler, noisy) == 0).all()
    first_step = types.SimpleNamespace(scheduler=types.SimpleNamespace(config={"predict_x0": True}, model_outputs=[None]))
    out = _preview_latent(first_step, noisy)
    assert out.shape == (16, 2, 2) and out.dtype == np.float32 and (out == 0).all()


# --- renders with the tiny models ---------------------------------------------------------


def settings(**kw):
    data = {"prompts": {"0": "a red fox", "10": "a blue bird"}, "max_frames": 16, "fps": 16, "W": 64, "H": 32,
            "seed": 3, "batch_name": "pv_{timestring}"}
    data.update(kw)
    return settings_from_dict(data)


def run(tiny_models, tmp_path, kind="vace", steps=6, **job):
    require_render_stack()
    from deforum_wan.renderer.render import RenderJob, render

    seen = []

    def on_event(event):
        if event["type"] == "preview" and event["path"]:
            path = Path(event["path"])
            with Image.open(path) as im:  # on disk while the clip renders, and a whole PNG
                event = {**event, "exists": path.is_file(), "size": im.size, "std": float(np.asarray(im).std())}
        seen.append(event)

    should_stop = job.pop("should_stop", None)
    result = render(RenderJob(settings=settings(), model=str(tiny_models[kind]), outdir=str(tmp_path),
                              options=PlanOptions(steps=steps, max_clip_frames=9, seed=3), make_video=False, **job),
                    on_event=on_event, should_stop=should_stop)
    return result, seen


def hidden_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_render_shows_a_preview_every_4th_step_and_at_each_clips_end(tiny_models, tmp_path):
    result, seen = run(tiny_models, tmp_path, steps=6)
    assert result.status == "done" and len(result.plan.clips) >= 2
    previews = [e for e in seen if e["type"] == "preview"]
    for clip in result.plan.clips:
        assert [e["step"] for e in previews if e["clip"] == clip.index] == [4, 6]
    assert all(e["exists"] and e["size"] == (64, 32) and e["steps"] == 6 for e in previews)
    assert all(e["std"] > 0 for e in previews)  # a picture, not a flat fill
    assert all(Path(e["path"]).parent == result.folder and Path(e["path"]).name.startswith(f".{result.timestring}_preview")
               for e in previews)
    # In order: each preview follows its step event; a clip's frames follow its previews.
    kinds = [(e["type"], e.get("clip"), e.get("step")) for e in seen if e["type"] in ("step", "preview", "frames")]
    for e in previews:
        at = kinds.index(("preview", e["clip"], e["step"]))
        assert kinds[at - 1] == ("step", e["clip"], e["step"])
    # Gone at the end: only Deforum's files are left, the frames are all there.
    assert hidden_files(result.folder) == []
    assert outputs.existing_frames(result.folder, result.timestring) == list(range(16))


def test_previews_off_writes_none_and_previews_do_not_change_the_frames(tiny_models, tmp_path):
    from test_render import read_frames

    off, seen_off = run(tiny_models, tmp_path / "off", steps=2, preview_every=0)
    on, seen_on = run(tiny_models, tmp_path / "on", steps=2, preview_every=1)
    assert not [e for e in seen_off if e["type"] == "preview"]
    assert [e["step"] for e in seen_on if e["type"] == "preview" and e["clip"] == 0] == [1, 2]
    np.testing.assert_array_equal(read_frames(off.folder, off.timestring), read_frames(on.folder, on.timestring))


def test_the_48_channel_wan22_latents_are_previewed(tiny_models, tmp_path):
    result, seen = run(tiny_models, tmp_path, kind="ti2v-5b", steps=2, preview_every=4)
    previews = [e for e in seen if e["type"] == "preview"]
    assert result.status == "done" and {c.mode for c in result.plan.clips} == {"t2v", "i2v"}
    assert [(e["clip"], e["step"]) for e in previews] == [(c.index, 2) for c in result.plan.clips]  # once per clip
    assert all(e["size"] == (64, 32) for e in previews)
    assert hidden_files(result.folder) == []


def test_a_stopped_render_removes_its_preview_and_points_at_the_newest_frame(tiny_models, tmp_path):
    steps = {"n": 0}

    def stop_mid_second_clip():  # asked before each clip and after each step
        steps["n"] += 1
        return steps["n"] > 8  # clip 0: 1 + 4 asks; clip 1: 1 + 2 steps (a preview at step 2), stop after step 3

    result, seen = run(tiny_models, tmp_path, steps=4, preview_every=2, should_stop=stop_mid_second_clip)
    assert result.status == "interrupted"
    previews = [e for e in seen if e["type"] == "preview"]
    assert previews[-1]["step"] is None  # the last word: no preview file any more
    on_disk = outputs.contiguous_frames(result.folder, result.timestring)
    assert on_disk > 0 and previews[-1]["path"] == str(result.folder / outputs.frame_name(result.timestring, on_disk - 1))
    assert Path(previews[-1]["path"]).is_file() and hidden_files(result.folder) == []


def test_the_worker_job_takes_preview_every(tmp_path):
    from deforum_wan.service.worker import job_from_dict, job_to_dict

    job = job_from_dict({"settings": {"prompts": {"0": "a fox"}, "max_frames": 4}, "model": "vace", "preview_every": 0})
    assert job.preview_every == 0 and job_to_dict(job)["preview_every"] == 0
    assert job_from_dict({"settings": {"prompts": {"0": "a fox"}}, "model": "vace"}).preview_every == preview.DEFAULT_EVERY
