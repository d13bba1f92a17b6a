"""`deforum-wan inspect` and `plan` on real Deforum files, and their error messages."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "deforum-settings"
FILES = sorted(SHARED.glob("*.txt"))


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deforum_wan", *args], capture_output=True, text=True)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_inspect_json(path: Path):
    out = run("inspect", str(path), "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    original = json.loads(path.read_text())
    assert data["max_frames"] == original["max_frames"] and data["fps"] == original["fps"]
    assert abs(data["seconds"] - original["max_frames"] / original["fps"]) < 1e-9
    assert data["prompts"][0]["start"] == 0 and data["prompts"][-1]["end"] == original["max_frames"]
    stats = {s["key"]: s for s in data["schedules"]}
    assert stats["fov_schedule"]["minimum"] == stats["fov_schedule"]["maximum"] == 70
    # Every covered Deforum key is reported with its status; each ignored change has its warning.
    entries = {e["key"]: e for e in data["keys"]["entries"]}
    assert {"strength_schedule", "color_coherence", "noise_schedule", "cn_1_enabled", "parseq_manifest"} <= set(entries)
    assert {e["status"] for e in entries.values()} <= {"used", "mapped", "ignored"}
    ignored = [k for k, e in entries.items() if e["status"] == "ignored" and e["changed"]]
    assert len(data["keys"]["warnings"]) == len(ignored)


def test_inspect_text_a1111_default():
    out = run("inspect", str(SHARED / "a1111-deforum-default.txt"))
    assert out.returncode == 0, out.stderr
    assert "frames 120 at 15 fps = 8.00 s, 512x512, 3D mode" in out.stdout
    assert "60-89" in out.stdout and "a beautiful coconut" in out.stdout
    assert "Deforum keys: 14 used, 17 mapped" in out.stdout  # init_images; use_looper, image_strength, strength
    assert re.search(r"^   color_coherence +'LAB' +each clip matched to frame 0", out.stdout, re.M)
    zoom = next(line for line in out.stdout.splitlines() if line.strip().startswith("zoom"))
    assert zoom.split()[1:] and float(zoom.split()[1]) < 1.0025 < float(zoom.split()[2])


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_plan_prints_every_clip(path: Path):
    out = run("plan", str(path), "--model", "vace", "--seed", "7", "--json")
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert sum(len(c["sources"]) for c in plan["clips"]) == json.loads(path.read_text())["max_frames"]
    table = run("plan", str(path), "--model", "vace", "--seed", "7")
    assert table.returncode == 0 and f"{len(plan['clips'])} clips" in table.stdout


def test_forge_plan_ratio():
    out = run("plan", str(SHARED / "forge-deforum-default.txt"), "--model", "t2v", "--seed", "1", "--json")
    metrics = json.loads(out.stdout)["metrics"]
    assert metrics["output_frames"] == 334 and metrics["timeline_frames"] == 90
    assert metrics["generated_frames"] / metrics["timeline_frames"] <= 1.25  # short prompts merged (2 s default)
    cut = run("plan", str(SHARED / "forge-deforum-default.txt"), "--model", "t2v", "--seed", "1", "--json",
              "--min-clip-seconds", "0")
    assert json.loads(cut.stdout)["metrics"]["clip_count"] == 18  # a clip per prompt


def test_errors_are_one_line_and_name_the_key(tmp_path: Path):
    bad = json.loads((SHARED / "a1111-deforum-test-simple.txt").read_text())
    bad["translation_x"] = "0:(0), 10:(sin(t)"
    path = tmp_path / "bad.txt"
    path.write_text(json.dumps(bad))
    out = run("inspect", str(path))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "translation_x" in out.stderr and "Traceback" not in out.stderr
    missing = run("plan", str(tmp_path / "nope.txt"))
    assert missing.returncode == 2 and "not found" in missing.stderr
    model = run("plan", str(path), "--model", "no-such-model")
    assert model.returncode == 2 and "no-such-model" in model.stderr


def _settings_file(tmp_path: Path, **changes) -> Path:
    data = json.loads((SHARED / "a1111-deforum-test-simple.txt").read_text())
    data.update(changes)
    path = tmp_path / "settings.txt"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"wan_steps": 1e400}, "steps: must be between"),
        ({"wan_resolution": "-16x-16"}, "wan_resolution: expected WIDTHxHEIGHT"),
        ({"diffusion_cadence": "Infinity"}, "diffusion_cadence: expected a whole number"),
        ({"fps": 1e-9}, "fps: must be at least 1"),
        ({"resume_timestring": "../../etc"}, "resume_timestring: expected the 14-digit timestring"),
    ],
)
def test_bad_numbers_and_names_are_one_line_errors(tmp_path: Path, changes, words):
    out = run("plan", str(_settings_file(tmp_path, **changes)), "--seed", "1")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1 and words in out.stderr


def test_render_into_an_unwritable_folder_is_a_one_line_error(tmp_path: Path):
    from conftest import require_render_stack

    require_render_stack()
    from deforum_wan.renderer.tiny import make_tiny_models

    model = make_tiny_models(tmp_path / "models", ["t2v"])["t2v"]
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the output folder should go")
    out = run("render", str(_settings_file(tmp_path)), "--model", str(model), "--outdir", str(blocker / "out"),
              "--steps", "1", "--width", "32", "--height", "32", "--device", "cpu")
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1
    assert out.stderr.startswith("error: ") and str(blocker) in out.stderr


@pytest.mark.parametrize(
    "failure, words",
    [
        ("disk-full", "No space left on device"),
        ("render-error", "cannot resume 20240101120000"),
    ],
)
def test_render_failures_are_one_line_errors(tmp_path: Path, monkeypatch, capsys, failure, words):
    import errno

    from deforum_wan import cli
    from deforum_wan.renderer import render

    def failing_render(job, on_event=None):
        if failure == "disk-full":
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "frame.png"))
        raise render.RenderError("cannot resume 20240101120000: the settings or options changed since it started")

    monkeypatch.setattr(render, "render", failing_render)
    code = cli.main(["render", str(_settings_file(tmp_path)), "--model", "t2v", "--outdir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and words in err and err.count("\n") == 1


def test_plan_shows_model_correct_defaults_and_the_user_can_override_them(tmp_path: Path):
    path = str(SHARED / "a1111-deforum-default.txt")
    out = run("plan", path, "--model", "t2v", "--seed", "1")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("t2v at 16 fps -> 120 frames at 15 fps (8.00 s), 624x624")
    assert re.match(r"size +624x624 +W/H 512x512 mapped to the nearest size Wan2.1 T2V was trained", lines[2])
    assert re.match(r"steps +50 +official: Wan2.1 generate.py", lines[3])
    assert re.match(r"flow shift +5 +official: Wan2.1 generate.py", lines[5])
    out = run("plan", path, "--model", "a14b-t2v", "--seed", "1", "--exact-size", "--guidance-2", "2.5",
              "--flow-shift", "7", "--json")
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert (plan["width"], plan["height"]) == (512, 512) and any("exact_size" in w for w in plan["warnings"])
    clip = plan["clips"][0]
    assert (clip["guidance"], clip["guidance_2"], clip["flow_shift"], clip["steps"]) == (4.0, 2.5, 7.0, 40)
    assert {c["name"]: c["source"] for c in plan["choices"]}["guidance_2"] == "option: guidance_2"


def test_an_image_model_without_an_init_image_fails_at_plan_time(tmp_path: Path):
    out = run("plan", str(SHARED / "a1111-deforum-default.txt"), "--model", "a14b-i2v", "--seed", "1")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert out.stderr.startswith("error: init_image: Wan2.2 I2V-A14B (a14b-i2v) cannot start a clip from text")


# ---------------------------------------------------------------- Parseq manifests (core/parseq.py)


def test_plan_and_inspect_show_what_a_parseq_manifest_drives(tmp_path: Path):
    from test_parseq import build_manifest

    (tmp_path / "parseq.json").write_text(json.dumps(build_manifest()))
    out = run("plan", str(tmp_path / "parseq.json"), "--model", "vace", "--seed", "3")  # the manifest as the file
    assert out.returncode == 0, out.stderr
    assert re.search(r"^parseq +24 frames +Parseq drives the render: 24 frames, its frame count, 16 fps from the "
                     r"manifest, deltas on; manages prompts, angle, zoom", out.stdout, re.M), out.stdout
    data = json.loads(run("inspect", str(tmp_path / "parseq.json"), "--json").stdout)
    assert data["max_frames"] == 24 and data["fps"] == 16 and data["parseq"].startswith("Parseq drives the render")
    assert {e["key"]: e for e in data["keys"]["entries"]}["parseq_manifest"]["status"] == "used"
    settings = tmp_path / "settings.txt"  # a settings file naming the manifest beside it
    settings.write_text(json.dumps({"prompts": {"0": "a cat"}, "parseq_manifest": "parseq.json",
                                    "parseq_use_deltas": False, "max_frames": 40, "fps": 8}))
    out = run("inspect", str(settings))
    assert out.returncode == 0, out.stderr
    assert "frames 24 at 16 fps" in out.stdout and "Parseq (parseq.json) drives the render" in out.stdout
    assert "deltas off" in out.stdout and "a red fox in the snow" in out.stdout


def test_bad_parseq_manifests_are_one_line_errors(tmp_path: Path):
    from test_parseq import build_manifest

    manifest = build_manifest()
    manifest["rendered_frames"][5]["strength"] = "high"
    (tmp_path / "bad.json").write_text(json.dumps(manifest))
    (tmp_path / "missing.txt").write_text(json.dumps({"prompts": {"0": "a"}, "parseq_manifest": "nope.json"}))
    (tmp_path / "notjson.txt").write_text(json.dumps({"prompts": {"0": "a"}, "parseq_manifest": "{nope"}))
    for name, words in (("bad.json", "parseq_manifest: rendered_frames[5].strength (frame 5): expected a number, "
                                     "got 'high'"),
                        ("missing.txt", "parseq_manifest: 'nope.json' is neither the manifest's JSON"),
                        ("notjson.txt", "parseq_manifest: the manifest is not valid JSON")):
        for command in ("plan", "inspect", "render"):
            out = run(command, str(tmp_path / name), *(["--model", "t2v"] if command != "inspect" else []),
                      *(["--outdir", str(tmp_path / "out")] if command == "render" else []))
            assert out.returncode == 2 and out.stderr.count("\n") == 1, (name, command, out.stderr)
            assert out.stderr.startswith(f"error: {words}"), (name, command, out.stderr)
    assert not (tmp_path / "out").exists()


def test_a_parseq_manifest_url_is_fetched_under_the_url_rules(tmp_path: Path, monkeypatch, capsys):
    from netfixtures import LocalServer
    from test_parseq import build_manifest

    from deforum_wan import cli
    from deforum_wan.renderer import fetch

    with LocalServer() as server:
        server.routes.add("/m.json", json.dumps(build_manifest()).encode(), "application/json")
        settings = tmp_path / "settings.txt"
        settings.write_text(json.dumps({"prompts": {"0": "a"}, "parseq_manifest": server.url("/m.json")}))
        assert cli.main(["plan", str(settings), "--model", "vace"]) == 2  # this machine: refused before connecting
        assert "parseq_manifest: cannot use" in capsys.readouterr().err and server.routes.seen == []
        real_fetch = fetch.fetch
        monkeypatch.setattr(fetch, "fetch", lambda url, kind, policy=None: real_fetch(
            url, kind, fetch.FetchPolicy(allow_loopback=True)))
        assert cli.main(["plan", str(settings), "--model", "vace", "--json"]) == 0
        plan = json.loads(capsys.readouterr().out)
        assert server.routes.seen == ["/m.json"] and plan["max_frames"] == 24
        assert next(c for c in plan["choices"] if c["name"] == "parseq")["source"].startswith(
            f"Parseq ({server.url('/m.json')}) drives the render")


def _guided_file(tmp_path: Path, images: dict, **extra) -> str:
    data = {"prompts": {"0": "a red fox"}, "max_frames": 12, "fps": 16, "W": 32, "H": 32, "seed": 1,
            "animation_mode": "2D", "use_looper": True, "init_images": json.dumps(images), **extra}
    path = tmp_path / "guided.txt"
    path.write_text(json.dumps(data))
    return str(path)


def test_bad_guided_and_init_images_are_one_line_errors_naming_the_key(tiny_models, tmp_path: Path):
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    svg = tmp_path / "vector.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>')
    out = run("plan", _guided_file(tmp_path, {"0": "a.png", "max_f/": "b.png"}), "--model", "vace", "--seed", "1")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert out.stderr.startswith('error: init_images["max_f/"]: cannot evaluate "max_f/"'), out.stderr
    cases = [
        ({"init_images": {"0": str(tmp_path / "missing.png")}}, 'init_images["0"]', "No such file"),
        ({"init_images": {"0": "http://127.0.0.1:9/x.png"}}, 'init_images["0"]', "loopback"),
        ({"init_images": {"5": str(text)}}, 'init_images["5"]', "not an image PIL can read"),
        ({"init_images": {"0": str(svg)}, "use_looper": False, "use_init": True, "init_image": str(svg)}, "init_image",
         "not an image PIL can read"),
    ]
    for extra, field, words in cases:
        images = extra.pop("init_images")
        out = run("render", _guided_file(tmp_path, images, **extra), "--model", str(tiny_models["vace"]),
                  "--outdir", str(tmp_path / "out"), "--steps", "1")
        error = out.stderr.strip().splitlines()[-1]  # after the note that the failed start was cleaned up
        assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
        assert error.startswith(f"error: {field} '") and words in error, out.stderr
    assert not list((tmp_path / "out").rglob("*.png"))
