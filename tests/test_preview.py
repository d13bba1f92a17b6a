"""Live previews while a clip denoises: the latent -> RGB map fitted from the VAE, and renders that show it.

The projection is checked on latents with a known pattern (16 and 48 channels);
the fit on a VAE that is exactly linear (it must recover the map) and on the tiny
models' VAEs; the renders go through the real diffusers pipelines with the tiny models.
"""
from __future__ import annotations

import json
import logging
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import require_render_stack
from deforum_wan.core.plan import PlanOptions
from deforum_wan.core.settings import settings_from_dict
from deforum_wan.renderer import outputs, preview


@pytest.fixture(autouse=True, scope="module")
def preview_cache(tmp_path_factory):
    """The fitted maps of this module's renders go to a cache of their own, shared by its tests."""
    with pytest.MonkeyPatch.context() as mp:
        folder = tmp_path_factory.mktemp("cache")
        mp.setenv("DEFORUM_WAN_CACHE", str(folder))
        yield folder / "preview"


def random_map(channels: int, stride: int = 8, seed: int = 0) -> preview.LatentRGB:
    rng = np.random.default_rng(seed)
    return preview.LatentRGB(rng.normal(0, 0.2, (channels, 3)).astype(np.float32),
                             rng.normal(0, 0.2, 3).astype(np.float32), stride)


def expected_colour(rgb_map, weights) -> list[int]:
    """The colour a latent pixel with these channel values must get: ((w @ F + b) + 1) / 2 * 255, clipped."""
    rgb = np.asarray(weights, np.float64) @ rgb_map.factors.astype(np.float64) + rgb_map.bias
    return np.clip((rgb + 1.0) * 127.5, 0, 255).round().astype(int).tolist()


# --- the projection (pure) ---------------------------------------------------------------


@pytest.mark.parametrize("channels", [16, 48])
def test_a_known_latent_pattern_gives_the_expected_colours(channels):
    rgb_map = random_map(channels)
    assert rgb_map.channels == channels and rgb_map.factors.shape == (channels, 3) and rgb_map.bias.shape == (3,)
    latent = np.zeros((channels, 4, 6), np.float32)
    latent[2, :, :3] = 1.0  # left half: channel 2 on
    latent[:, 3, 5] = -2.0  # one pixel: every channel at -2
    rgb = preview.latent_to_rgb(latent, rgb_map)
    assert rgb.shape == (4, 6, 3) and rgb.dtype == np.uint8
    one_hot = np.eye(channels)[2]
    assert rgb[0, 0].tolist() == rgb[3, 2].tolist() == expected_colour(rgb_map, one_hot)
    assert rgb[0, 5].tolist() == expected_colour(rgb_map, np.zeros(channels))  # zeros: the bias alone
    assert rgb[3, 5].tolist() == expected_colour(rgb_map, np.full(channels, -2.0))
    # Colours are clipped, not wrapped: a huge latent saturates.
    assert set(preview.latent_to_rgb(latent * 1000, rgb_map)[0, 0].tolist()) <= {0, 255}


def test_colours_worked_out_by_hand():
    """Channel 0 carries red, channel 1 green, channel 2 blue; the bias is a dark grey."""
    factors = np.zeros((16, 3), np.float32)
    factors[0, 0] = factors[1, 1] = factors[2, 2] = 0.5
    rgb_map = preview.LatentRGB(factors, np.full(3, -0.5, np.float32), 8)
    assert preview.latent_to_rgb(np.zeros((16, 1, 1), np.float32), rgb_map)[0, 0].tolist() == [64, 64, 64]
    latent = np.zeros((16, 1, 3), np.float32)
    latent[0, 0, 0], latent[1, 0, 1], latent[2, 0, 2] = 3.0, 1.0, -1.0
    assert preview.latent_to_rgb(latent, rgb_map)[0].tolist() == [[255, 64, 64], [64, 128, 64], [64, 64, 0]]


def test_other_channel_counts_and_shapes_are_refused():
    with pytest.raises(ValueError, match="4 channels, but the map is for 16"):
        preview.latent_to_rgb(np.zeros((4, 2, 2)), random_map(16))
    with pytest.raises(ValueError, match=r"\[C, h, w\]"):
        preview.latent_to_rgb(np.zeros((16, 3, 2, 2)), random_map(16))
    with pytest.raises(ValueError):
        preview.middle_frame(np.zeros((16, 2, 2)))
    with pytest.raises(ValueError, match="not a latent -> RGB map"):
        preview.LatentRGB.from_json({"factors": [[1.0, 2.0]], "bias": [0, 0, 0], "stride": 8})


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
    wan21, wan22 = random_map(16, stride=8), random_map(48, stride=16)
    assert preview.preview_image(latent, wan21).shape == (148, 256, 3)  # no size: the VAE's stride
    assert preview.preview_image(latent, wan21, (832, 480), max_side=128).shape == (74, 128, 3)
    assert preview.preview_image(np.zeros((48, 44, 80), np.float32), wan22).shape == (141, 256, 3)  # TI2V-5B 720p
    assert preview.preview_image(np.zeros((16, 4, 8), np.float32), wan21, (64, 32)).shape == (32, 64, 3)


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


# --- the fit ------------------------------------------------------------------------------


class LinearVAE:
    """A stand-in VAE whose raw latents are exactly linear in the mean colour under them (8x8 blocks).

    Its config's latents_mean / latents_std are not 0 / 1, so the fit only recovers
    the map if it normalises the latents as the pipelines do.
    """

    def __init__(self, channels: int = 16, stride: int = 8, seed: int = 1) -> None:
        import torch

        rng = np.random.default_rng(seed)
        self.mix = torch.tensor(rng.normal(size=(channels, 3)), dtype=torch.float32)
        self.offset = torch.tensor(rng.normal(size=channels), dtype=torch.float32).view(1, channels, 1, 1, 1)
        self.config = types.SimpleNamespace(z_dim=channels, latents_mean=rng.normal(size=channels).tolist(),
                                            latents_std=rng.uniform(0.5, 3.0, channels).tolist())
        self.dtype = torch.float32
        self.stride = stride

    def raw(self, pixels):
        """pixels [B, 3, T, H, W] in -1..1 -> raw latents [B, C, 1 + (T - 1) // 4, H / stride, W / stride]."""
        import torch

        pooled = torch.nn.functional.avg_pool3d(pixels[:, :, ::4], (1, self.stride, self.stride))
        return torch.einsum("ck,bkthw->bcthw", self.mix, pooled) + self.offset

    def encode(self, pixels):
        return types.SimpleNamespace(latent_dist=types.SimpleNamespace(mean=self.raw(pixels)))

    def normalised(self, colour):
        """The latent pixel [C, 1, 1] the denoising loop has for a flat colour (0..1): (z - mean) / std."""
        import torch

        z = self.raw(torch.tensor(colour, dtype=torch.float32).view(1, 3, 1, 1, 1).expand(1, 3, 1, 8, 8) * 2 - 1)
        return ((z[0, :, 0].numpy() - np.asarray(self.config.latents_mean)[:, None, None])
                / np.asarray(self.config.latents_std)[:, None, None]).astype(np.float32)


def test_the_fit_recovers_the_map_of_a_linear_vae():
    pytest.importorskip("torch")
    vae = LinearVAE()
    latents, colours, stride = preview.fit_samples(vae, device="cpu")
    assert stride == 8 and latents.shape == (5 * 32 * 32, 16) and colours.shape == (5 * 32 * 32, 3)
    assert colours.min() >= -1 and colours.max() <= 1 and len(np.unique(colours, axis=0)) > 64  # patches and gradients
    exact = preview.solve_map(latents, colours, stride, ridge=0.0)
    assert exact.error < 1e-4 and exact.spread > 0.5
    rgb_map = preview.fit_map(vae, device="cpu")  # the light ridge costs next to nothing here
    assert rgb_map.error < 0.01 * rgb_map.spread
    for colour in ([0.8, 0.2, 0.4], [0.1, 0.9, 0.5], [0.5, 0.5, 0.5]):
        got = preview.latent_to_rgb(vae.normalised(colour), rgb_map)[0, 0]
        assert np.abs(got.astype(int) - np.round(np.asarray(colour) * 255)).max() <= 2, (colour, got)


def test_the_fit_pictures_span_the_colour_cube():
    images = preview.fit_images()
    assert images.shape == (5, 256, 256, 3) and images.dtype == np.float32
    patches = images[:4, ::64, ::64].reshape(-1, 3)  # one pixel per 64x64 patch
    assert len(np.unique(patches, axis=0)) == 64 and {0.0, 1.0} <= set(patches.ravel().tolist())
    assert np.ptp(images[:4].reshape(4, 4, 64, 4, 64, 3), axis=(2, 4)).max() == 0  # flat patches
    assert len(np.unique(images[4].reshape(-1, 3), axis=0)) > 10000  # smooth gradients


def tiny_vae(tiny_models, kind):
    require_render_stack()
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan.from_pretrained(tiny_models[kind] / "vae").eval()


@pytest.mark.parametrize("kind,channels,stride", [("vace", 16, 8), ("ti2v-5b", 48, 16)])
def test_the_map_is_fitted_from_the_models_own_vae(tiny_models, kind, channels, stride):
    """Wan 2.1's VAE (16 channels, 8x) and TI2V-5B's (48, 16x): the fit explains the colours better than no map.

    The tiny VAEs are random, so how well a linear map can do is modest (about
    80% and 25% of the colours' variance left); the bound only asks for better
    than the mean colour and than the zero map, on the encoded pictures themselves.
    """
    latents, colours, got_stride = preview.fit_samples(tiny_vae(tiny_models, kind))
    per_picture = (256 // stride) ** 2
    assert got_stride == stride and latents.shape == (5 * per_picture, channels)
    assert colours.shape == (5 * per_picture, 3)
    rgb_map = preview.solve_map(latents, colours, got_stride)
    assert rgb_map.factors.shape == (channels, 3) and rgb_map.bias.shape == (3,) and rgb_map.stride == stride
    residual = float(np.mean((latents @ rgb_map.factors + rgb_map.bias - colours) ** 2))
    variance = float(np.mean((colours - colours.mean(axis=0)) ** 2))  # what the best map without factors leaves
    assert residual == pytest.approx(rgb_map.error**2, rel=1e-3) and variance == pytest.approx(rgb_map.spread**2)
    assert residual < 0.9 * variance < float(np.mean(colours**2))  # and the zero map leaves more still
    # Through the projection the previews use: the first mosaic's 16 flat colours, back as uint8.
    side = 256 // stride
    frame = latents[:per_picture].reshape(side, side, channels).transpose(2, 0, 1)
    shown = preview.latent_to_rgb(frame, rgb_map).astype(float)
    truth = (colours[:per_picture].reshape(side, side, 3) + 1) * 127.5
    grey = preview.latent_to_rgb(frame, preview.LatentRGB(np.zeros((channels, 3), np.float32), np.zeros(3, np.float32),
                                                          stride)).astype(float)
    assert (grey == 128).all() and np.mean((shown - truth) ** 2) < np.mean((grey - truth) ** 2)


def test_the_fitted_map_is_cached_on_disk_per_vae_and_reused(tiny_models, tmp_path, monkeypatch):
    import torch

    vae = tiny_vae(tiny_models, "vace")
    calls = []
    encode = vae.encode
    monkeypatch.setattr(vae, "encode", lambda *a, **kw: calls.append(1) or encode(*a, **kw))
    monkeypatch.setenv("DEFORUM_WAN_CACHE", str(tmp_path / "cache"))
    folder = preview.cache_dir()
    assert folder == tmp_path / "cache" / "preview"
    n = len(preview.fit_images())

    first = preview.map_for_vae(vae)
    key = preview.vae_key(vae)
    path = folder / f"{key}.json"
    assert len(calls) == n and [p.name for p in folder.iterdir()] == [path.name]
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["channels"] == 16 and data["stride"] == 8 and len(data["factors"]) == 16 and data["fit_seconds"] >= 0

    second = preview.map_for_vae(vae)  # e.g. the next job's load: read back, no encode
    assert len(calls) == n
    np.testing.assert_array_equal(second.factors, first.factors)
    np.testing.assert_array_equal(second.bias, first.bias)
    assert (second.stride, second.error, second.spread) == (first.stride, first.error, first.spread)

    path.write_text("{damaged", encoding="utf-8")  # fitted again and rewritten
    preview.map_for_vae(vae)
    assert len(calls) == 2 * n and preview.LatentRGB.from_json(json.loads(path.read_text(encoding="utf-8")))

    with torch.no_grad():  # a fine-tune: the same config, other weights -> its own key and fit
        vae.quant_conv.bias.add_(0.01)
    assert preview.vae_key(vae) != key
    preview.map_for_vae(vae)
    assert len(calls) == 3 * n and len(list(folder.glob("*.json"))) == 2


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


def test_a_render_fits_the_map_once_per_load_and_the_next_load_reads_it(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("DEFORUM_WAN_CACHE", str(tmp_path / "cache"))
    fits = []
    fit = preview.fit_map
    monkeypatch.setattr(preview, "fit_map", lambda *a, **kw: fits.append(1) or fit(*a, **kw))
    first, seen = run(tiny_models, tmp_path / "first", steps=2, preview_every=1)
    assert first.status == "done" and len(first.plan.clips) >= 2
    assert fits == [1] and len(list((tmp_path / "cache" / "preview").glob("*.json"))) == 1  # one fit for every clip
    again, seen_again = run(tiny_models, tmp_path / "again", steps=2, preview_every=1)
    assert fits == [1]  # a new load, the map from the disk
    steps = [e["step"] for e in seen if e["type"] == "preview"]
    assert steps and [e["step"] for e in seen_again if e["type"] == "preview"] == steps


def test_a_failed_fit_renders_without_previews_after_one_warning(tiny_models, tmp_path, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("out of memory in the fit")

    monkeypatch.setattr(preview, "map_for_vae", broken)
    with caplog.at_level(logging.WARNING, logger="deforum_wan.renderer.pipelines"):
        result, seen = run(tiny_models, tmp_path, steps=2, preview_every=1)
    assert result.status == "done" and len(result.plan.clips) >= 2
    assert not [e for e in seen if e["type"] == "preview"] and hidden_files(result.folder) == []
    warned = [r.getMessage() for r in caplog.records if "live previews off" in r.getMessage()]
    assert len(warned) == 1 and "out of memory in the fit" in warned[0]
    assert outputs.existing_frames(result.folder, result.timestring) == list(range(16))


def test_the_worker_job_takes_preview_every(tmp_path):
    from deforum_wan.service.worker import job_from_dict, job_to_dict

    job = job_from_dict({"settings": {"prompts": {"0": "a fox"}, "max_frames": 4}, "model": "vace", "preview_every": 0})
    assert job.preview_every == 0 and job_to_dict(job)["preview_every"] == 0
    assert job_from_dict({"settings": {"prompts": {"0": "a fox"}}, "model": "vace"}).preview_every == preview.DEFAULT_EVERY
