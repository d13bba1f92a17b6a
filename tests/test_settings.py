"""Deforum settings files load, keep every key, and save back losslessly."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from deforum_wan.core.settings import (
    DEFAULT_ZOOM,
    MAX_PROMPT_CHARS,
    DeforumSettings,
    SettingsError,
    load_settings,
    loads_settings,
    settings_from_dict,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "deforum-settings"
FILES = sorted(SHARED.glob("*.txt"))


def test_shared_files_exist():
    assert len(FILES) == 3, f"expected the three shared Deforum settings files in {SHARED}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_shared_file_round_trips_exactly(path: Path):
    original = json.loads(path.read_text(encoding="utf-8"))
    settings = load_settings(path)
    saved = settings.to_json()
    # Same keys, same order, same values: Deforum loads what it saved.
    assert json.loads(saved) == original
    assert list(json.loads(saved)) == list(original)
    assert loads_settings(saved) == settings
    assert saved == json.dumps(original, indent=4, ensure_ascii=False)


def test_a1111_default_values():
    s = load_settings(SHARED / "a1111-deforum-default.txt")
    assert (s.W, s.H, s.fps, s.max_frames) == (512, 512, 15, 120)
    assert s.animation_mode == "3D"
    assert s.translation_z == "0: (1.75)"
    assert s.negative_prompts == "nsfw, nude"
    assert dict(s.prompts)["60"].strip().startswith("a beautiful coconut --neg")
    assert s.soundtrack_path.startswith("https://")
    assert s.resume_timestring == "20230129210106" and s.resume_from_timestring is False


def test_forge_default_has_shakify_and_wan_keys():
    s = load_settings(SHARED / "forge-deforum-default.txt")
    assert (s.W, s.H, s.fps, s.max_frames) == (1280, 720, 60, 334)
    assert s.shake_name == "INVESTIGATION" and s.shake_intensity == 1.0 and s.shake_speed == 1.0
    assert len(s.prompts) == 18
    assert s.wan_value("inference_steps") == 20
    assert s.wan_value("wan_resolution") == "864x480"


def test_old_style_wrapper_keys():
    s = load_settings(SHARED / "a1111-deforum-test-simple.txt")
    assert s.positive_prompts == "" and s.negative_prompts == ""
    s = settings_from_dict({"prompts": {"0": "x"}, "animation_prompts_positive": "pos", "animation_prompts_negative": "neg"})
    assert (s.positive_prompts, s.negative_prompts) == ("pos", "neg")


def test_unknown_keys_kept_and_changes_written():
    data = {"prompts": {"0": "a cat"}, "W": 640, "some_future_key": [1, {"a": "ü"}], "wan_steps": 4}
    s = settings_from_dict(data)
    changed = replace(s, W=832).with_wan(steps=8, guidance=4.5)
    out = changed.to_dict()
    assert out["some_future_key"] == [1, {"a": "ü"}]
    assert out["W"] == 832
    assert out["wan_steps"] == 8 and out["wan_guidance"] == 4.5
    assert "ü" in changed.to_json()  # ensure_ascii=False, as Deforum writes


def test_animation_prompts_as_json_text_and_key_name_kept():
    s = settings_from_dict({"animation_prompts": '{"0": "a", "10": "b"}', "max_frames": 20})
    assert s.prompts == (("0", "a"), ("10", "b"))
    assert s.prompts_key == "animation_prompts"


def test_missing_keys_take_deforum_defaults():
    s = settings_from_dict({"prompts": {"0": "a"}})
    d = DeforumSettings()
    assert (s.W, s.H, s.fps, s.max_frames, s.seed_behavior) == (d.W, d.H, 15, 120, "iter")
    assert s.zoom == "0: (1.0025+0.002*sin(1.25*3.14*t/30))"


def test_json_string_and_dict_sources(tmp_path: Path):
    text = json.dumps({"prompts": {"0": "a"}, "max_frames": 9})
    assert load_settings(text).max_frames == 9
    (tmp_path / "s.json").write_text(text)
    assert load_settings(tmp_path / "s.json").max_frames == 9
    assert load_settings({"prompts": {"0": "a"}, "max_frames": 9}).max_frames == 9


@pytest.mark.parametrize(
    "data, key",
    [
        ({"prompts": {"0": "a"}, "W": "wide"}, "W"),
        ({"prompts": {"0": "a"}, "W": True}, "W"),
        ({"prompts": {"0": "a"}, "H": 10.5}, "H"),
        ({"prompts": {"0": "a"}, "max_frames": -3}, "max_frames"),
        ({"prompts": {"0": "a"}, "max_frames": 10**9}, "max_frames"),
        ({"prompts": {"0": "a"}, "fps": 0}, "fps"),
        ({"prompts": {"0": "a"}, "fps": float("nan")}, "fps"),
        ({"prompts": {"0": "a"}, "seed_behavior": "sometimes"}, "seed_behavior"),
        ({"prompts": {"0": "a"}, "animation_mode": "4D"}, "animation_mode"),
        ({"prompts": {"0": "a"}, "zoom": [1, 2]}, "zoom"),
        ({"prompts": {"0": "a"}, "translation_x": None}, "translation_x"),
        ({"prompts": {}}, "prompts"),
        ({"prompts": ["a"]}, "prompts"),
        ({"prompts": {"0": 5}}, "prompts['0']"),
        ({"animation_prompts": "{not json"}, "animation_prompts"),
        ({"prompts": {"0": "a"}, "use_init": "perhaps"}, "use_init"),
        ({"prompts": {"0": "a"}, "fps": 1e-9}, "fps"),
        ({"prompts": {"0": "a"}, "fps": "Infinity"}, "fps"),
        ({"prompts": {"0": "a"}, "fps": 1e400}, "fps"),
        ({"prompts": {"0": "a"}, "resume_timestring": "../../etc"}, "resume_timestring"),
        ({"prompts": {"0": "a"}, "resume_timestring": "2023012921010"}, "resume_timestring"),
        ({"prompts": {"0": "a" * (MAX_PROMPT_CHARS + 1)}}, "prompts['0']"),
        ({"animation_prompts": {"12": "a" * (MAX_PROMPT_CHARS + 1)}}, "animation_prompts['12']"),
        ({"prompts": {"0": "a"}, "negative_prompts": "b" * (MAX_PROMPT_CHARS + 1)}, "negative_prompts"),
        ({"prompts": {"0": "a"}, "animation_prompts_positive": "b" * (MAX_PROMPT_CHARS + 1)}, "positive_prompts"),
    ],
)
def test_bad_values_name_the_key(data, key):
    with pytest.raises(SettingsError) as err:
        settings_from_dict(data)
    assert err.value.key == key
    assert str(err.value).startswith(key)
    assert "\n" not in str(err.value)


def test_bad_files(tmp_path: Path):
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text('{"W": 512,,}')
    with pytest.raises(SettingsError, match=r"bad.txt: not valid JSON.*line 1"):
        load_settings(bad)
    with pytest.raises(SettingsError, match="JSON object"):
        loads_settings("[1, 2]")


def test_prompt_at_the_limit_and_real_timestrings_load():
    s = settings_from_dict({"prompts": {"0": "a" * MAX_PROMPT_CHARS}, "resume_timestring": "20240101120000"})
    assert len(s.prompts[0][1]) == MAX_PROMPT_CHARS and s.resume_timestring == "20240101120000"
    assert settings_from_dict({"prompts": {"0": "a"}, "resume_timestring": ""}).resume_timestring == ""


def test_a_parseq_manifest_as_the_settings_is_deforums_defaults_plus_it(tmp_path: Path):
    manifest = {
        "meta": {"generated_by": "sd_parseq", "version": "0.1.94"},
        "prompts": {"format": "v2", "enabled": True, "commonPrompt": {"positive": "", "negative": ""}},
        "keyframes": [{"frame": 0, "zoom": 1}],
        "rendered_frames": [{"frame": 0, "zoom": 1.0}],
    }
    path = tmp_path / "parseq.json"
    path.write_text(json.dumps(manifest))
    s = load_settings(path)  # Deforum's defaults plus the manifest (core/parseq.py; more in test_parseq.py)
    # deltas are on by default and there is no zoom_delta: Deforum keeps its own zoom schedule then
    assert s.max_frames == 1 and s.parseq is not None and s.parseq.kept == ("zoom",) and s.zoom == DEFAULT_ZOOM
    assert s.prompts == DeforumSettings().prompts  # the manifest's own "prompts" are Parseq's, not Deforum's


@pytest.mark.parametrize("key", ["angle", "translation_x", "shake_intensity", "fps"])
def test_a_number_too_large_for_a_float_names_its_key(key):
    """JSON allows whole numbers of any length; float() of one overflows, which must not escape as a traceback."""
    with pytest.raises(SettingsError, match=rf"^{key}: the number is too large \(401 digits\)"):
        settings_from_dict({key: 10**400})
