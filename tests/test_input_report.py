"""`inspect` and `plan` list the inputs a settings file brings: init image, Video Input, Guided Images, Parseq."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deforum_wan.core.input_report import format_input_report, input_report, source_kind
from deforum_wan.core.inspection import format_inspection, inspect_settings
from deforum_wan.core.settings import load_settings

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "deforum-settings"

EVERY_INPUT = {
    "prompts": {"0": "a fox"}, "max_frames": 30, "fps": 15, "W": 64, "H": 64, "animation_mode": "Video Input",
    "use_init": True, "init_image": "https://example.com/start.png", "strength": 0.55,
    "video_init_path": "/data/in.mp4", "use_mask_video": True, "video_mask_path": "/data/mask.mp4",
    "extract_nth_frame": 2, "extract_from_frame": 3, "extract_to_frame": 40,
    "use_looper": True, "init_images": json.dumps({"0": "a.png", "max_f/4-5": "https://example.com/b.png"}),
    "image_strength_schedule": "0:(0.6)",
    "parseq_manifest": json.dumps({"rendered_frames": [{"frame": 0}, {"frame": 1}, {"frame": 2}]}),
    "parseq_use_deltas": False,
}


def _run(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "deforum_wan", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("name", sorted(p.name for p in SHARED.glob("*.txt")))
def test_deforums_own_files_bring_no_inputs_and_say_why(name):
    """Deforum's saved files carry a default video URL and guided images, all switched off: the report says so."""
    entries = {e.name: e for e in input_report(load_settings(SHARED / name).raw)}
    assert [e.active for e in entries.values()] == [False, False, False, False]
    assert entries["init image"].summary.startswith("off (use_init is false)")
    assert entries["Video Input"].summary.startswith("off (animation_mode is ")
    assert entries["Guided Images"].summary == "off (use_looper is false)" and not entries["Guided Images"].details
    assert entries["Parseq"].summary == "off (parseq_manifest is empty)"
    text = format_inspection(inspect_settings(load_settings(SHARED / name)))
    assert "\ninputs:\n  init image     off  (use_init is false)" in text


def test_a_file_with_every_input_lists_each_as_written(tmp_path):
    from test_video_input import make_video

    # inspect and plan read the source video (its frame count is max_frames), so it must be a real one
    source, mask = make_video(tmp_path / "in.mp4", frames=45), make_video(tmp_path / "mask.mp4", frames=45, mask=True)
    path = tmp_path / "every_settings.txt"
    path.write_text(json.dumps({**EVERY_INPUT, "video_init_path": str(source), "video_mask_path": str(mask)}))
    entries = {e.name: e for e in input_report(load_settings(path).raw)}
    assert all(e.active and not e.problem for e in entries.values()), entries
    assert entries["init image"].summary == "init_image: https://example.com/start.png (URL), strength 0.55"
    assert entries["Video Input"].summary == (
        f"video_init_path: {source} (file); extract_nth_frame 2, extract_from_frame 3, extract_to_frame 40; "
        f"video_mask_path: {mask} (file)")
    assert entries["Guided Images"].details == (("0", "a.png"), ("max_f/4-5", "https://example.com/b.png"))
    assert "image_strength_schedule 0:(0.6)" in entries["Guided Images"].summary
    parseq = entries["Parseq"].summary
    assert "inline" in parseq and "3 rendered frames" in parseq and "parseq_use_deltas False" in parseq

    text = _run("inspect", str(path))
    block = text[text.index("\ninputs:\n"):]
    assert "  Guided Images  on   2 image(s)" in block and "frame max_f/4-5  https://example.com/b.png" in block
    plan_text = _run("plan", str(path), "--model", "vace")
    assert plan_text.rstrip().endswith(format_input_report(tuple(entries.values())))
    as_json = json.loads(_run("plan", str(path), "--model", "vace", "--json"))
    assert as_json["clips"] and [e["name"] for e in as_json["inputs"]] == list(entries)
    assert json.loads(_run("inspect", str(path), "--json"))["inputs"][3]["active"] is True


@pytest.mark.parametrize("changes, name, problem", [
    ({"use_init": True, "init_image": ""}, "init image", "use_init is on but init_image is empty"),
    ({"animation_mode": "Video Input", "video_init_path": ""}, "Video Input", "video_init_path is empty"),
    ({"animation_mode": "Video Input", "video_init_path": "a.mp4", "use_mask_video": True, "video_mask_path": ""},
     "Video Input", "video_mask_path is empty"),
    ({"use_looper": True, "init_images": "{0: 'a.png'"}, "Guided Images", "init_images is not valid JSON"),
    ({"use_looper": True, "init_images": "[1, 2]"}, "Guided Images", "must be an object of frame -> image, got list"),
    ({"parseq_manifest": "{\"frames\": []}"}, "Parseq", "no rendered_frames list"),
    ({"parseq_manifest": "{oops"}, "Parseq", "parseq_manifest is not valid JSON"),
])
def test_what_cannot_be_read_as_deforum_reads_it_is_named(changes, name, problem):
    entry = {e.name: e for e in input_report({"prompts": {"0": "x"}, **changes})}[name]
    assert problem in entry.problem, entry
    assert f"problem: {entry.problem}" in format_input_report((entry,))


def test_sources_by_kind_and_long_values_shown_by_their_size():
    assert [source_kind(v) for v in (None, "", "None", "https://x/a.png", "data:image/png;base64,AA", "{}", "a.png")] \
        == ["none", "none", "none", "URL", "data URL", "inline JSON", "file"]
    data_url = "data:image/png;base64," + "A" * 5000
    entry = input_report({"use_init": True, "init_image": data_url})[0]
    assert entry.summary == f"init_image: a data URL (image/png, {len(data_url)} characters), strength 0.8"
    parseq = input_report({"parseq_manifest": "https://example.com/doc.json"})[3]
    assert parseq.summary.startswith("parseq_manifest: https://example.com/doc.json (URL); parseq_use_deltas True")
    local = input_report({"parseq_manifest": "docs/manifest.json", "parseq_use_deltas": "false"})[3]
    assert "docs/manifest.json (file)" in local.summary and "parseq_use_deltas False" in local.summary
    assert input_report({"parseq_manifest": {"rendered_frames": []}})[3].summary.startswith(
        "parseq_manifest: an inline object, 0 rendered frames")


def test_any_json_values_give_a_report_never_an_exception():
    from hypothesis import given, settings, strategies as st

    values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                      max_size=3), max_leaves=8)
    keys = ["use_init", "init_image", "strength", "animation_mode", "video_init_path", "video_mask_path",
            "use_mask_video", "extract_nth_frame", "use_looper", "init_images", "parseq_manifest", "parseq_use_deltas"]

    @settings(max_examples=300, deadline=None)
    @given(st.dictionaries(st.sampled_from(keys), values | st.sampled_from(["Video Input", "{", "{\"a\": 1}", "http://x"])))
    def check(raw):
        entries = input_report(raw)
        assert [e.name for e in entries] == ["init image", "Video Input", "Guided Images", "Parseq"]
        format_input_report(entries)
        json.dumps([e.to_dict() for e in entries])

    check()
