"""Check the /deforum_wan/ API under a web UI host's own fastapi/pydantic (A1111: pydantic 1, Forge: pydantic 2).

Run with a host env's python, e.g. `.venv-a1111/bin/python tests/host_api_check.py`.
Self-contained: an injected fake runner stands in for the renderer (no torch),
fastapi's TestClient sends the requests. Exits non-zero on the first failure.
"""
from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import ModuleType, SimpleNamespace

import fastapi
import pydantic
from fastapi import FastAPI
from fastapi.testclient import TestClient

from deforum_wan.service import api, jobs
from deforum_wan.webui import host

SETTINGS = {"prompts": {"0": "a red fox", "3": "a blue bird"}, "max_frames": 6, "W": 32, "H": 32, "fps": 16,
            "seed": 1, "translation_x": "0:(2*sin(t/10))", "batch_name": "host_{timestring}"}


def fake_runner(job, *, on_event, cancel=None, config=None):
    """Emits the worker's events and writes nothing heavy: enough to drive the queue."""
    folder = Path(job["outdir"]) / "host_20240101000000"
    folder.mkdir(parents=True, exist_ok=True)
    video = folder / "20240101000000.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42")
    on_event({"type": "start", "folder": str(folder), "timestring": "20240101000000", "clips": 1, "frames_total": 6,
              "frames_on_disk": 0, "resumed": False})
    on_event({"type": "step", "clip": 0, "clips": 1, "step": 1, "steps": 1, "frames_written": 3, "frames_total": 6})
    on_event({"type": "done", "folder": str(folder), "timestring": "20240101000000", "video": str(video)})
    return SimpleNamespace(status="done", returncode=0, folder=str(folder), timestring="20240101000000",
                           video=str(video), frames_on_disk=6, frames_total=6, error=None, last_event=None)


def check(condition: bool, what: str, response=None) -> None:
    if not condition:
        detail = f" -> {response.status_code} {response.text[:500]}" if response is not None else ""
        print(f"FAIL: {what}{detail}")
        sys.exit(1)
    print(f"ok: {what}")


def main() -> int:
    print(f"fastapi {fastapi.__version__}, pydantic {pydantic.VERSION}")
    tmp = Path(tempfile.mkdtemp(prefix="deforum-wan-host-"))
    queue = jobs.JobQueue(tmp / "jobs.sqlite3", runner=fake_runner, outdir=tmp / "out", default_model="vace").start()
    app = FastAPI()
    api.add_routes(app, queue)
    client = TestClient(app)
    try:
        r = client.post("/deforum_wan/txt2vid", json={"deforum_settings": SETTINGS, "options_overrides": {"steps": 2}})
        check(r.status_code == 202 and r.json()["job_ids"], "valid settings are accepted", r)
        job_id, batch_id = r.json()["job_ids"][0], r.json()["batch_id"]
        check(queue.wait([job_id], 30), "the job finishes")
        r = client.get(f"/deforum_wan/jobs/{job_id}")
        body = r.json()
        check(r.status_code == 200 and body["status"] == "SUCCEEDED" and body["phase"] == "DONE", "job status", r)
        check(body["outdir"].endswith("host_20240101000000") and body["timestring"] == "20240101000000", "outdir", r)
        r = client.get(f"/deforum_wan/jobs/{job_id}/video")
        check(r.status_code == 200 and r.headers["content-type"] == "video/mp4", "video download", r)
        r = client.get(f"/deforum_wan/batches/{batch_id}")
        check(r.status_code == 200 and [j["id"] for j in r.json()] == [job_id], "batch listing", r)
        r = client.get("/deforum_wan/jobs")
        check(r.status_code == 200 and job_id in r.json(), "job listing", r)
        r = client.get("/deforum_wan/models")
        check(r.status_code == 200 and "models" in r.json(), "models listing", r)
        for path, method in (("/deforum_wan/jobs/nope", "get"), ("/deforum_wan/jobs/nope", "delete"),
                             ("/deforum_wan/batches/nope", "get")):
            r = getattr(client, method)(path)
            check(r.status_code == 404, f"{method.upper()} {path} is 404", r)

        bad = [
            ({"deforum_settings": dict(SETTINGS, translation_x="0:(sin(t")}, "deforum_settings.translation_x"),
            ({"deforum_settings": [SETTINGS, dict(SETTINGS, max_frames=-5)]}, "deforum_settings[1].max_frames"),
            ({"deforum_settings": dict(SETTINGS, init_image="/etc/passwd")}, "deforum_settings.init_image"),
            ({"deforum_settings": dict(SETTINGS, batch_name="../x")}, "deforum_settings.batch_name"),
            ({"deforum_settings": SETTINGS, "options_overrides": {"steps": "many"}}, "options_overrides.steps"),
            ({"deforum_settings": "text"}, "deforum_settings"),
            ({"options_overrides": {}}, "deforum_settings"),
        ]
        for payload, field in bad:
            r = client.post("/deforum_wan/txt2vid", json=payload)
            check(r.status_code == 422 and field in r.json()["message"], f"422 names {field}", r)
        r = client.post("/deforum_wan/txt2vid", content=b'{"deforum_settings": {"prompts": {"0": "x"}, "zoom": NaN}}',
                        headers={"content-type": "application/json"}) if _has_content_kw() else client.post(
            "/deforum_wan/txt2vid", data=b'{"deforum_settings": {"prompts": {"0": "x"}, "zoom": NaN}}',
            headers={"content-type": "application/json"})
        check(r.status_code == 422 and "zoom" in r.json()["message"], "NaN is refused", r)
        big = json.dumps({"deforum_settings": dict(SETTINGS, pad="x" * (api.MAX_BODY_BYTES + 10))})
        r = client.post("/deforum_wan/txt2vid", content=big) if _has_content_kw() else client.post(
            "/deforum_wan/txt2vid", data=big)
        check(r.status_code == 413, "an oversized body is 413", r)
        # The request model works under this pydantic, and documents the route.
        try:
            api.validate_model(api.Txt2VidRequest, {"deforum_settings": [SETTINGS, 5]})
            check(False, "the request model refuses a settings entry that is not an object")
        except api.ApiError as exc:
            check([tuple(loc) for loc, _ in exc.errors] == [("deforum_settings", 1)], "the model names the entry")
        r = client.get("/openapi.json")
        body = r.json()["paths"]["/deforum_wan/txt2vid"]["post"]["requestBody"]["content"]["application/json"]
        check("deforum_settings" in json.dumps(body["schema"]), "the request schema is in /openapi.json", r)

        gate = threading.Event()
        blocked = jobs.JobQueue(tmp / "jobs2.sqlite3", runner=lambda job, **kw: gate.wait(30) and fake_runner(job, **kw),
                                outdir=tmp / "out2", default_model="vace")  # not started: jobs stay queued
        app2 = FastAPI()
        api.add_routes(app2, blocked)
        client2 = TestClient(app2)
        r = client2.post("/deforum_wan/txt2vid", json={"deforum_settings": [SETTINGS, SETTINGS]})
        batch2 = r.json()["batch_id"]
        r = client2.delete(f"/deforum_wan/batches/{batch2}")
        check(r.status_code == 200 and len(r.json()["ids"]) == 2, "a queued batch is cancelled", r)
        gate.set()
        blocked.close()

        check(_flag_gates_routes(tmp), "the web-UI flag gates the routes")
        _check_auth(tmp)
        r = client.post("/deforum_wan/txt2vid", json={"deforum_settings": dict(
            SETTINGS, use_init=True, init_image="http://127.0.0.1:9/x.png")})
        check(r.status_code == 422 and "init_image: cannot use" in r.json()["message"]
              and "loopback" in r.json()["message"], "a URL to this machine is refused", r)
        r = client.post(f"/deforum_wan/jobs/{job_id}/retry")
        check(r.status_code == 409 and "already succeeded" in r.json()["message"], "a finished job is not retried", r)
    finally:
        queue.close()
        jobs.close_queue()
    print("host API check passed")
    return 0


def _has_content_kw() -> bool:
    """TestClient is httpx-based (content=) from starlette 0.21; older ones take data=."""
    import inspect

    return "content" in inspect.signature(TestClient.post).parameters


def _flag_gates_routes(tmp: Path) -> bool:
    import os

    os.environ["DEFORUM_WAN_JOBS_DB"] = str(tmp / "webui.sqlite3")
    modules = ModuleType("modules")
    shared = ModuleType("modules.shared")
    shared.opts = SimpleNamespace(outdir_samples=str(tmp / "webui-out"), data={})
    modules.shared = shared
    sys.modules["modules"], sys.modules["modules.shared"] = modules, shared
    shared.cmd_opts = SimpleNamespace(api=False, deforum_wan_api=False)
    off = FastAPI()
    host.mount_api(None, off)
    shared.cmd_opts = SimpleNamespace(api=False, deforum_wan_api=True)
    on = FastAPI()
    host.mount_api(None, on)
    return not api.has_routes(off) and api.has_routes(on) and TestClient(on).get("/deforum_wan/jobs").status_code == 200


def _basic(user: str, password: str) -> dict:
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _check_auth(tmp: Path) -> None:
    """--api-auth guards our routes as it guards /sdapi, under this host's fastapi; the standalone token gate too."""
    shared = sys.modules["modules.shared"]
    shared.cmd_opts = SimpleNamespace(api=True, deforum_wan_api=False, api_auth="alice:s3cret,bob:hunter2")
    jobs.close_queue()
    app = FastAPI()
    host.mount_api(None, app)
    client = TestClient(app)
    for method, path in (("get", "/deforum_wan/jobs"), ("post", "/deforum_wan/txt2vid"),
                         ("delete", "/deforum_wan/jobs/x"), ("post", "/deforum_wan/jobs/x/retry")):
        r = getattr(client, method)(path)
        check(r.status_code == 401 and r.headers.get("www-authenticate") == "Basic", f"{method} {path} needs auth", r)
        r = getattr(client, method)(path, headers=_basic("alice", "hunter2"))
        check(r.status_code == 401, f"{method} {path} refuses a wrong password", r)
    r = client.get("/deforum_wan/jobs", headers=_basic("bob", "hunter2"))
    check(r.status_code == 200, "--api-auth credentials open the routes", r)
    shared.cmd_opts = SimpleNamespace(api=True, deforum_wan_api=False)
    jobs.close_queue()

    token = "s" * 24
    gated = FastAPI()
    api.add_routes(gated, jobs.JobQueue(tmp / "gate.sqlite3", outdir=tmp / "gate", default_model="vace"))
    api.guard_standalone(gated, token)
    client = TestClient(gated)
    check(client.get("/deforum_wan/jobs").status_code == 401, "the standalone gate refuses without the token")
    r = client.get("/deforum_wan/jobs", headers={"Authorization": f"Bearer {token}"})
    check(r.status_code == 200, "the standalone gate opens with the Bearer token", r)
    r = client.get("/deforum_wan/jobs", headers=_basic("me", token))
    check(r.status_code == 200, "the standalone gate opens with the token as a browser password", r)


if __name__ == "__main__":
    start = time.monotonic()
    code = main()
    print(f"{time.monotonic() - start:.1f} s")
    sys.exit(code)
