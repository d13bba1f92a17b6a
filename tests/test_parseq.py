"""Parseq manifests (core/parseq.py), checked value for value against what Deforum's parseq_adapter.py
(deforum-art/sd-webui-deforum@3224268) would use. Every manifest here is built by the test."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

from deforum_wan.core.parseq import MOVEMENT, number_text, per_frame
from deforum_wan.core.plan import PlanOptions, camera_path, format_plan, plan_clips
from deforum_wan.core.prompts import prompt_at
from deforum_wan.core.schedules import _parse_schedule_per_frame, parse_schedule
from deforum_wan.core.seeds import frame_seeds
from deforum_wan.core.settings import SettingsError, load_settings, settings_from_dict
from deforum_wan.core.specs import MODEL_SPECS

FOX, BIRD = ("a red fox in the snow", "blurry"), ("a blue bird on a branch", "dark, grainy")


def _absolute(i: int) -> dict[str, float]:
    """A camera move as Parseq shows it (absolute values); it writes the change since the last frame as *_delta."""
    return {"angle": 4 * math.sin(i / 3), "zoom": 1 + 0.003 * i + 0.0001 * i * i, "translation_x": 0.7 * i - i * i / 97,
            "translation_y": -0.3 * i, "translation_z": 2.5 * math.cos(i / 5), "rotation_3d_x": 0.01 * i,
            "rotation_3d_y": 0.05 * i ** 1.5, "rotation_3d_z": math.sin(i) / 7}


def build_manifest(n: int = 24, fps: float = 16, *, prompts: bool = True, seed: bool = True,
                   cadence: int | None = 1) -> dict:
    frames, before = [], None
    for i in range(n):
        frame: dict = {"frame": i}
        now = _absolute(i)
        for key, value in now.items():
            frame[key] = value
            frame[f"{key}_delta"] = value - before[key] if before else value
            frame[f"{key}_pc"] = 50.0
        frame.update(strength=0.4 + 0.01 * i, scale=5 + 0.25 * (i % 4), fov=60 + i / 7,
                     transform_center_x=0.5 + i / 1000, noise=0.02, prompt_weight_1=1, prompt_weight_1_delta=0)
        if seed:
            frame["seed"] = 1000 + i // 6 + 0.1 * (i % 6)  # fractional, as Parseq interpolates: Deforum takes int()
            frame["subseed"], frame["subseed_strength"] = 7, 0.0
        if prompts:
            positive, negative = FOX if i < n // 2 else BIRD
            frame["deforum_prompt"] = f"{positive} --neg {negative}"
        frames.append(frame)
        before = now
    options = {"output_fps": fps, "input_fps": 20, "bpm": 140, **({"cadence": cadence} if cadence else {})}
    return {"meta": {"generated_by": "sd_parseq", "version": "0.1.94"}, "options": options,
            "managedFields": ["angle", "zoom"], "rendered_frames": frames}


BASE = {"prompts": {"0": "the file's own prompt"}, "negative_prompts": "ugly", "max_frames": 500, "fps": 30,
        "seed": 5, "W": 64, "H": 48, "animation_mode": "3D"}


def parseq_settings(manifest: dict | str | None = None, **changes):
    return settings_from_dict({**BASE, "parseq_manifest": build_manifest() if manifest is None else manifest,
                               **changes})


def expected(manifest: dict, field: str, deltas: bool) -> np.ndarray:
    name = f"{field}_delta" if deltas and field in MOVEMENT else field
    return np.array([f[name] for f in manifest["rendered_frames"]], dtype=np.float64)


@pytest.mark.parametrize("mode", ["2D", "3D"])
@pytest.mark.parametrize("deltas", [True, False])
def test_the_plan_follows_the_manifest_frame_for_frame(mode, deltas):
    manifest = build_manifest()
    s = parseq_settings(manifest, parseq_use_deltas=deltas, animation_mode=mode)
    frames = manifest["rendered_frames"]
    assert (s.max_frames, s.fps) == (24, 16)  # parseq_non_schedule_overrides is on by default
    for key in MOVEMENT[:8]:
        np.testing.assert_array_equal(parse_schedule(getattr(s, key), s.max_frames, key=key),
                                      expected(manifest, key, deltas), err_msg=key)
    path = camera_path(s)  # what camera words, the motion guide and the camera plot read
    for key in ("translation_x", "translation_y", "translation_z", "rotation_3d_y") + (("angle", "zoom") if
                                                                                         mode == "2D" else ()):
        np.testing.assert_array_equal(getattr(path, key), expected(manifest, key, deltas), err_msg=key)
    for key, field in (("strength_schedule", "strength"), ("cfg_scale_schedule", "scale"), ("fov_schedule", "fov"),
                       ("transform_center_x", "transform_center_x")):
        np.testing.assert_array_equal(parse_schedule(getattr(s, key), 24, key=key), expected(manifest, field, deltas))
    np.testing.assert_array_equal(parse_schedule(s.raw["noise_schedule"], 24), np.full(24, 0.02))
    seeds = frame_seeds(s)
    assert seeds == [int(f["seed"]) for f in frames] and s.seed_behavior == "schedule"
    for i, f in enumerate(frames):  # Parseq's prompt as it is: no positive/negative_prompts wrapped around it
        assert tuple(prompt_at(s, i).__dict__.values()) == (FOX if i < 12 else BIRD)
    plan = plan_clips(s, MODEL_SPECS["vace"], PlanOptions(seed=5, max_clip_frames=9, min_clip_seconds=0))
    assert sum(len(c.sources) for c in plan.clips) == 24
    for c in plan.clips:
        assert c.seed == seeds[c.output_start] and c.prompt.startswith((FOX if c.output_start < 12 else BIRD)[0])
    line = next(c for c in plan.choices if c.name == "parseq")
    assert line.value == "24 frames" and f"deltas {'on' if deltas else 'off'}" in line.source
    assert "16 fps from the manifest" in line.source and "cfg_scale_schedule" in line.source
    assert "Parseq drives the render: 24 frames" in format_plan(plan)


def test_deltas_on_without_delta_values_keeps_the_settings_schedule_as_deforum_does():
    manifest = build_manifest()
    for f in manifest["rendered_frames"]:
        del f["angle_delta"]
    s = parseq_settings(manifest, angle="0:(3)", animation_mode="2D")
    assert s.angle == "0:(3)" and s.parseq.kept == ("angle",) and "angle" not in s.parseq.managed
    assert "the settings keep angle" in s.parseq.describe()
    off = parseq_settings(manifest, angle="0:(3)", parseq_use_deltas=False)
    np.testing.assert_array_equal(parse_schedule(off.angle, 24), expected(manifest, "angle", False))


def test_without_non_schedule_overrides_the_settings_keep_frames_and_fps():
    manifest = build_manifest()
    longer = parseq_settings(manifest, max_frames=30, parseq_non_schedule_overrides=False)
    assert (longer.max_frames, longer.fps, longer.raw.get("diffusion_cadence")) == (30, 30, None)
    strength = parse_schedule(longer.strength_schedule, 30)
    np.testing.assert_array_equal(strength[:24], expected(manifest, "strength", False))
    assert (strength[24:] == strength[23]).all()  # Deforum holds the last frame's values past the manifest
    shorter = parseq_settings(manifest, max_frames=10, parseq_non_schedule_overrides="false")
    assert shorter.max_frames == 10 and len(frame_seeds(shorter)) == 10
    assert "max_frames 10 from the settings, 30 fps from the settings" in shorter.parseq.describe()


def test_cadence_and_fps_come_from_the_manifest():
    s = parseq_settings(build_manifest(fps=12.5, cadence=3))
    assert s.fps == 12.5 and s.raw["diffusion_cadence"] == 3 and s.parseq.cadence == 3
    seeds = frame_seeds(s)  # Deforum reads the seed schedule only on diffused frames
    assert seeds[:6] == [1000, 1000, 1000, 1000, 1000, 1000] and seeds[6] == 1001


def test_wan_prompts_still_win_and_unmanaged_keys_stay():
    s = parseq_settings(build_manifest(prompts=False, seed=False), wan_prompts={"0": "written for wan"},
                        seed_behavior="ladder")
    assert s.prompts == (("0", "the file's own prompt"),) and s.seed_behavior == "ladder"
    assert prompt_at(s, 3).positive == "written for wan"
    assert s.parseq.managed[0] != "prompts" and "seed_schedule" not in s.parseq.managed


def test_saved_settings_load_back_to_the_same_render():
    s = parseq_settings()
    saved = s.to_dict()
    assert saved["parseq_manifest"]["rendered_frames"][3]["frame"] == 3  # kept inline: the saved file is complete
    again = settings_from_dict(json.loads(json.dumps(saved)))
    for key in ("max_frames", "fps", "prompts", "angle", "zoom", "strength_schedule", "seed_schedule", "seed_behavior",
                "negative_prompts"):
        assert getattr(again, key) == getattr(s, key), key
    assert again.parseq == s.parseq


def test_a_manifest_given_as_the_settings_is_deforums_defaults_plus_it(tmp_path):
    path = tmp_path / "parseq.json"
    path.write_text(json.dumps(build_manifest()))
    s = load_settings(path)
    assert (s.max_frames, s.fps, s.W, s.animation_mode) == (24, 16, 512, "2D")
    np.testing.assert_array_equal(camera_path(s).angle, expected(build_manifest(), "angle", True))


def test_numbers_are_written_so_the_schedule_reads_back_the_same_bits():
    values = [0.1, 1e-7, -2.5e-12, 1e300, 1.7976931348623157e308, 5e-324, -0.0, 30.11087728614862, 2, 10**20,
              0.30000000000000004, 123456.789e-3, -7.0]
    text = per_frame(values, len(values))
    assert "e" not in text.lower()  # an exponent would make it an expression, held and not a plain number
    got = parse_schedule(text, len(values), key="x")
    want = np.array(values, dtype=np.float64)
    assert got.tobytes() == want.tobytes()
    np.testing.assert_array_equal(_parse_schedule_per_frame(text, len(values), key="x"), got)  # the general path
    assert number_text(3) == "3" and float(number_text(1 / 3)) == 1 / 3


def test_two_thousand_frames_of_twelve_schedules_stay_fast():
    manifest = build_manifest(2000)
    started = time.perf_counter()
    s = parseq_settings(manifest)
    applied = time.perf_counter() - started
    keys = ("angle", "zoom", "translation_x", "translation_y", "translation_z", "rotation_3d_x", "rotation_3d_y",
            "rotation_3d_z", "strength_schedule", "cfg_scale_schedule", "seed_schedule", "fov_schedule")
    started = time.perf_counter()
    arrays = {k: parse_schedule(getattr(s, k), s.max_frames, key=k) for k in keys}
    parsed = time.perf_counter() - started
    for key, field in (("translation_z", "translation_z"), ("seed_schedule", "seed"), ("fov_schedule", "fov")):
        np.testing.assert_array_equal(arrays[key], expected(manifest, field, True))
    print(f"2000 frames: applied in {applied:.3f} s, 12 schedules parsed in {parsed:.3f} s")
    assert applied < 3 and parsed < 3  # measured about 0.15 s and 0.1 s on a busy 2-core machine


def _broken(change):
    manifest = build_manifest(8)
    change(manifest, manifest["rendered_frames"])
    return manifest


BAD = [
    (lambda m, f: f[5].update(strength="high"), "rendered_frames[5].strength (frame 5): expected a number, got 'high'"),
    (lambda m, f: f[2].update(angle_delta=True), "rendered_frames[2].angle_delta (frame 2): expected a number"),
    (lambda m, f: f[4].update(fov=float("nan")), "rendered_frames[4].fov (frame 4): expected a number, got nan"),
    (lambda m, f: f[3].update(frame=7), "rendered_frames[3].frame is 7; frames must be numbered 0 to 7 in order"),
    (lambda m, f: f[4].pop("scale"), "rendered_frames[4] (frame 4) has no 'scale'"),
    (lambda m, f: f[0].update(wobble=1), "rendered_frames[0] has 'wobble', a field Deforum does not read"),
    (lambda m, f: f[6].update(deforum_prompt=None), "rendered_frames[6].deforum_prompt (frame 6): expected text"),
    (lambda m, f: m.pop("rendered_frames"), "no rendered_frames"),
    (lambda m, f: f.clear(), "rendered_frames is empty"),
    (lambda m, f: m["options"].update(output_fps="fast"), "options.output_fps: expected a frame rate, got 'fast'"),
    (lambda m, f: m["options"].update(output_fps=5000), "fps: must be at most 1000, got 5000"),
    (lambda m, f: m["options"].update(cadence=1.5), "options.cadence: expected a whole number from 1, got 1.5"),
]


@pytest.mark.parametrize("change, words", BAD, ids=[w.split(":")[0][:40] for _, w in BAD])
def test_bad_manifests_name_parseq_manifest_the_frame_and_the_field(change, words):
    with pytest.raises(SettingsError) as err:
        parseq_settings(_broken(change))
    assert err.value.key == "parseq_manifest" and words in str(err.value), str(err.value)


@pytest.mark.parametrize("value, words", [("{not json", "not valid JSON"), (42, "expected the manifest (JSON)"),
                                           ("/no/such/manifest.json", "must be read before"),
                                           ('{"meta": {}}', "no rendered_frames")])
def test_bad_manifest_values(value, words):
    with pytest.raises(SettingsError) as err:
        parseq_settings(value)
    assert err.value.key == "parseq_manifest" and words in str(err.value)


def test_inline_text_a_file_and_a_url(tmp_path):
    from netfixtures import LocalServer

    from deforum_wan.renderer.fetch import FetchPolicy
    from deforum_wan.renderer.manifest import loader_for

    manifest = build_manifest()
    reference = parseq_settings(manifest)
    inline = parseq_settings(json.dumps(manifest))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "parseq.json").write_text(json.dumps(manifest))
    settings_file = tmp_path / "settings.txt"
    settings_file.write_text(json.dumps({**BASE, "parseq_manifest": "docs/parseq.json"}))
    from_file = load_settings(settings_file, load_manifest=loader_for(settings_file))  # beside the settings file
    assert from_file.parseq.source == "docs/parseq.json"
    with LocalServer() as server:
        server.routes.add("/m.json", json.dumps(manifest).encode(), "application/json")
        server.routes.add("/page", b"<html></html>", "text/html")
        url_settings = {**BASE, "parseq_manifest": server.url("/m.json")}
        with pytest.raises(SettingsError, match="parseq_manifest: cannot use .*loopback"):
            settings_from_dict(url_settings, load_manifest=loader_for(None))  # the default policy: public only
        assert server.routes.seen == []
        from_url = settings_from_dict(url_settings, load_manifest=loader_for(None, FetchPolicy(allow_loopback=True)))
        with pytest.raises(SettingsError, match="expected JSON, the server says text/html"):
            settings_from_dict({**BASE, "parseq_manifest": server.url("/page")},
                               load_manifest=loader_for(None, FetchPolicy(allow_loopback=True)))
    for s in (inline, from_file, from_url):
        assert s.max_frames == 24 and s.angle == reference.angle and s.prompts == reference.prompts
    with pytest.raises(SettingsError, match="neither the manifest's JSON, an http"):
        settings_from_dict({**BASE, "parseq_manifest": "missing.json"}, load_manifest=loader_for(settings_file))


def test_a_tiny_render_driven_by_a_manifest(tiny_models, tmp_path):
    from deforum_wan.renderer import outputs
    from deforum_wan.renderer.render import RenderJob, render

    manifest = build_manifest(12, fps=16)
    s = settings_from_dict({**BASE, "W": 32, "H": 32, "batch_name": "pq_{timestring}", "parseq_manifest": manifest})
    result = render(RenderJob(settings=s, model=str(tiny_models["t2v"]), outdir=str(tmp_path),
                              options=PlanOptions(steps=1, max_clip_frames=9, min_clip_seconds=0)))
    assert result.status == "done" and result.frames_on_disk == 12  # the manifest's 12 frames, not max_frames 500
    assert outputs.existing_frames(result.folder, result.timestring) == list(range(12))
    seeds = [int(f["seed"]) for f in manifest["rendered_frames"]]
    assert [c.seed for c in result.plan.clips] == [seeds[c.output_start] for c in result.plan.clips]
    assert result.plan.clips[-1].prompt.startswith(BIRD[0]) and result.plan.clips[0].prompt.startswith(FOX[0])
    saved = load_settings(outputs.settings_file(result.folder, result.timestring))  # the saved settings carry it
    assert saved.parseq is not None and saved.max_frames == 12 and saved.angle == s.angle


def test_the_manifest_size_is_bounded(tmp_path, monkeypatch):
    from deforum_wan.core import parseq
    from deforum_wan.renderer.manifest import loader_for

    text = json.dumps(build_manifest())
    monkeypatch.setattr(parseq, "MAX_MANIFEST_BYTES", len(text) - 1)
    with pytest.raises(SettingsError, match=rf"parseq_manifest: the manifest is {len(text)} bytes; at most"):
        parseq_settings(text)
    (tmp_path / "m.json").write_text(text)
    with pytest.raises(SettingsError, match=rf"parseq_manifest: .*m.json is {len(text)} bytes; at most"):
        settings_from_dict({**BASE, "parseq_manifest": "m.json"}, load_manifest=loader_for(tmp_path / "s.txt"))
    monkeypatch.setattr(parseq, "MAX_MANIFEST_BYTES", len(text))
    assert parseq_settings(text).max_frames == 24


def test_the_camera_plot_shows_the_parseq_values():
    from deforum_wan.webui.plot import camera_series, keyframe_legend

    manifest = build_manifest()
    s = parseq_settings(manifest)
    series = {c.key: c for c in camera_series(s)}
    for key in ("translation_x", "translation_z", "rotation_3d_y"):
        np.testing.assert_array_equal(series[key].per_frame, expected(manifest, key, True))
    assert keyframe_legend(s) == [(1, 0, FOX[0]), (2, 12, BIRD[0])]


def test_the_tab_imports_a_manifest_and_keeps_it_through_its_state(tmp_path):
    from deforum_wan.webui.tab import _settings_from_state, load_settings_file

    (tmp_path / "parseq.json").write_text(json.dumps(build_manifest()))
    state, summary, status = load_settings_file(str(tmp_path / "parseq.json"))
    assert status.startswith("Imported") and "Parseq drives the render: 24 frames" in summary
    s = _settings_from_state(json.loads(json.dumps(state)))  # the state the tab plans and submits from
    assert s.max_frames == 24 and s.parseq is not None
    (tmp_path / "settings.txt").write_text(json.dumps({**BASE, "parseq_manifest": "gone.json"}))
    state, _summary, status = load_settings_file(str(tmp_path / "settings.txt"))
    assert state is None and "parseq_manifest: 'gone.json' is neither" in status


def test_the_motion_guide_warp_reads_the_manifest_and_no_perspective_flip_is_switched_on():
    from deforum_wan.core.warp import warp_path

    manifest = build_manifest()
    path = warp_path(parseq_settings(manifest, animation_mode="2D"))
    assert not path.perspective_flip  # render.py's flip_2d_perspective = True is read by nothing at 3224268
    np.testing.assert_array_equal(path.translation_x, expected(manifest, "translation_x", True))
    np.testing.assert_array_equal(path.fov, expected(manifest, "fov", True))


def test_the_two_switches_are_checked_by_name():
    with pytest.raises(SettingsError) as err:
        parseq_settings(parseq_use_deltas="sometimes")
    assert err.value.key == "parseq_use_deltas" and "expected true or false, got 'sometimes'" in str(err.value)


def test_the_cases_of_deforums_own_adapter_test():
    """parseq_adapter_test.py@3224268: two frames, overrides off, max_frames 2, fps 30."""
    def load(frames, deltas=True):
        manifest = json.dumps({"options": {"output_fps": 30}, "rendered_frames": frames})
        return settings_from_dict({"prompts": {"0": "own"}, "max_frames": 2, "fps": 30, "parseq_manifest": manifest,
                                   "parseq_use_deltas": deltas, "parseq_non_schedule_overrides": False})

    angles = [{"frame": 0, "angle": 90, "angle_delta": 90}, {"frame": 1, "angle": 180, "angle_delta": 90}]
    assert parse_schedule(load(angles).angle, 2)[1] == 90  # test_usedelta
    assert parse_schedule(load(angles, deltas=False).angle, 2)[1] == 180  # test_usenondelta
    bare = load([{"frame": 0}, {"frame": 1}])  # test_fallbackonundefined, test_withoutprompt, test_withoutseed
    assert bare.angle == "0: (0)" and bare.prompts == (("0", "own"),) and bare.seed_behavior == "iter"
    prompted = load([{"frame": 0, "deforum_prompt": "blah"}, {"frame": 1, "deforum_prompt": "blah"}])
    assert prompted.prompts == (("0", "blah"),) and "prompts" in prompted.parseq.managed  # test_withprompt
    seeded = load([{"frame": 0, "seed": 1}, {"frame": 1, "seed": 2}])
    assert frame_seeds(seeded, 0) == [1, 2] and seeded.seed_behavior == "schedule"  # test_withseed
    looper = load([{"frame": 0, "guided_blendFactorMax": 0.4}, {"frame": 1, "guided_blendFactorMax": 0.4}])
    assert parse_schedule(looper.raw["blendFactorMax"], 2)[0] == 0.4  # test_looper
    cn = load([{"frame": 0, "cn_1_weight": 1}, {"frame": 1, "cn_1_weight": 1}])
    assert parse_schedule(cn.raw["cn_1_weight"], 2)[0] == 1  # test_cn
