"""Every Deforum key is reported used, mapped or ignored, and an ignored change warns exactly once."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from deforum_wan.core.coverage import (
    DEFORUM_COMMIT, IGNORED, MAPPED, STATUSES, USED, KeyReport, KeyStatus, deforum_default, format_key_report,
    key_report,
)
from deforum_wan.core.settings import load_settings, settings_from_dict

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "deforum-settings"
FILES = sorted(SHARED.glob("*.txt"))
A1111 = SHARED / "a1111-deforum-default.txt"
SIMPLE = SHARED / "a1111-deforum-test-simple.txt"
FORGE = SHARED / "forge-deforum-default.txt"


def _raw(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _report(path: Path = A1111, **changes) -> KeyReport:
    return key_report(settings_from_dict({**_raw(path), **changes}))


def _warnings_for(report: KeyReport, key: str) -> list[str]:
    return [w for w in report.warnings if w.startswith(f"{key} is ")]


def test_shared_files_exist():
    assert len(FILES) == 3, f"expected the three shared Deforum settings files in {SHARED}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_each_ignored_change_warns_exactly_once(path: Path):
    report = key_report(load_settings(path))
    keys = [e.key for e in report.entries]
    assert len(keys) == len(set(keys)), "a key is reported twice"
    assert all(e.status in STATUSES and e.note for e in report.entries)
    for entry in report.entries:
        expected = 1 if entry.status == IGNORED and entry.changed else 0
        assert len(_warnings_for(report, entry.key)) == expected, entry
    assert len(report.warnings) == sum(e.status == IGNORED and e.changed for e in report.entries)


def test_a1111_default_warns_only_about_cadence():
    report = key_report(load_settings(A1111))
    assert report.warnings == (
        "diffusion_cadence is 2 but is ignored: Wan diffuses every frame, as cadence 1 does (only the seed sequence "
        "follows it, as Deforum's does)",
    )
    assert report.get("color_coherence").status == MAPPED
    assert "LAB" in report.get("color_coherence").note
    assert report.get("translation_z").status == MAPPED  # 3D
    assert report.get("zoom").status == IGNORED and not report.get("zoom").changed  # Deforum's 3D ignores zoom too


def test_simple_file_warnings_name_key_value_and_reason():
    warnings = key_report(load_settings(SIMPLE)).warnings
    assert any(w.startswith("steps is 1 (Deforum's default: 25) but is ignored: Wan samples with the model's "
                            "official steps") for w in warnings)
    assert "noise_schedule is '0: (0.04)' (Deforum's default: '0: (0.065)') but is ignored: Wan adds no img2img " \
           "noise: each clip is sampled from fresh noise" in warnings
    assert not any(w.startswith(("sigma_schedule", "threshold_schedule", "depth_algorithm")) for w in warnings)


def test_forge_file():
    report = key_report(load_settings(FORGE))
    color = report.get("color_coherence")
    assert (color.value, color.status, color.note) == ("None", MAPPED, "colour matching off")
    assert report.get("prompts").status == IGNORED  # wan_prompts win
    assert report.get("wan_prompts").status == USED
    assert report.get("W").status == IGNORED and "wan_resolution 864x480" in report.get("W").note
    assert report.get("wan_inference_steps").status == USED
    assert report.get("wan_frame_overlap").status == USED
    assert report.get("wan_seed").status == IGNORED and not report.get("wan_seed").changed
    assert report.get("shake_name").status == MAPPED and "shake" in report.get("shake_name").note
    assert report.get("scheduler").status == IGNORED  # a key only the Forge fork saves
    assert "wan_inference_steps = 20" in report.get("steps").note
    assert any(w.startswith("diffusion_cadence is 10") for w in report.warnings)
    assert any(w.startswith("sampler is 'Euler'") for w in report.warnings)


def test_changed_noise_schedule_warns_with_its_value():
    report = _report(noise_schedule="0: (0.08)")
    assert _warnings_for(report, "noise_schedule") == [
        "noise_schedule is '0: (0.08)' (Deforum's default: '0: (0.065)') but is ignored: Wan adds no img2img noise: "
        "each clip is sampled from fresh noise"]


@pytest.mark.parametrize("value", ["0:(0.065)", " 0 : ( 0.0650 ) ", 0.065, "0: (0.065), 50: (0.065)"])
def test_the_default_written_differently_is_no_change(value):
    report = _report(noise_schedule=value)
    assert not report.get("noise_schedule").changed and not _warnings_for(report, "noise_schedule")


def test_values_compare_by_meaning():
    report = _report(diffusion_redo=0, use_mask="false", enable_perspective_flip=0, parseq_manifest=None,
                     hybrid_composite="None", strength_schedule="0:(0.650)", diffusion_cadence="1")
    assert report.warnings == ()


def test_missing_keys_are_defaults():
    report = key_report(settings_from_dict({"prompts": {"0": "a cat"}}))
    assert report.warnings == ()
    noise = report.get("noise_schedule")
    assert (noise.value, noise.default, noise.changed) == ("0: (0.065)", "0: (0.065)", False)


def test_constant_cfg_schedule_has_no_effect_and_a_varying_one_is_mapped():
    constant = _report(cfg_scale_schedule="0: (5)").get("cfg_scale_schedule")
    assert constant.status == MAPPED and "no effect" in constant.note
    assert "constant" in _report(cfg_scale_schedule="0: (3+4)").get("cfg_scale_schedule").note  # an expression
    assert "constant" in _report(cfg_scale_schedule="0: (7), 500: (12)").get("cfg_scale_schedule").note  # past the end
    varying = _report(cfg_scale_schedule="0: (7), 60: (12)").get("cfg_scale_schedule")
    assert varying.status == MAPPED and "relative changes scale" in varying.note and varying.changed
    assert "relative" in _report(cfg_scale_schedule="0: (7+2*sin(t/10))").get("cfg_scale_schedule").note
    assert not _warnings_for(_report(cfg_scale_schedule="0: (7), 60: (12)"), "cfg_scale_schedule")


def test_steps_schedule_follows_enable_steps_scheduling():
    off = _report(steps_schedule="0: (25), 60: (40)")
    entry = off.get("steps_schedule")
    assert entry.status == IGNORED and not entry.changed and not _warnings_for(off, "steps_schedule")
    on = _report(enable_steps_scheduling=True, steps_schedule="0: (25), 60: (40)")
    assert on.get("steps_schedule").status == MAPPED and "relative" in on.get("steps_schedule").note
    assert on.get("enable_steps_scheduling").status == MAPPED
    assert "no effect" in _report(enable_steps_scheduling=True).get("steps_schedule").note


@pytest.mark.parametrize("mode", ["Interpolation"])
def test_unsupported_animation_modes_warn(mode):
    report = _report(animation_mode=mode)
    assert report.get("animation_mode").status == IGNORED
    assert len(_warnings_for(report, "animation_mode")) == 1
    assert _warnings_for(report, "animation_mode")[0].startswith(f"animation_mode is '{mode}' (Deforum's default: '2D')")
    assert report.get("translation_z").status == IGNORED and not report.get("translation_z").changed


def test_video_input_color_coherence_and_video_keys():
    report = _report(animation_mode="Video Input", video_init_path="/videos/me.mp4", color_coherence="Video Input",
                     extract_nth_frame=2, max_frames=50, overwrite_extracted_frames=True, video_mask_path="/v/m.mp4")
    for key in ("animation_mode", "video_init_path", "extract_nth_frame"):
        assert report.get(key).status == USED and not _warnings_for(report, key), key
    assert report.get("strength_schedule").status == MAPPED and "source video" in report.get("strength_schedule").note
    # Deforum sets max_frames from the extracted frames; the mask path is read only with use_mask_video
    for key in ("max_frames", "overwrite_extracted_frames"):
        assert report.get(key).status == IGNORED and len(_warnings_for(report, key)) == 1, key
    assert report.get("video_mask_path").status == IGNORED and not _warnings_for(report, "video_mask_path")
    masked = _report(animation_mode="Video Input", use_mask_video=True, video_mask_path="/v/m.mp4")
    assert masked.get("video_mask_path").status == USED and masked.get("use_mask_video").status == USED
    outside = _report(animation_mode="2D", video_init_path="/videos/me.mp4")  # read only in Video Input mode
    assert outside.get("video_init_path").status == IGNORED and not _warnings_for(outside, "video_init_path")
    assert report.get("color_coherence").status == IGNORED and len(_warnings_for(report, "color_coherence")) == 1


@pytest.mark.parametrize("value, note", [
    ("None", "colour matching off"),
    ("HSV", "each clip matched to frame 0 (or the init image) in HSV"),
    ("Match Frame 0 RGB", "each clip matched to frame 0 (or the init image) in RGB"),
    ("Image", "matched to color_coherence_image_path"),
])
def test_color_coherence_mappings(value, note):
    report = _report(color_coherence=value, color_coherence_image_path="/img/palette.png")
    assert (report.get("color_coherence").status, report.get("color_coherence").note) == (MAPPED, note)
    assert report.get("color_coherence_image_path").status == (USED if value == "Image" else IGNORED)
    assert report.warnings == _report().warnings


def test_diffusion_cadence_warns_unless_one():
    assert not _warnings_for(_report(diffusion_cadence=1), "diffusion_cadence")
    assert _warnings_for(_report(diffusion_cadence=4), "diffusion_cadence") == [
        "diffusion_cadence is 4 (Deforum's default: 2) but is ignored: Wan diffuses every frame, as cadence 1 does "
        "(only the seed sequence follows it, as Deforum's does)"]


def test_keys_deforum_does_not_read_are_no_change():
    report = _report(zoom="0: (1.05)", mask_file="/m.png", perspective_flip_theta="0: (10)", sampler_schedule="0: (\"DDIM\")",
                     kernel_schedule="0: (9)", amount_schedule="0: (0)", diffusion_cadence=1)
    # 3D ignores zoom; use_mask, flip and sampler scheduling are off; amount 0 turns anti-blur off (a change itself)
    assert {w.split()[0] for w in report.warnings} == {"amount_schedule"}
    switched_on = _report(use_mask=True, mask_file="/m.png", fill=1, enable_perspective_flip=True, perspective_flip_theta="0: (10)",
                          diffusion_cadence=1)
    assert {w.split()[0] for w in switched_on.warnings} == {"use_mask", "mask_file", "enable_perspective_flip",
                                                            "perspective_flip_theta"}


def test_features_wan_lacks_warn_when_switched_on():
    report = _report(diffusion_cadence=1, cn_2_enabled=True, cn_2_model="control_v11p_sd15_seg", use_looper=True,
                     hybrid_composite="Normal", frame_interpolation_engine="FILM",
                     make_gif=True, r_upscale_video=True, color_force_grayscale=True, add_soundtrack="Init Video")
    warned = {w.split()[0] for w in report.warnings}
    assert warned == {"cn_2_enabled", "hybrid_composite", "frame_interpolation_engine",
                      "make_gif", "r_upscale_video", "color_force_grayscale"}
    assert report.get("add_soundtrack").status == USED and "video_init_path" in report.get("add_soundtrack").note
    assert "control_v11p_sd15_seg" in report.get("cn_2_enabled").note


def test_output_keys_mapped_and_used():
    report = _report(skip_video_creation=True, ffmpeg_crf=23, ffmpeg_preset="veryslow", add_soundtrack="File",
                     ffmpeg_outdir="/elsewhere")
    assert report.get("skip_video_creation").status == MAPPED and "no mp4" in report.get("skip_video_creation").note
    for key in ("ffmpeg_crf", "ffmpeg_preset"):
        assert report.get(key).status == MAPPED and report.get(key).note == "mp4 encoding (libx264 -crf/-preset)"
    assert report.get("soundtrack_path").status == USED
    assert _warnings_for(report, "ffmpeg_outdir")  # a key of unknown effect is not dropped silently


def test_init_image_used_only_with_use_init():
    assert _report().get("init_image").status == IGNORED
    report = _report(use_init=True, init_image="/img/start.png", strength=0.5)
    assert report.get("init_image").status == USED
    assert report.get("strength").status == MAPPED and "strength / 0.8" in report.get("strength").note
    assert not _warnings_for(report, "strength")


def test_guided_images_keys_are_mapped_or_say_why_not():
    report = _report(diffusion_cadence=1, use_looper=True, init_images='{"0": "a.png"}',
                     image_strength_schedule="0:(0.5)", blendFactorMax="0:(0.5)",
                     image_keyframe_strength_schedule="0:(0.9)")
    assert report.get("use_looper").status == MAPPED and report.get("init_images").status == USED
    assert report.get("image_strength_schedule").status == MAPPED
    assert "/ 0.75" in report.get("image_strength_schedule").note
    assert {w.split()[0] for w in report.warnings} == {"blendFactorMax", "image_keyframe_strength_schedule"}
    assert "binary" in report.get("image_keyframe_strength_schedule").note
    # Deforum reads init_images only in 2D and 3D: in other modes nothing counts as changed
    assert not _report(diffusion_cadence=1, use_looper=True, blendFactorMax="0:(0.5)", animation_mode="None").warnings


def test_wan_keys():
    report = _report(wan_steps=30, wan_inference_steps=20, wan_guidance_scale=5.0, wan_foo="bar", wan_seed=7)
    assert report.get("wan_steps").status == USED
    assert report.get("wan_inference_steps").status == IGNORED and "wan_steps is set" in report.get("wan_inference_steps").note
    assert report.get("wan_guidance_scale").status == USED
    assert _warnings_for(report, "wan_foo") == ["wan_foo is 'bar' but is ignored: not an option Deforum Wan reads"]
    assert _warnings_for(report, "wan_seed")
    assert "wan_steps = 30" in report.get("steps").note


REPRESENTATIVE = (
    "prompts", "positive_prompts", "negative_prompts", "W", "H", "fps", "max_frames", "animation_mode", "seed",
    "seed_behavior", "seed_schedule", "strength_schedule", "cfg_scale_schedule", "steps", "steps_schedule",
    "enable_steps_scheduling", "sampler", "sampler_schedule", "enable_sampler_scheduling", "checkpoint_schedule",
    "enable_checkpoint_scheduling", "clipskip_schedule", "noise_schedule", "noise_type", "perlin_octaves",
    "contrast_schedule", "amount_schedule", "kernel_schedule", "sigma_schedule", "threshold_schedule",
    "color_coherence", "color_coherence_image_path", "color_coherence_video_every_N_frames", "color_force_grayscale",
    "legacy_colormatch", "border", "fov_schedule", "near_schedule", "far_schedule", "enable_perspective_flip",
    "perspective_flip_theta", "use_depth_warping", "depth_algorithm", "midas_weight", "padding_mode", "sampling_mode",
    "optical_flow_cadence", "optical_flow_redo_generation", "redo_flow_factor_schedule", "diffusion_redo",
    "diffusion_cadence", "hybrid_composite", "hybrid_motion", "hybrid_flow_method", "use_mask", "mask_file",
    "use_noise_mask", "mask_schedule", "use_looper", "init_images", "image_strength_schedule",
    *(f"cn_{i}_enabled" for i in range(1, 6)), "parseq_manifest", "parseq_use_deltas", "frame_interpolation_engine",
    "frame_interpolation_x_amount", "skip_video_creation", "ffmpeg_crf", "ffmpeg_preset", "make_gif", "r_upscale_video",
    "video_init_path", "translation_x", "translation_z", "rotation_3d_y", "zoom", "angle", "transform_center_x",
    "shake_name", "shake_intensity", "use_init", "init_image", "strength", "soundtrack_path", "add_soundtrack",
    "batch_name",
)


@pytest.mark.parametrize("path", [A1111, FORGE], ids=lambda p: p.name)
def test_every_group_is_covered(path: Path):
    keys = {e.key for e in key_report(load_settings(path)).entries}
    assert set(REPRESENTATIVE) - keys == set()
    if path == FORGE:
        assert {"wan_inference_steps", "wan_guidance_scale", "wan_frame_overlap", "wan_resolution", "wan_t2v_model",
                "wan_flash_attention_mode", "scheduler", "keyframe_distribution"} <= keys


def test_format_key_report():
    report = key_report(load_settings(FORGE))
    text = format_key_report(report)
    assert text.splitlines()[0].startswith("Deforum keys: ")
    for header in ("used:", "mapped:", "ignored:", "warnings:"):
        assert header in text.splitlines()
    assert all(w in text for w in report.warnings)
    short = format_key_report(report, changed_only=True)
    assert len(short.splitlines()) < len(text.splitlines())
    assert " seed_iter_N " not in short and "* sampler " in short


def test_key_status_and_defaults():
    entry = KeyStatus("noise_schedule", "0: (0.1)", "0: (0.065)", IGNORED, "why", True)
    assert entry.warning == "noise_schedule is '0: (0.1)' (Deforum's default: '0: (0.065)') but is ignored: why"
    assert KeyStatus("fps", 30, 15, USED, "x", True).warning is None
    assert deforum_default("noise_schedule") == "0: (0.065)" and deforum_default("diffusion_cadence") == 2
    with pytest.raises(KeyError):
        deforum_default("no_such_key")
    assert len(DEFORUM_COMMIT) == 40
    data = key_report(load_settings(SIMPLE)).to_dict()
    assert json.loads(json.dumps(data))["warnings"] == data["warnings"]


def test_fast_enough_for_every_ui_change():
    settings = load_settings(FORGE)
    start = time.perf_counter()
    for _ in range(20):
        key_report(settings)
    assert (time.perf_counter() - start) / 20 < 0.05
