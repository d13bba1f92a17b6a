"""One short clip at a time through the real diffusers pipelines, with the tiny models.

Sizes are the smallest the real models accept (32x32 covers TI2V-5B's multiple of
32), frame counts are 4n+1, and 2 steps keep each clip well under a second on CPU.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deforum_wan.renderer.pipelines import ClipRequest, Interrupted, ModeError, to_uint8_frames, vace_conditioning

W = H = 32
BASE = dict(prompt="a red cat dances in the city", negative_prompt="blurry", width=W, height=H, steps=2, guidance=5.0)


def gradient_image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)


# --- pure helpers (no torch) ----------------------------------------------------------


def test_float_frames_become_uint8() -> None:
    frames = np.zeros((1, 2, 4, 4, 3), dtype=np.float32)
    frames[0, 1] = 1.0
    frames[0, 0, 0, 0] = [0.5, -0.2, 1.7]
    out = to_uint8_frames(frames)
    assert out.shape == (2, 4, 4, 3) and out.dtype == np.uint8
    assert out[0, 0, 0].tolist() == [128, 0, 255]
    assert (out[1] == 255).all()
    with pytest.raises(ValueError):
        to_uint8_frames(np.zeros((2, 4, 4)))


def test_vace_conditioning_keeps_known_frames_and_masks_the_rest() -> None:
    known = np.stack([np.full((H, W, 3), 10 * i, np.uint8) for i in range(3)])
    video, mask = vace_conditioning(known, 9, W, H)
    assert len(video) == len(mask) == 9
    assert [np.asarray(v)[0, 0, 0] for v in video] == [0, 10, 20] + [128] * 6
    assert [np.asarray(m).max() for m in mask] == [0, 0, 0] + [255] * 6
    assert all(v.size == (W, H) and v.mode == "RGB" for v in video)
    assert all(m.mode == "L" for m in mask)
    # known frames of another size are resized to the clip
    video, _ = vace_conditioning(np.zeros((1, 64, 48, 3), np.uint8), 5, W, H)
    assert video[0].size == (W, H)
    with pytest.raises(ValueError, match="do not fit"):
        vace_conditioning(np.zeros((10, H, W, 3), np.uint8), 9, W, H)



def test_vace_conditioning_takes_a_source_video_with_its_mask_and_kept_images() -> None:
    """Video Input: the source frames are the hint, a mask video says where to change;
    guided images are kept at their clip frames whatever else is there."""
    known = np.full((1, H, W, 3), 7, np.uint8)
    source = np.stack([np.full((H, W, 3), 50 + i, np.uint8) for i in range(4)])
    masks = [np.zeros((H, W), np.uint8), np.full((H, W), 255, np.uint8)] + [np.full((H, W, 3), 255, np.uint8)] * 2
    guided = np.full((H, W, 3), 222, np.uint8)
    video, mask = vace_conditioning(known, 5, W, H, source, masks, keep_at=((3, guided),))
    assert [int(np.asarray(v)[0, 0, 0]) for v in video] == [7, 50, 51, 222, 53]
    assert [int(np.asarray(m).max()) for m in mask] == [0, 0, 255, 0, 255]
    with pytest.raises(ValueError, match="guide masks"):
        vace_conditioning(known, 5, W, H, source, masks[:2])
    with pytest.raises(ValueError, match="outside the clip"):
        vace_conditioning(known, 5, W, H, keep_at=((5, guided),))

# --- through diffusers ----------------------------------------------------------------


@pytest.fixture(scope="module")
def load(tiny_models: dict[str, Path]):
    """kind -> Pipelines, each loaded once for the module."""
    from deforum_wan.renderer.loading import load_pipelines
    from deforum_wan.renderer.models import classify_model

    cache: dict[Any, Any] = {}

    def get(kind: str, i2v_kind: str | None = None):
        key = (kind, i2v_kind)
        if key not in cache:
            i2v_info = classify_model(tiny_models[i2v_kind]) if i2v_kind else None
            cache[key] = load_pipelines(classify_model(tiny_models[kind]), device="cpu", i2v_info=i2v_info)
        return cache[key]

    return get


CLIP_CASES = [
    ("t2v", "t2v"), ("a14b-t2v", "t2v"), ("ti2v-5b", "t2v"), ("ti2v-5b", "i2v"), ("vace", "t2v"),
    ("vace", "vace"), ("i2v", "i2v"), ("flf2v", "i2v"), ("a14b-i2v", "i2v"),
]


def render(pipes, mode: str, **overrides: Any) -> np.ndarray:
    kwargs: dict[str, Any] = dict(BASE, num_frames=9, seed=7)
    kwargs.update(overrides)
    if mode == "t2v":
        return pipes.t2v(ClipRequest(**kwargs))
    if mode == "i2v":
        image = kwargs.pop("image", gradient_image())
        return pipes.i2v(ClipRequest(image=image, **kwargs))
    known = kwargs.pop("known", np.stack([gradient_image(i) for i in range(3)]))
    return pipes.vace(ClipRequest(known_frames=known, **kwargs))


@pytest.mark.parametrize("kind,mode", CLIP_CASES)
def test_clip_has_requested_frames_and_size(load, kind: str, mode: str) -> None:
    pipes = load(kind)
    assert pipes.supports(mode)
    frames = render(pipes, mode, num_frames=5)
    assert frames.shape == (5, H, W, 3) and frames.dtype == np.uint8
    assert frames.std() > 0  # an actual picture, not a constant fill


@pytest.mark.parametrize("kind,mode", [("t2v", "t2v"), ("i2v", "i2v"), ("vace", "vace"), ("ti2v-5b", "i2v")])
def test_same_seed_same_frames_other_seed_other_frames(load, kind: str, mode: str) -> None:
    pipes = load(kind)
    first = render(pipes, mode, seed=1)
    assert np.array_equal(first, render(pipes, mode, seed=1))
    assert not np.array_equal(first, render(pipes, mode, seed=2))


def test_prompt_changes_the_clip(load) -> None:
    pipes = load("t2v")
    assert not np.array_equal(render(pipes, "t2v"), render(pipes, "t2v", prompt="a blue bird flies over the sea"))


def test_longer_clip(load) -> None:
    assert render(load("t2v"), "t2v", num_frames=17).shape == (17, H, W, 3)


def test_start_image_drives_i2v(load) -> None:
    pipes = load("i2v")
    a = render(pipes, "i2v", image=gradient_image(1))
    b = render(pipes, "i2v", image=gradient_image(2))
    assert not np.array_equal(a, b)
    # PIL images and float arrays are accepted as well as uint8 arrays
    import PIL.Image

    image = gradient_image(1)
    assert np.array_equal(render(pipes, "i2v", image=PIL.Image.fromarray(image)), a)
    assert np.array_equal(render(pipes, "i2v", image=image.astype(np.float32) / 255.0), a)


def test_vace_continuation_uses_known_frames(load) -> None:
    pipes = load("vace")
    known_a = np.stack([gradient_image(i) for i in range(5)])
    known_b = np.stack([gradient_image(10 + i) for i in range(5)])
    out_a = render(pipes, "vace", known=known_a, num_frames=9)
    assert out_a.shape == (9, H, W, 3)
    assert not np.array_equal(out_a, render(pipes, "vace", known=known_b, num_frames=9))
    # with no known frames VACE is plain text-to-video
    assert render(pipes, "vace", known=np.zeros((0, H, W, 3), np.uint8)).shape == (9, H, W, 3)


def test_two_experts_use_guidance_2(load) -> None:
    """guidance_2 reaches the low-noise expert (flow_shift 1 puts the second step below the boundary)."""
    pipes = load("a14b-t2v")
    assert pipes.main.transformer_2 is not None
    a = render(pipes, "t2v", flow_shift=1.0, guidance=5.0, guidance_2=1.0)
    b = render(pipes, "t2v", flow_shift=1.0, guidance=5.0, guidance_2=9.0)
    assert not np.array_equal(a, b)
    # models with one expert ignore guidance_2 rather than failing
    t2v = load("t2v")
    assert np.array_equal(render(t2v, "t2v", guidance_2=9.0), render(t2v, "t2v"))


def test_flow_shift_applies_to_one_call_only(load) -> None:
    pipes = load("t2v")
    scheduler = pipes.main.scheduler
    before = render(pipes, "t2v")
    shifted = render(pipes, "t2v", flow_shift=12.0)
    assert not np.array_equal(before, shifted)
    assert pipes.main.scheduler is scheduler and scheduler.config.flow_shift == 3.0
    assert np.array_equal(render(pipes, "t2v"), before)


def test_on_step_sees_every_step(load) -> None:
    calls: list[tuple[int, int]] = []
    frames = render(load("t2v"), "t2v", steps=3, on_step=lambda step, total: calls.append((step, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert frames.shape == (9, H, W, 3)


@pytest.mark.parametrize("kind,mode", [("t2v", "t2v"), ("i2v", "i2v"), ("vace", "vace")])
def test_interrupt_stops_between_steps(load, kind: str, mode: str) -> None:
    pipes = load(kind)
    calls: list[int] = []

    def stop_after_first(step: int, total: int) -> bool:
        calls.append(step)
        return step < 1

    with pytest.raises(Interrupted) as err:
        render(pipes, mode, steps=4, on_step=stop_after_first)
    assert calls == [1]  # no further denoising steps ran
    assert (err.value.step, err.value.total) == (1, 4)
    # the pipelines are still usable, and the next clip is unaffected by the interrupted one
    assert np.array_equal(render(pipes, mode), render(pipes, mode))


def test_on_step_may_raise_interrupted_itself(load) -> None:
    def stop(step: int, total: int) -> None:
        raise Interrupted(step, total)

    with pytest.raises(Interrupted):
        render(load("t2v"), "t2v", on_step=stop)


def test_t2v_and_i2v_share_text_encoder_tokenizer_and_vae(load) -> None:
    pipes = load("t2v", "i2v")
    assert pipes.modes == ("t2v", "i2v")
    assert pipes.image is not None and pipes.image is not pipes.main
    assert pipes.image.text_encoder is pipes.main.text_encoder
    assert pipes.image.tokenizer is pipes.main.tokenizer
    assert pipes.image.vae is pipes.main.vae
    assert pipes.image.transformer is not pipes.main.transformer
    assert pipes.image_info is not None and pipes.image_info.kind == "i2v"
    assert render(pipes, "t2v").shape == render(pipes, "i2v").shape == (9, H, W, 3)
    # a shared text encoder gives the same clip as the I2V model loaded on its own (same weights)
    assert np.array_equal(render(pipes, "i2v"), render(load("i2v"), "i2v"))


def test_ti2v_image_path_reuses_every_component(load) -> None:
    pipes = load("ti2v-5b")
    assert type(pipes.image).__name__ == "WanImageToVideoPipeline"
    assert pipes.image.config.expand_timesteps is True
    for key in ("transformer", "text_encoder", "vae", "tokenizer"):
        assert getattr(pipes.image, key) is getattr(pipes.main, key)


def test_wrong_mode_and_bad_sizes_are_clear_errors(load) -> None:
    with pytest.raises(ModeError, match="image-to-video"):
        render(load("i2v"), "t2v")
    with pytest.raises(ModeError, match="not a VACE model"):
        render(load("t2v"), "vace")
    with pytest.raises(ModeError, match="cannot render i2v"):
        render(load("t2v"), "i2v")
    with pytest.raises(ValueError, match="4n\\+1"):
        render(load("t2v"), "t2v", num_frames=8)
    with pytest.raises(ValueError, match="multiples of 16"):
        render(load("t2v"), "t2v", width=40)
    with pytest.raises(ValueError, match="multiples of 32"):
        render(load("ti2v-5b"), "t2v", width=48)
