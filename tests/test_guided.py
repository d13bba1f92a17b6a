"""Guided Images (use_looper, init_images) and the init image: planned per clip, rendered through the tiny models."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deforum_wan.core.guided import KEEP, LAST, FIRST, INIT, parse_init_images
from deforum_wan.core.plan import ClipPlan, PlanError, PlanOptions, format_plan, plan_clips
from deforum_wan.core.schedules import ScheduleError
from deforum_wan.core.settings import settings_from_dict
from deforum_wan.core.specs import MODEL_SPECS


def guided_settings(images: dict, **kw):
    data = {"prompts": {"0": "a red fox"}, "max_frames": 24, "fps": 16, "W": 32, "H": 32, "seed": 11,
            "batch_name": "guided_{timestring}", "animation_mode": "2D", "use_looper": True,
            "init_images": json.dumps(images)}
    data.update(kw)
    return settings_from_dict(data)


# ---------------------------------------------------------------- init_images keys


def test_keys_are_frames_or_expressions_of_max_f_as_deforum_reads_them():
    # generate.py@3224268: max_f = max_frames - 1, numexpr on the key, int() truncates
    images = parse_init_images('{"max_f-1": "c.png", "0": "a.png", "max_f/4-5": "b.png", "3*max_f/4": "d.png"}', 120)
    assert [(g.key, g.frame, g.source) for g in images] == [
        ("0", 0, "a.png"), ("max_f/4-5", 24, "b.png"), ("3*max_f/4", 89, "d.png"), ("max_f-1", 118, "c.png")]
    assert parse_init_images({"5": " x.png "}, 10)[0].source == "x.png"  # an object works as JSON text does
    # Deforum's own default file's keys: all inside a 120-frame animation
    from deforum_wan.core.coverage import DEFORUM_DEFAULTS

    assert [g.frame for g in parse_init_images(DEFORUM_DEFAULTS["init_images"], 120)] == [0, 24, 49, 74, 99]


@pytest.mark.parametrize("value, message", [
    ('{"0": "a.png", "max_f/": "b.png"}', r'^init_images\["max_f/"\]: cannot evaluate "max_f/"'),
    ('{"__import__(\'os\')": "a.png"}', r"^init_images\[\"__import__\('os'\)\"\]: cannot evaluate"),
    ('{"0": "a.png", "max_f+1": "b.png"}', r'^init_images\["max_f\+1"\]: frame 24 is outside the animation\'s frames '
                                          r"0..23"),
    ('{"0": "a.png", "max_f-30": "b.png"}', r'^init_images\["max_f-30"\]: frame -7 is outside'),
    ('{"3": "a.png", "max_f/7": "b.png"}', r'^init_images\["max_f/7"\]: frame 3 already has an image '
                                          r'\(init_images\["3"\]\)'),
    ('{"0": 5}', r'^init_images\["0"\]: expected an image path or URL, got 5'),
    ('{"0": "a.png",}', r"^init_images: not valid JSON"),
    ('["a.png"]', r"^init_images: expected an object of frame -> image, got list"),
    ("{}", r"^init_images: use_looper is on but init_images lists no image"),
])
def test_bad_init_images_are_named_by_their_key(value, message):
    with pytest.raises((PlanError, ScheduleError), match=message):
        parse_init_images(value, 24)


# ---------------------------------------------------------------- the plan


def test_a_vace_plan_keeps_each_image_in_the_clip_that_shows_its_frame():
    s = guided_settings({"0": "a.png", "max_f/2": "b.png", "max_f-1": "c.png"}, image_strength_schedule="0:(0.375)")
    plan = plan_clips(s, MODEL_SPECS["vace"], PlanOptions(max_clip_frames=9, seed=1, exact_size=True))
    kept = [(c.index, k.field, k.frame, k.wan_frame, k.role) for c in plan.clips for k in c.kept]
    assert [k[1:3] for k in kept] == [('init_images["0"]', 0), ('init_images["max_f/2"]', 11),
                                      ('init_images["max_f-1"]', 22)]
    for index, _field, frame, wan, role in kept:
        clip = plan.clips[index]
        assert role == KEEP and clip.mode == "vace" and clip.output_start <= frame < clip.output_end
        assert clip.sources[frame - clip.output_start][0] == wan  # 16 fps: output frames are Wan frames
        assert clip.keep_scale == 0.5  # 0.375 / 0.75
    assert plan.clips[0].mode == "vace" and plan.clips[0].overlap == 0  # it keeps an image, so not T2V
    assert all(c.keep_scale is None for c in plan.clips if not c.kept)
    assert ClipPlan.from_json(plan.to_json()) == plan
    text = format_plan(plan)
    assert 'clip 0 keeps init_images["0"] at output frame 0 (Wan frame 0)' in text
    assert f'clip {kept[1][0]} keeps init_images["max_f/2"] at output frame 11 (Wan frame {kept[1][3]})' in text
    assert f"clip {kept[2][0]} VACE conditioning scale 0.5 (image_strength_schedule mean / 0.75)" in text
    assert not [w for w in plan.warnings if "use_looper" in w or "init_images" in w]


def test_flf2v_takes_images_at_clip_ends_and_says_which_it_cannot_honour():
    s = guided_settings({"0": "a.png", "7": "b.png", "11": "c.png", "max_f": "d.png"}, use_init=True,
                        init_image="i.png")
    plan = plan_clips(s, MODEL_SPECS["flf2v"], PlanOptions(max_clip_frames=9, seed=1, exact_size=True))
    kept = {k.field: (c.index, k.wan_frame, k.role) for c in plan.clips for k in c.kept}
    assert kept == {'init_images["0"]': (0, 0, FIRST), 'init_images["7"]': (0, 8, LAST),
                    'init_images["max_f"]': (2, 8, LAST)}
    assert [w for w in plan.warnings if "init_images" in w] == [
        'init_images["11"] at output frame 11 (clip 1, Wan frame 4) is not used: Wan2.1 FLF2V takes an image only as '
        "a clip's first or last frame (Wan frames 0 and 8); move it to a clip's end or use a VACE model"]
    i2v = plan_clips(s, MODEL_SPECS["i2v"], PlanOptions(max_clip_frames=9, seed=1, exact_size=True))
    assert [k.role for c in i2v.clips for k in c.kept] == [FIRST]
    assert sum("an I2V clip keeps no image inside it" in w for w in i2v.warnings) == 3
    t2v = plan_clips(s, MODEL_SPECS["t2v"], PlanOptions(max_clip_frames=9, seed=1, exact_size=True))
    assert not any(c.kept for c in t2v.clips) and sum("a T2V clip keeps no image" in w for w in t2v.warnings) == 4


def test_guided_images_follow_deforum_only_in_2d_and_3d():
    s = guided_settings({"0": "a.png"}, animation_mode="None")
    plan = plan_clips(s, MODEL_SPECS["vace"], PlanOptions(seed=1))
    assert not any(c.kept for c in plan.clips)
    assert "use_looper is ignored in animation_mode None, as in Deforum (guided images work in 2D and 3D)" in \
        plan.warnings
    off = guided_settings({"0": "a.png", "max_f/0": "b.png"}, use_looper=False)  # off: not even parsed
    assert not any(c.kept for c in plan_clips(off, MODEL_SPECS["vace"], PlanOptions(seed=1)).clips)


@pytest.mark.parametrize("strength, scale", [(0.8, 1.0), (0.6, 0.75), (1, 1.25), (0, 0.0)])
def test_strength_sets_how_strongly_a_vace_first_clip_keeps_the_init_image(strength, scale):
    s = guided_settings({}, use_looper=False, use_init=True, init_image="i.png", strength=strength)
    plan = plan_clips(s, MODEL_SPECS["vace"], PlanOptions(seed=1, max_clip_frames=9))
    first = plan.clips[0]
    assert first.mode == "vace" and [(k.field, k.role, k.wan_frame) for k in first.kept] == [("init_image", INIT, 0)]
    assert first.keep_scale == scale and all(c.keep_scale is None for c in plan.clips[1:])
    assert f"clip 0 VACE conditioning scale {scale:g} (strength / 0.8)" in format_plan(plan)
    i2v = plan_clips(s, MODEL_SPECS["i2v"], PlanOptions(seed=1))
    assert i2v.clips[0].keep_scale is None and not i2v.clips[0].kept  # I2V starts from the image itself
    with pytest.raises(PlanError, match=r"^strength: must be between 0 and 1, got 1.5"):
        plan_clips(guided_settings({}, use_looper=False, use_init=True, init_image="i.png", strength=1.5),
                   MODEL_SPECS["vace"], PlanOptions(seed=1))


# ---------------------------------------------------------------- rendering with the tiny models


def _picture(path: Path, seed: int, size=(50, 40)) -> Path:
    """A textured picture (not one colour), larger than the render and of another shape: resized and cropped."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size[1], 0:size[0]]
    base = np.stack([x * 5, y * 6, (x + y) * 3], axis=-1) + rng.integers(0, 40, (size[1], size[0], 3))
    Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(path)
    return path


def _fitted(path: Path, size=(32, 32)) -> np.ndarray:
    from deforum_wan.renderer.frames import fit_image

    return fit_image(np.asarray(Image.open(path).convert("RGB")), *size)


def _frame(result, index: int) -> np.ndarray:
    from deforum_wan.renderer import outputs

    return np.asarray(Image.open(result.folder / outputs.frame_name(result.timestring, index)).convert("RGB"))


def _recorded(tiny_models, kind: str):
    from test_render import Recorder

    from deforum_wan.renderer.loading import load_pipelines
    from deforum_wan.renderer.models import classify_model

    return Recorder(load_pipelines(classify_model(tiny_models[kind])))


def test_guided_images_at_three_frames_render_through_vace(tiny_models, tmp_path):
    """VACE gets each image as a kept frame at its position, and the output frame there is the image after the
    render's own resizing and colour matching (LAB, Deforum's default) — reproduced here with the same functions."""
    from deforum_wan.renderer.frames import ColorReference, match_to_reference
    from deforum_wan.renderer.render import RenderJob, render

    paths = {"0": _picture(tmp_path / "a.png", 1), "max_f/2": _picture(tmp_path / "b.png", 2),
             "max_f-1": _picture(tmp_path / "c.png", 3)}
    s = guided_settings({k: str(v) for k, v in paths.items()}, image_strength_schedule="0:(0.6)")
    pipes = _recorded(tiny_models, "vace")
    result = render(RenderJob(settings=s, model=str(tiny_models["vace"]), outdir=str(tmp_path / "out"),
                              make_video=False, options=PlanOptions(steps=1, max_clip_frames=9)), pipelines=pipes)
    assert result.status == "done"
    plan = result.plan
    assert len(plan.clips) == len(pipes.requests) >= 4
    reference = ColorReference.from_frames(_fitted(paths["0"]), "LAB")  # frame 0 is the first kept image
    carried = {k.field: (clip, k) for clip in plan.clips for k in clip.kept}
    assert list(carried) == ['init_images["0"]', 'init_images["max_f/2"]', 'init_images["max_f-1"]']
    for key, path in paths.items():
        clip, kept = carried[f'init_images["{key}"]']
        request, frames = pipes.requests[clip.index], pipes.clips[clip.index]
        ((at, image),) = request.keep_at
        assert at == kept.wan_frame and request.conditioning_scale == 0.8  # 0.6 / 0.75
        np.testing.assert_array_equal(image, _fitted(path))
        pinned = frames.copy()
        pinned[at] = _fitted(path)
        # clip 0 is the colour reference itself (left as it is); every other clip is matched to it
        expected = pinned[at] if clip.index == 0 else match_to_reference(pinned, reference)[at]
        np.testing.assert_array_equal(_frame(result, kept.frame), expected)  # PNG is lossless: exact
    np.testing.assert_array_equal(_frame(result, 0), _fitted(paths["0"]))
    assert all(not r.keep_at and r.conditioning_scale is None for c, r in zip(plan.clips, pipes.requests) if not c.kept)


def test_flf2v_takes_guided_images_as_first_and_last_images(tiny_models, tmp_path):
    from deforum_wan.renderer.render import RenderJob, render

    init, a, b = (_picture(tmp_path / f"{n}.png", i) for i, n in enumerate(("init", "a", "b")))
    s = guided_settings({"7": str(a), "max_f": str(b)}, use_init=True, init_image=str(init))
    pipes = _recorded(tiny_models, "flf2v")
    result = render(RenderJob(settings=s, model=str(tiny_models["flf2v"]), outdir=str(tmp_path / "out"),
                              make_video=False, options=PlanOptions(steps=1, max_clip_frames=9, color_match=False)),
                    pipelines=pipes)
    assert [c.mode for c in result.plan.clips] == ["i2v"] * 3 and len(pipes.requests) == 3
    first, middle, last = pipes.requests
    np.testing.assert_array_equal(first.image, _fitted(init))
    np.testing.assert_array_equal(first.last_image, _fitted(a))
    assert middle.last_image is None
    np.testing.assert_array_equal(middle.image, _fitted(a))  # the next clip continues from the kept last frame
    np.testing.assert_array_equal(last.last_image, _fitted(b))
    np.testing.assert_array_equal(_frame(result, 7), _fitted(a))
    np.testing.assert_array_equal(_frame(result, 23), _fitted(b))


@pytest.mark.parametrize("kind", ["i2v", "flf2v", "ti2v-5b", "vace"])
def test_each_image_model_renders_its_first_clip_from_the_init_image(tiny_models, tmp_path, kind):
    from deforum_wan.renderer.render import RenderJob, render

    init = _picture(tmp_path / "init.png", 7)
    s = guided_settings({}, use_looper=False, use_init=True, init_image=str(init), strength=0.6, max_frames=12)
    pipes = _recorded(tiny_models, kind)
    result = render(RenderJob(settings=s, model=str(tiny_models[kind]), outdir=str(tmp_path / "out"),
                              make_video=False, options=PlanOptions(steps=1, max_clip_frames=9)), pipelines=pipes)
    first = pipes.requests[0]
    assert result.status == "done" and result.plan.clips[0].mode == ("vace" if kind == "vace" else "i2v")
    if kind == "vace":
        assert len(first.known_frames) == 1 and first.conditioning_scale == 0.75  # strength 0.6 / 0.8
        np.testing.assert_array_equal(first.known_frames[0], _fitted(init))
    else:
        assert first.conditioning_scale is None
        np.testing.assert_array_equal(first.image, _fitted(init))


def _write_bad(tmp_path: Path, what: str) -> Path:
    if what == "text":
        path = tmp_path / "notes.png"
        path.write_text("this is text")
    elif what == "svg":
        path = tmp_path / "vector.svg"
        path.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><rect width="8" '
                        'height="8"/></svg>')
    elif what == "huge":
        path = tmp_path / "huge.png"
        Image.new("1", (9000, 4)).save(path)
    else:
        path = tmp_path / "missing.png"
    return path


BAD = {"text": "not an image PIL can read", "svg": "not an image PIL can read",
       "huge": "the image is 9000x4 pixels; at most 8192 a side", "missing": "No such file"}


@pytest.mark.parametrize("what", list(BAD))
@pytest.mark.parametrize("key", ["init_image", "init_images"])
def test_bad_images_fail_before_the_model_loads(tiny_models, tmp_path, monkeypatch, what, key):
    from deforum_wan.renderer import loading
    from deforum_wan.renderer.render import RenderError, RenderJob, render

    monkeypatch.setattr(loading, "load_pipelines", lambda *a, **k: pytest.fail("the model was loaded"))
    bad = _write_bad(tmp_path, what)
    if key == "init_image":
        s = guided_settings({}, use_looper=False, use_init=True, init_image=str(bad))
        field = "init_image"
    else:
        s = guided_settings({"0": str(_picture(tmp_path / "good.png", 1)), "max_f/2": str(bad)})
        field = r'init_images\["max_f/2"\]'
    job = RenderJob(settings=s, model=str(tiny_models["vace"]), outdir=str(tmp_path / "out"),
                    options=PlanOptions(steps=1))
    with pytest.raises(RenderError, match=rf"^{field} '.*{bad.name}' cannot be read: .*{BAD[what]}"):
        render(job)
    assert not list((tmp_path / "out").rglob("*.png"))


def test_without_vace_an_image_at_frame_0_starts_the_first_clip(tiny_models, tmp_path):
    """TI2V-5B starts from text; an image at frame 0 makes its first clip I2V from that image (no init_image)."""
    from deforum_wan.renderer.render import RenderJob, render

    start = _picture(tmp_path / "start.png", 4)
    s = guided_settings({"0": str(start)}, max_frames=12)
    pipes = _recorded(tiny_models, "ti2v-5b")
    result = render(RenderJob(settings=s, model=str(tiny_models["ti2v-5b"]), outdir=str(tmp_path / "out"),
                              make_video=False, options=PlanOptions(steps=1, max_clip_frames=9, color_match=False)),
                    pipelines=pipes)
    assert [c.mode for c in result.plan.clips][0] == "i2v" and result.plan.clips[0].kept[0].role == FIRST
    np.testing.assert_array_equal(pipes.requests[0].image, _fitted(start))
    np.testing.assert_array_equal(_frame(result, 0), _fitted(start))


def test_guided_images_and_the_motion_guide_share_a_vace_clip(tiny_models, tmp_path):
    """--motion guide fills a clip's frames with the warped picture; a guided image is still kept at its frame and
    its clip's conditioning scale is image_strength_schedule's, not strength_schedule's."""
    from deforum_wan.renderer.render import RenderJob, render

    image = _picture(tmp_path / "mid.png", 5)
    s = guided_settings({"max_f/2": str(image)}, translation_x="0:(2)", image_strength_schedule="0:(1.5)")
    pipes = _recorded(tiny_models, "vace")
    result = render(RenderJob(settings=s, model=str(tiny_models["vace"]), outdir=str(tmp_path / "out"),
                              make_video=False, options=PlanOptions(steps=1, max_clip_frames=9, motion="guide",
                                                                    color_match=False)), pipelines=pipes)
    (clip,) = [c for c in result.plan.clips if c.kept]
    request = pipes.requests[len(pipes.requests) - len(result.plan.clips) + clip.index]  # after the bootstrap render
    assert request.guide_frames is not None and request.conditioning_scale == 2.0  # 1.5 / 0.75
    assert [at for at, _ in request.keep_at] == [clip.kept[0].wan_frame]
    np.testing.assert_array_equal(_frame(result, 11), _fitted(image))
