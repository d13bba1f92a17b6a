"""Fuzzing POST /deforum_wan/txt2vid: every answer is 202, 413 or a 422 naming a field the payload changed.

A valid settings object gets a few keys replaced by generated values (numbers
at and beyond every limit, wrong types, nested junk, schedule-like text with
the known code-injection strings, URLs to this machine and the cloud metadata
address); the whole request goes through the ASGI app as a client sends it.
Seeded (derandomized) so CI sees the same inputs every run. A fake resolver
answers every name with a private address, so nothing leaves the machine.
"""
from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deforum_wan.service import api
from deforum_wan.service.jobs import JobQueue

PWNED = "/tmp/deforum-wan-fuzz-pwned"  # a schedule that runs code would create this
BASE = {"prompts": {"0": "a red fox", "3": "a blue bird"}, "max_frames": 6, "W": 32, "H": 32, "fps": 15, "seed": 7,
        "batch_name": "fuzz_{timestring}", "translation_x": "0:(0)", "zoom": "0:(1.0)"}
SETTINGS_KEYS = [
    "prompts", "animation_prompts", "wan_prompts", "positive_prompts", "negative_prompts", "max_frames", "W", "H",
    "fps", "seed", "seed_behavior", "seed_iter_N", "seed_schedule", "steps", "animation_mode", "angle", "zoom",
    "translation_x", "translation_z", "rotation_3d_y", "transform_center_x", "fov_schedule", "strength_schedule",
    "cfg_scale_schedule", "shake_name", "shake_intensity", "batch_name", "resume_from_timestring",
    "resume_timestring", "init_image", "use_init", "soundtrack_path", "add_soundtrack", "diffusion_cadence",
    "wan_steps", "wan_inference_steps", "wan_resolution", "wan_max_clip_frames", "wan_frame_overlap",
    "wan_guidance_scale", "wan_flow_shift", "wan_continuity", "wan_seed",
]
OVERRIDE_KEYS = ["steps", "width", "height", "continuity", "overlap", "guidance", "flow_shift", "max_clip_frames",
                 "seed", "sensitivity", "language", "timing", "fps_tolerance", "min_clip_seconds", "color_match",
                 "device", "memory_profile", "attention", "make_video", "enhance_style_strength", "model", "i2v_model", "outdir"]
# A change to one key can make a parser name its partner (the clip length and its overlap).
RELATED = {
    "wan_max_clip_frames": {"wan_frame_overlap", "overlap"}, "wan_frame_overlap": {"wan_max_clip_frames"},
    "max_clip_frames": {"overlap", "wan_frame_overlap"}, "overlap": {"max_clip_frames", "wan_max_clip_frames"},
    "resume_from_timestring": {"resume_timestring"}, "animation_mode": {"video_init_path"},
}

ATTACKS = [
    "0:(t.\\\n__class_\uff3f.\\\n__init_\uff3f)",  # the numexpr filter bypass
    "0:(t.__class__.__init__.__globals__['__builtins__']['__import__']('os').system('id'))",
    "0:(().__class__.__base__.__subclasses__())",
    f"0:(__import__('os').system('touch {PWNED}'))",
    f"0:(t.\\\n__class_\uff3f.__init__(t).__reduce__()[0]('touch {PWNED}'))",
    "0:(sum(range(10**9)))", "0:(max(t, 1, 2, 3) ** 10**10)", "0:(lambda: 1)", "0:([x for x in 'ab'])",
    "0:(\"a\" * 10**9)", "0:(1e308*10)", "0:(sin(t)", "0:(t/0)", "max_f-1:(1), 0:(2)", "0:(where(t>3, 1, 0))",
    "`__import__('os').getcwd()`", "a cat `t.__class__`", "a `sqrt(t)` cat --neg blurry",
    "http://127.0.0.1:22/", "http://169.254.169.254/latest/meta-data/", "http://[::1]/x.png",
    "file:///etc/passwd", "../../etc/passwd", "/etc/passwd", "data:image/png;base64,AAAA",
    "100000x100000", "-16x-16", "832x480", "../../etc", "20240101000000", "None", "3D", "2D", "schedule", "File",
]
FINITE = st.floats(allow_nan=False, allow_infinity=False)
SCALARS = (st.none() | st.booleans() | st.integers(min_value=-2**64, max_value=2**64)
           | st.sampled_from([0, 1, -1, 5, 16, 4096, 4097, 10_000, 10_001, 2**31, 2**53 + 1, 10**400])
           | FINITE | st.sampled_from([1e-9, 0.5, 1e300, -0.0, float("nan"), float("inf")])
           | st.text(max_size=30) | st.sampled_from(ATTACKS))
SCHEDULE_PIECES = st.sampled_from(["t", "max_f", "s", "sin(t)", "1.5", "-2", "t**2", "t/10", "(", ")", "+", "*",
                                   "abs(", "where(t>2, 1, 0)", ",", "0", "__class__", ".", "\\\n", "'x'"])
SCHEDULES = st.builds(lambda frame, parts: f"{frame}:({''.join(parts)})",
                      st.sampled_from(["0", "2", "max_f-1", "-1", "1e9", "t"]), st.lists(SCHEDULE_PIECES, max_size=6))
VALUES = st.recursive(SCALARS | SCHEDULES, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(["0", "2", "x", "-1", "max_f"]) | st.text(max_size=4), inner,
                                        max_size=3), max_leaves=6)


GOOD_SCHEDULES = st.builds(lambda a, b, fa, fb: f"0:({a}), {fb}:({b})" if fa else f"0:({a})",
                           st.sampled_from(["0", "1.0", "sin(t/5)", "t*0.5", "-2", "1+0.002*t", "where(t>3, 1, -1)"]),
                           st.sampled_from(["3", "cos(t)", "max_f/10", "s%7", "abs(t-3)"]), st.booleans(),
                           st.sampled_from(["2", "4", "max_f-1", "\"max_f/2\""]))
PROMPTS = st.dictionaries(st.sampled_from(["0", "2", "4", "max_f-1", "-1", "1.5", "x"]),
                          st.sampled_from(["a fox", "a `1+t` cat --neg blurry", "", "x" * 30]), min_size=1, max_size=3)
INTS = st.integers(min_value=-5, max_value=5000)
# Values a real client might send for each key; mixed 1:1 with anything at all.
PLAUSIBLE = {
    **{k: GOOD_SCHEDULES for k in ("angle", "zoom", "translation_x", "translation_z", "rotation_3d_y",
                                   "transform_center_x", "fov_schedule", "strength_schedule", "cfg_scale_schedule",
                                   "seed_schedule")},
    **{k: PROMPTS for k in ("prompts", "animation_prompts", "wan_prompts")},
    **{k: INTS for k in ("max_frames", "W", "H", "seed", "seed_iter_N", "steps", "diffusion_cadence", "wan_steps",
                         "wan_inference_steps", "wan_max_clip_frames", "wan_frame_overlap", "wan_seed", "width",
                         "height", "overlap", "max_clip_frames")},
    **{k: st.floats(min_value=-1, max_value=300) for k in ("fps", "shake_intensity", "wan_guidance_scale",
                                                            "wan_flow_shift", "guidance", "flow_shift", "sensitivity",
                                                            "enhance_style_strength")},
    "seed_behavior": st.sampled_from(["iter", "fixed", "random", "ladder", "alternate", "schedule", "chaos"]),
    "animation_mode": st.sampled_from(["2D", "3D", "None", "Video Input", "Interpolation", "4D"]),
    "wan_resolution": st.sampled_from(["832x480", "480x832", "64x64", "100000x100000", "-16x-16", "x", "16x16"]),
    "continuity": st.sampled_from(["auto", "i2v", "vace", "none", "magic"]),
    "wan_continuity": st.sampled_from(["auto", "i2v", "vace", "none", "magic"]),
    "add_soundtrack": st.sampled_from(["None", "File", "Init Video"]),
    "use_init": st.booleans(), "resume_from_timestring": st.booleans(),
}


def _value(key: str):
    return st.one_of(PLAUSIBLE[key], VALUES) if key in PLAUSIBLE else VALUES


def payloads():
    settings_changes = st.lists(st.sampled_from(SETTINGS_KEYS), min_size=1, max_size=3, unique=True).flatmap(
        lambda keys: st.fixed_dictionaries({k: _value(k) for k in keys}))
    override_changes = st.lists(st.sampled_from(OVERRIDE_KEYS), max_size=2, unique=True).flatmap(
        lambda keys: st.fixed_dictionaries({k: _value(k) for k in keys}))
    return st.tuples(settings_changes, override_changes, st.booleans())


def allowed_fields(changed: dict, overrides: dict, as_list: bool) -> list[str]:
    """Fields a 422 may name: each changed key (and its partner), in either place it can live."""
    where = "deforum_settings[0]" if as_list else "deforum_settings"
    names = set(changed) | {r for k in changed for r in RELATED.get(k, ())}
    fields = [f"{where}.{k}" for k in names] + [f"options_overrides.{k}" for k in names]
    fields += [f"options_overrides.{k}" for k in overrides] + [f"{where}.{r}" for k in overrides
                                                                for r in RELATED.get(k, ())]
    fields += ["options_overrides"] if overrides else []
    if {"prompts", "animation_prompts", "wan_prompts"} & set(changed):
        fields += [f"{where}.prompts", f"{where}.animation_prompts", f"{where}.wan_prompts"]
    return fields


@pytest.fixture
def client(tmp_path, monkeypatch):
    def no_network(host, *args, **kwargs):  # every name is "on the LAN": refused before any connection
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.9.8.7", 80))]

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    queue = JobQueue(tmp_path / "jobs.sqlite3", runner=lambda job, **kw: None, outdir=tmp_path / "out",
                     default_model="vace")  # never started: accepted jobs just wait
    app = FastAPI()
    api.add_routes(app, queue, allowed_roots=[tmp_path / "out"])
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c
    queue.close()


def test_fuzzed_payloads_get_202_or_a_422_naming_a_changed_field(client):
    Path(PWNED).unlink(missing_ok=True)
    stats = SimpleNamespace(inputs=0, accepted=0, refused=0, unhandled=[], unnamed=[], slowest_accepted=0.0,
                            slowest=0.0, started=time.monotonic())

    @settings(max_examples=3000, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture])
    @given(payloads())
    def run(case):
        changed, overrides, as_list = case
        item = {**BASE, **changed}
        body = {"deforum_settings": [item] if as_list else item, "options_overrides": overrides}
        started = time.monotonic()
        raw = json.dumps(body).encode()  # NaN and Infinity as Python's json writes them: clients do send them
        r = client.post("/deforum_wan/txt2vid", content=raw, headers={"content-type": "application/json"})
        took = time.monotonic() - started
        stats.inputs += 1
        stats.slowest = max(stats.slowest, took)
        if r.status_code == 202:
            stats.accepted += 1
            stats.slowest_accepted = max(stats.slowest_accepted, took)
            return
        if r.status_code not in (413, 422):
            stats.unhandled.append((r.status_code, body, r.text[:300]))
            return
        stats.refused += 1
        allowed = allowed_fields(changed, overrides, as_list)
        for message in r.json()["errors"]:
            if not any(message.startswith(f + ":") or message.startswith(f + ".") or message.startswith(f + "[")
                       for f in allowed):
                stats.unnamed.append((message, sorted(changed), sorted(overrides)))

    run()
    seconds = time.monotonic() - stats.started
    print(f"\nfuzz: {stats.inputs} payloads in {seconds:.1f} s: {stats.accepted} accepted, {stats.refused} refused, "
          f"{len(stats.unhandled)} unhandled, {len(stats.unnamed)} not naming a changed field; slowest accepted "
          f"{stats.slowest_accepted * 1000:.0f} ms, slowest {stats.slowest * 1000:.0f} ms")
    assert stats.inputs >= 2000
    assert not Path(PWNED).exists(), "a payload ran a shell command"
    assert stats.unhandled == [], stats.unhandled[:5]
    assert stats.unnamed == [], "\n".join(map(str, stats.unnamed[:20]))


JSON = st.recursive(st.none() | st.booleans() | st.integers() | FINITE | st.text(max_size=10),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=8)
ENVELOPES = st.one_of(
    JSON,
    st.fixed_dictionaries({"deforum_settings": JSON}),
    st.fixed_dictionaries({"deforum_settings": st.lists(st.just(BASE) | JSON, max_size=3), "options_overrides": JSON}),
    st.fixed_dictionaries({"deforum_settings": st.just(BASE), "options_overrides": st.dictionaries(
        st.sampled_from(OVERRIDE_KEYS) | st.text(max_size=6), JSON, max_size=3)}),
)


def test_fuzzed_envelopes_get_an_answer_naming_the_part_that_is_wrong(client):
    """Whatever JSON arrives (not an object, settings of the wrong shape, odd overrides): never a 500."""
    answers: dict[int, int] = {}

    @settings(max_examples=600, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(ENVELOPES)
    def run(body):
        r = client.post("/deforum_wan/txt2vid", content=json.dumps(body).encode(),
                        headers={"content-type": "application/json"})
        answers[r.status_code] = answers.get(r.status_code, 0) + 1
        assert r.status_code in (202, 422), (r.status_code, body, r.text[:300])
        if r.status_code == 422:
            for message in r.json()["errors"]:
                assert message.split(":", 1)[0].split(".")[0].split("[")[0] in (
                    "body", "deforum_settings", "options_overrides"), (message, body)

    run()
    print(f"\nenvelopes: {sum(answers.values())} bodies, answers {dict(sorted(answers.items()))}")
    assert sum(answers.values()) >= 400 and answers.get(422, 0) > 0
