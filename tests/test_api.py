"""The /deforum_wan/ API served by uvicorn on 127.0.0.1: real renders, load, cancel, restart, bad input, the flag."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType, SimpleNamespace

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI

from deforum_wan.service import api, jobs
from deforum_wan.webui import host
from deforum_wan.renderer import outputs
from deforum_wan.renderer.fetch import FetchPolicy
from deforum_wan.service.jobs import JobQueue

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "deforum-settings"
POLL_LIMIT = 3000  # polls of 0.1 s: a bound on every loop, never an assertion about speed
SMALL = {"prompts": {"0": "a red fox", "2": "a blue bird"}, "max_frames": 4, "W": 32, "H": 32, "fps": 16, "seed": 3,
         "batch_name": "api_{timestring}"}


class LiveServer:
    """uvicorn on 127.0.0.1 with a random free port, in a thread."""

    def __init__(self, app: FastAPI):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.server.install_signal_handlers = lambda: None  # older uvicorn; newer skips them off the main thread
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        for _ in range(POLL_LIMIT):
            if self.server.started:
                break
            time.sleep(0.01)
        assert self.server.started, "uvicorn did not start"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


def serve(queue: JobQueue, **kwargs) -> LiveServer:
    app = FastAPI()
    api.add_routes(app, queue, **kwargs)
    return LiveServer(app)


def poll(client: httpx.Client, job_id: str, until, limit: int = POLL_LIMIT) -> dict:
    """GET the job until `until(record)`; returns the last record."""
    record: dict = {}
    for _ in range(limit):
        record = client.get(f"/deforum_wan/jobs/{job_id}").json()
        if until(record):
            return record
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached the expected state: {record}")


def finished(record: dict) -> bool:
    return record.get("status") != "ACCEPTED"


def real_runner():
    from deforum_wan.service.bridge import run_job

    return run_job


# ---------------------------------------------------------------- end to end with the real worker


@pytest.fixture(scope="module")
def models(tiny_models):
    return tiny_models


def shortened(path: Path, frames: int = 5) -> dict:
    data = json.loads(path.read_text(encoding="utf-8"))
    data["max_frames"] = frames
    data["add_soundtrack"] = "None"  # loopback only: never fetch the sample's soundtrack URL
    return data


def test_every_sample_settings_file_renders_through_the_api(models, tmp_path):
    files = sorted(SHARED.glob("*.txt"))
    assert len(files) >= 3
    queue = JobQueue(tmp_path / "jobs.sqlite3", runner=real_runner(), outdir=tmp_path / "out",
                     models_dir=models["vace"].parent).start()
    overrides = {"model": str(models["vace"]), "steps": 1, "width": 32, "height": 32}
    try:
        with serve(queue) as server, httpx.Client(base_url=server.url, timeout=60) as client:
            submitted = []
            for path in files:
                r = client.post("/deforum_wan/txt2vid", json={"deforum_settings": shortened(path),
                                                               "options_overrides": overrides})
                assert r.status_code == 202, (path.name, r.text)
                body = r.json()
                assert body["message"] and body["batch_id"] and len(body["job_ids"]) == 1
                submitted.append((path, body["job_ids"][0]))
            for path, job_id in submitted:
                record = poll(client, job_id, finished)
                assert record["status"] == "SUCCEEDED", (path.name, record)
                assert record["phase"] == "DONE" and record["error_type"] == "NONE" and record["phase_progress"] == 1
                import torch  # the record names what the worker really ran on

                assert record["worker"]["torch"] == torch.__version__ and record["worker"]["device"] == "cpu"
                assert record["worker"]["diffusers"] and record["worker"]["executable"]
                folder, ts = Path(record["outdir"]), record["timestring"]
                assert folder.parent == (tmp_path / "out").resolve()
                assert outputs.existing_frames(folder, ts) == list(range(5))
                assert Path(record["video"]) == outputs.video_file(folder, ts) and Path(record["video"]).is_file()
                assert outputs.settings_file(folder, ts).is_file()
                timings = record["timings"]
                assert timings["created_at"] <= timings["started_at"] <= timings["finished_at"]
                r = client.get(f"/deforum_wan/jobs/{job_id}/video")
                assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
                assert r.content == Path(record["video"]).read_bytes() and r.content[4:8] == b"ftyp"
            listing = client.get("/deforum_wan/jobs").json()
            assert {j for _, j in submitted} <= set(listing)
            found = client.get("/deforum_wan/models").json()
            assert {m["kind"] for m in found["models"]} >= {"vace", "t2v", "i2v"}
    finally:
        queue.close()


def long_settings(frames: int = 80) -> dict:
    return dict(SMALL, max_frames=frames, batch_name="long_{timestring}")


LONG_OVERRIDES = {"steps": 1, "width": 32, "height": 32, "max_clip_frames": 5, "overlap": 1}  # 4 new frames per clip


def test_cancel_queued_and_running_jobs(models, tmp_path):
    queue = JobQueue(tmp_path / "jobs.sqlite3", runner=real_runner(), outdir=tmp_path / "out",
                     models_dir=models["vace"].parent).start()
    overrides = dict(LONG_OVERRIDES, model=str(models["vace"]))
    try:
        with serve(queue) as server, httpx.Client(base_url=server.url, timeout=60) as client:
            r = client.post("/deforum_wan/txt2vid", json={"deforum_settings": [long_settings(), SMALL],
                                                           "options_overrides": overrides})
            running, queued = r.json()["job_ids"]
            poll(client, running, lambda rec: rec["frames_written"] >= 1 or finished(rec))
            r = client.delete(f"/deforum_wan/jobs/{queued}")
            assert r.status_code == 200 and r.json()["message"] == "Job cancelled."
            assert client.get(f"/deforum_wan/jobs/{queued}").json()["status"] == "CANCELLED"
            assert client.delete(f"/deforum_wan/jobs/{running}").status_code == 200
            record = poll(client, running, finished)
            assert record["status"] == "CANCELLED", record
            kept = outputs.existing_frames(record["outdir"], record["timestring"])
            assert 1 <= len(kept) < 80 and kept == list(range(len(kept)))
            assert client.get(f"/deforum_wan/jobs/{running}/video").status_code == 404
            never = client.get(f"/deforum_wan/jobs/{queued}").json()
            assert never["status"] == "CANCELLED" and never["attempts"] == 0 and never["timestring"] is None
            assert client.delete(f"/deforum_wan/jobs/{queued}").status_code == 400  # already finished
            assert client.delete("/deforum_wan/jobs/batch-nope-0").status_code == 404
    finally:
        queue.close()


def test_restart_mid_queue_finishes_every_job_and_resumes_the_running_one(models, tmp_path):
    db, out = tmp_path / "jobs.sqlite3", tmp_path / "out"
    overrides = dict(LONG_OVERRIDES, model=str(models["vace"]))
    queue = JobQueue(db, runner=real_runner(), outdir=out, models_dir=models["vace"].parent).start()
    first_frame_written = threading.Event()
    queue.subscribe(lambda record, event: event and event.get("type") == "frames" and first_frame_written.set())
    try:
        with serve(queue) as server, httpx.Client(base_url=server.url, timeout=60) as client:
            r = client.post("/deforum_wan/txt2vid", json={
                "deforum_settings": [long_settings(24), dict(SMALL, seed=4), dict(SMALL, seed=5)],
                "options_overrides": overrides})
            ids = r.json()["job_ids"]
            assert first_frame_written.wait(POLL_LIMIT * 0.1), "the first job never wrote a frame"
            # Stop the queue first, while the server still runs: the running worker is asked to stop at
            # once (uvicorn's shutdown takes long enough for a short job to finish before it is asked).
            queue.close()
    finally:
        queue.close()  # the running worker is stopped and its frames kept

    queue = JobQueue(db, runner=real_runner(), outdir=out, models_dir=models["vace"].parent)
    try:
        interrupted = queue.get(ids[0])
        assert (interrupted.status, interrupted.phase, interrupted.error_type) == ("ACCEPTED", "QUEUED", "RETRYABLE")
        assert 1 <= interrupted.frames_written < 24 and interrupted.timestring
        assert [queue.get(i).phase for i in ids[1:]] == ["QUEUED", "QUEUED"]
        first_frame = Path(interrupted.outdir) / outputs.frame_name(interrupted.timestring, 0)
        frame0 = first_frame.read_bytes()
        queue.start()
        with serve(queue) as server, httpx.Client(base_url=server.url, timeout=60) as client:
            records = [poll(client, i, finished) for i in ids]
        assert [r["status"] for r in records] == ["SUCCEEDED"] * 3, records
        first = records[0]
        assert first["timestring"] == interrupted.timestring and first["attempts"] == 2
        assert outputs.existing_frames(first["outdir"], first["timestring"]) == list(range(24))
        assert first_frame.read_bytes() == frame0  # resumed: the frames from before the restart were kept
        assert all(r["attempts"] == 1 for r in records[1:])
    finally:
        queue.close()


# ---------------------------------------------------------------- load


class QuickRunner:
    """A light stand-in for the worker (each real worker spends seconds importing torch): writes one frame."""

    def __init__(self):
        self.lock = threading.Lock()
        self.seen: list[int] = []
        self.active = 0
        self.overlaps = 0

    def __call__(self, job, *, on_event, cancel=None, config=None):
        with self.lock:
            self.active += 1
            self.overlaps += self.active > 1
            self.seen.append(job["settings"]["seed"])
        try:
            ts = f"2024{job['settings']['seed']:010d}"
            folder = Path(job["outdir"]) / f"load_{ts}"
            on_event({"type": "start", "folder": str(folder), "timestring": ts, "clips": 1, "frames_total": 1,
                      "frames_on_disk": 0, "resumed": False})
            time.sleep(0.02)
            outputs.write_frame(folder, ts, 0, np.zeros((8, 8, 3), np.uint8))
            on_event({"type": "frames", "clip": 0, "frames_written": 1, "frames_total": 1, "preview": None})
            return {"status": "done", "folder": str(folder), "timestring": ts, "frames_on_disk": 1, "frames_total": 1}
        finally:
            with self.lock:
                self.active -= 1


def run_load(tmp_path: Path, runner, n: int, settings, overrides, models_dir=None) -> tuple[list[dict], float]:
    queue = JobQueue(tmp_path / "jobs.sqlite3", runner=runner, outdir=tmp_path / "out", default_model="vace",
                     models_dir=models_dir).start()
    started = time.monotonic()
    try:
        with serve(queue) as server:
            responses: list[httpx.Response] = []
            lock = threading.Lock()

            def post(i: int) -> None:
                with httpx.Client(base_url=server.url, timeout=120) as c:
                    r = c.post("/deforum_wan/txt2vid", json={"deforum_settings": settings(i),
                                                               "options_overrides": overrides})
                with lock:
                    responses.append(r)

            threads = [threading.Thread(target=post, args=(i,)) for i in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert len(responses) == n and all(r.status_code == 202 for r in responses), [r.text for r in responses]
            ids = [j for r in responses for j in r.json()["job_ids"]]
            assert len(set(ids)) == n
            with httpx.Client(base_url=server.url, timeout=60) as client:
                records = [poll(client, i, finished, limit=POLL_LIMIT * 4) for i in ids]
    finally:
        queue.close()
    return records, time.monotonic() - started


def assert_one_at_a_time(records: list[dict]) -> None:
    spans = sorted((r["timings"]["started_at"], r["timings"]["finished_at"]) for r in records)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end <= start, "two jobs ran at the same time"


def test_fifty_concurrent_submissions_run_one_at_a_time(tmp_path):
    runner = QuickRunner()
    records, seconds = run_load(tmp_path, runner, 50, lambda i: dict(SMALL, seed=1000 + i, max_frames=1), {"steps": 1})
    assert all(r["status"] == "SUCCEEDED" and r["attempts"] == 1 for r in records)
    assert sorted(runner.seen) == list(range(1000, 1050))  # none lost, none run twice
    assert runner.overlaps == 0
    assert_one_at_a_time(records)
    print(f"\nload: 50 jobs in {seconds:.1f} s ({50 / seconds * 60:.0f} jobs/minute)")


@pytest.mark.skipif(not os.environ.get("DEFORUM_WAN_LOAD_REAL"), reason="set DEFORUM_WAN_LOAD_REAL=N to run N real workers")
def test_concurrent_submissions_with_real_workers(models, tmp_path):
    n = int(os.environ["DEFORUM_WAN_LOAD_REAL"])
    settings = lambda i: dict(SMALL, seed=2000 + i, max_frames=1, batch_name=f"real_{i}_{{timestring}}")  # noqa: E731
    records, seconds = run_load(tmp_path, real_runner(), n, settings,
                                {"model": str(models["vace"]), "steps": 1, "width": 32, "height": 32},
                                models_dir=models["vace"].parent)
    assert all(r["status"] == "SUCCEEDED" and r["attempts"] == 1 for r in records)
    assert_one_at_a_time(records)
    print(f"\nreal load: {n} jobs in {seconds:.1f} s ({n / seconds * 60:.1f} jobs/minute)")


# ---------------------------------------------------------------- bad input


def _bad_payloads(tmp_path: Path) -> list[tuple[str, object, int, str]]:
    s = SMALL
    return [
        ("not an object", [1, 2], 422, "body"),
        ("settings missing", {"options_overrides": {}}, 422, "deforum_settings"),
        ("settings a string", {"deforum_settings": "hello"}, 422, "deforum_settings"),
        ("settings a number", {"deforum_settings": 5}, 422, "deforum_settings"),
        ("empty list", {"deforum_settings": []}, 422, "deforum_settings"),
        ("item not an object", {"deforum_settings": [s, 7]}, 422, "deforum_settings[1]"),
        ("prompts missing", {"deforum_settings": {"max_frames": 10}}, 422, "deforum_settings.prompts"),
        ("prompts empty", {"deforum_settings": dict(s, prompts={})}, 422, "deforum_settings.prompts"),
        ("prompt not text", {"deforum_settings": dict(s, prompts={"0": 5})}, 422, "deforum_settings.prompts"),
        ("prompts a list", {"deforum_settings": dict(s, prompts=["a"])}, 422, "deforum_settings.prompts"),
        ("max_frames text", {"deforum_settings": dict(s, max_frames="many")}, 422, "deforum_settings.max_frames"),
        ("max_frames negative", {"deforum_settings": dict(s, max_frames=-3)}, 422, "deforum_settings.max_frames"),
        ("max_frames huge", {"deforum_settings": dict(s, max_frames=10**9)}, 422, "deforum_settings.max_frames"),
        ("max_frames over API limit", {"deforum_settings": dict(s, max_frames=api.MAX_FRAMES + 1)}, 422,
         "deforum_settings.max_frames"),
        ("W huge", {"deforum_settings": dict(s, W=100000)}, 422, "deforum_settings.W"),
        ("H a list", {"deforum_settings": dict(s, H=[32])}, 422, "deforum_settings.H"),
        ("fps zero", {"deforum_settings": dict(s, fps=0)}, 422, "deforum_settings.fps"),
        ("fps huge", {"deforum_settings": dict(s, fps=999)}, 422, "deforum_settings.fps"),
        ("seed a float", {"deforum_settings": dict(s, seed=1.5)}, 422, "deforum_settings.seed"),
        ("NaN value", "NAN", 422, "deforum_settings.zoom"),
        ("Infinity in overrides", "INF", 422, "options_overrides.guidance"),
        ("malformed schedule", {"deforum_settings": dict(s, translation_x="0:(sin(t")}, 422,
         "deforum_settings.translation_x"),
        ("schedule fails at frame 2", {"deforum_settings": dict(s, zoom="0:(1), 2:(1/0*t)")}, 422,
         "deforum_settings.zoom"),
        ("schedule a dict", {"deforum_settings": dict(s, angle={"0": 1})}, 422, "deforum_settings.angle"),
        ("unknown name in schedule", {"deforum_settings": dict(s, rotation_3d_y="0:(foo(t))")}, 422,
         "deforum_settings.rotation_3d_y"),
        ("bad backtick prompt", {"deforum_settings": dict(s, prompts={"0": "a `sin(t` cat"})}, 422,
         "deforum_settings.prompts"),
        ("bad prompt key", {"deforum_settings": dict(s, prompts={"zz": "a cat"})}, 422, "deforum_settings.prompts"),
        ("seed_behavior unknown", {"deforum_settings": dict(s, seed_behavior="chaos")}, 422,
         "deforum_settings.seed_behavior"),
        ("traversal batch_name", {"deforum_settings": dict(s, batch_name="../../etc")}, 422,
         "deforum_settings.batch_name"),
        ("absolute batch_name", {"deforum_settings": dict(s, batch_name="/tmp/x")}, 422,
         "deforum_settings.batch_name"),
        ("init_image /etc/passwd", {"deforum_settings": dict(s, init_image="/etc/passwd")}, 422,
         "deforum_settings.init_image"),
        ("init_image file URL", {"deforum_settings": dict(s, init_image="file:///etc/passwd")}, 422,
         "deforum_settings.init_image"),
        ("init_image traversal", {"deforum_settings": dict(s, init_image=str(tmp_path / "out" / ".." / "x.png"))}, 422,
         "deforum_settings.init_image"),
        ("init_image ftp", {"deforum_settings": dict(s, init_image="ftp://example.com/a.png")}, 422,
         "deforum_settings.init_image"),
        ("init_image bad data URL", {"deforum_settings": dict(s, init_image="data:image/png;base64,!!!")}, 422,
         "deforum_settings.init_image"),
        ("soundtrack outside roots", {"deforum_settings": dict(s, soundtrack_path="/root/song.mp3")}, 422,
         "deforum_settings.soundtrack_path"),
        ("soundtrack file URL", {"deforum_settings": dict(s, soundtrack_path="FILE:/etc/hosts")}, 422,
         "deforum_settings.soundtrack_path"),
        ("overrides a list", {"deforum_settings": s, "options_overrides": [1]}, 422, "options_overrides"),
        ("unknown override", {"deforum_settings": s, "options_overrides": {"outdir": "/"}}, 422,
         "options_overrides.outdir"),
        ("steps text", {"deforum_settings": s, "options_overrides": {"steps": "ten"}}, 422, "options_overrides.steps"),
        ("steps huge", {"deforum_settings": s, "options_overrides": {"steps": 100000}}, 422, "options_overrides.steps"),
        ("width negative", {"deforum_settings": s, "options_overrides": {"width": -32}}, 422, "options_overrides.width"),
        ("continuity unknown", {"deforum_settings": s, "options_overrides": {"continuity": "magic"}}, 422,
         "options_overrides.continuity"),
        ("model outside models dir", {"deforum_settings": s, "options_overrides": {"model": "/etc"}}, 422,
         "options_overrides.model"),
        ("model unknown", {"deforum_settings": s, "options_overrides": {"model": "nope-model"}}, 422,
         "options_overrides.model"),
        ("device injection", {"deforum_settings": s, "options_overrides": {"device": "cuda; rm -rf /"}}, 422,
         "options_overrides.device"),
        ("wan_steps too many", {"deforum_settings": dict(s, wan_inference_steps=5000)}, 422,
         "deforum_settings.wan_inference_steps"),
        ("exact_size not a flag", {"deforum_settings": s, "options_overrides": {"exact_size": "maybe"}}, 422,
         "options_overrides.exact_size"),
        ("guidance_2 huge", {"deforum_settings": s, "options_overrides": {"guidance_2": 99}}, 422,
         "options_overrides.guidance_2"),
        ("sensitivity a huge whole number", {"deforum_settings": s, "options_overrides": {"sensitivity": 10**400}},
         422, "options_overrides.sensitivity"),
        ("preset unknown", {"deforum_settings": s, "options_overrides": {"preset": "warp"}}, 422,
         "options_overrides.preset"),
        ("cache unknown", {"deforum_settings": s, "options_overrides": {"cache": "turbo:1"}}, 422,
         "options_overrides.cache"),
        ("lora as a path", {"deforum_settings": s, "options_overrides": {"loras": ["/etc/passwd"]}}, 422,
         "options_overrides.loras"),
        ("lora bad weight", {"deforum_settings": s, "options_overrides": {"loras": ["style:strong"]}}, 422,
         "options_overrides.loras"),
        ("loras not a list", {"deforum_settings": s, "options_overrides": {"loras": "style"}}, 422,
         "options_overrides.loras"),
        ("too many settings", {"deforum_settings": [s] * (api.MAX_SETTINGS_PER_BATCH + 1)}, 422, "deforum_settings"),
        ("not JSON", "NOTJSON", 422, "JSON"),
        ("50 MB body", "HUGE", 413, "limit"),
        ("50 MB body streamed", "HUGE_STREAM", 413, "limit"),
    ]


def _send(client: httpx.Client, payload: object) -> httpx.Response:
    url = "/deforum_wan/txt2vid"
    headers = {"content-type": "application/json"}
    if payload == "NAN":
        return client.post(url, content=b'{"deforum_settings": {"prompts": {"0": "a"}, "zoom": NaN}}', headers=headers)
    if payload == "INF":
        return client.post(url, content=b'{"deforum_settings": {"prompts": {"0": "a"}}, '
                                        b'"options_overrides": {"guidance": Infinity}}', headers=headers)
    if payload == "NOTJSON":
        return client.post(url, content=b'{"deforum_settings": ', headers=headers)
    if payload == "HUGE":
        body = b'{"deforum_settings": {"prompts": {"0": "' + b"x" * (50 * 1024 * 1024) + b'"}}}'
        return client.post(url, content=body, headers=headers)
    if payload == "HUGE_STREAM":  # chunked, no Content-Length: the limit is enforced while reading
        def chunks():
            yield b'{"deforum_settings": {"prompts": {"0": "'
            for _ in range(50):
                yield b"x" * (1024 * 1024)
            yield b'"}}}'
        return client.post(url, content=chunks(), headers=headers)
    return client.post(url, json=payload)


def test_bad_payloads_get_422_or_413_naming_the_field_and_never_500(tmp_path):
    ran: list[dict] = []
    queue = JobQueue(tmp_path / "jobs.sqlite3", runner=lambda job, **kw: ran.append(job),
                     outdir=tmp_path / "out", default_model="vace")  # no models folder: "vace" is a kind name
    table = _bad_payloads(tmp_path)
    assert len(table) >= 25
    with serve(queue) as server, httpx.Client(base_url=server.url, timeout=120) as client:
        for name, payload, status, field in table:
            r = _send(client, payload)
            assert r.status_code == status, (name, r.status_code, r.text[:300])
            body = r.json()
            assert field in body["message"], (name, body["message"])
            assert body["detail"] and body["errors"], name
        # and the good ones still pass
        assert _send(client, {"deforum_settings": SMALL}).status_code == 202
        assert client.get("/deforum_wan/jobs/nope").status_code == 404
        assert client.get("/deforum_wan/batches/nope").status_code == 404
        assert client.delete("/deforum_wan/batches/nope").status_code == 404
        assert client.get("/deforum_wan/jobs/nope/video").status_code == 404
    assert len(queue.list()) == 1 and not ran  # the queue was never started: nothing ran
    queue.close()


def test_error_messages_name_the_frame_and_the_text(tmp_path):
    queue = JobQueue(tmp_path / "jobs.sqlite3", runner=lambda job, **kw: None, outdir=tmp_path, default_model="vace")
    with serve(queue) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        r = _send(client, {"deforum_settings": [SMALL, dict(SMALL, translation_x="0:(0), 2:(log(t-3))")]})
        assert r.status_code == 422
        message = r.json()["message"]
        assert 'deforum_settings[1].translation_x: cannot evaluate "(log(t-3))" at frame 2' in message
        assert r.json()["detail"][0]["loc"] == ["body", "deforum_settings", 1, "translation_x"]
    queue.close()


def test_allowed_sources_pass_and_data_urls_are_saved(tmp_path):
    import base64
    import io

    from PIL import Image

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    Image.new("RGB", (8, 8)).save(inputs / "init.png")
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(buf, format="PNG")
    data_url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    queue = JobQueue(tmp_path / "jobs.sqlite3", runner=lambda job, **kw: None, outdir=tmp_path / "out",
                     default_model="vace")
    with serve(queue, allowed_roots=[tmp_path / "out", inputs]) as server, \
            httpx.Client(base_url=server.url, timeout=60) as client:
        cases = {"https://example.com/a.png": "https://example.com/a.png", str(inputs / "init.png"):
                 str((inputs / "init.png").resolve()), "None": "None", "": ""}
        for value, expected in cases.items():
            r = _send(client, {"deforum_settings": dict(SMALL, init_image=value, use_init=False)})
            assert r.status_code == 202, (value, r.text)
            job = queue.get(r.json()["job_ids"][0]).job
            assert job["settings"]["init_image"] == expected
        r = _send(client, {"deforum_settings": dict(SMALL, init_image=data_url, use_init=True)})
        assert r.status_code == 202, r.text
        saved = Path(queue.get(r.json()["job_ids"][0]).job["settings"]["init_image"])
        assert saved.parent == (tmp_path / "out" / "deforum_wan_api_inputs").resolve()
        assert np.asarray(Image.open(saved))[0, 0].tolist() == [200, 0, 0]
    queue.close()


# ---------------------------------------------------------------- web-UI flag


@pytest.fixture
def fake_webui(tmp_path, monkeypatch):
    """A stand-in for the host's `modules.shared` with the flags off."""
    monkeypatch.setenv("DEFORUM_WAN_JOBS_DB", str(tmp_path / "webui.sqlite3"))
    modules = ModuleType("modules")
    shared = ModuleType("modules.shared")
    shared.cmd_opts = SimpleNamespace(api=False, deforum_wan_api=False)
    shared.opts = SimpleNamespace(outdir_samples=str(tmp_path / "webui-out"), data={})
    modules.shared = shared
    monkeypatch.setitem(sys.modules, "modules", modules)
    monkeypatch.setitem(sys.modules, "modules.shared", shared)
    jobs.close_queue()
    yield shared
    jobs.close_queue()


def test_routes_are_absent_in_the_web_ui_without_the_flag(fake_webui):
    app = FastAPI()
    host.mount_api(None, app)
    assert not [p for p in api.route_paths(app) if p.startswith("/deforum_wan")]
    assert api.api_enabled(fake_webui.cmd_opts) is False


@pytest.mark.parametrize("flags", [{"api": True, "deforum_wan_api": False}, {"api": False, "deforum_wan_api": True},
                                   {"nowebui": True}])
def test_routes_are_present_with_api_or_our_flag(fake_webui, flags, tmp_path):
    fake_webui.cmd_opts = SimpleNamespace(**flags)
    app = FastAPI()
    host.mount_api(None, app)
    host.mount_api(None, app)  # a second call adds nothing
    paths = [p for p in api.route_paths(app) if p.startswith("/deforum_wan")]
    assert "/deforum_wan/txt2vid" in paths and "/deforum_wan/jobs/{id}" in paths
    assert paths.count("/deforum_wan/txt2vid") == 1
    assert jobs.get_queue().outdir == str((tmp_path / "webui-out").resolve())


def test_the_preload_flag_is_the_one_api_enabled_reads():
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("preload", ROOT / "preload.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    parser = argparse.ArgumentParser()
    parser.add_argument("--api", action="store_true")
    module.preload(parser)
    assert api.api_enabled(parser.parse_args(["--deforum-wan-api"]))
    assert api.api_enabled(parser.parse_args(["--api"]))
    assert not api.api_enabled(parser.parse_args([]))


# ---------------------------------------------------------------- host environments (pydantic 1 and 2)


@pytest.mark.parametrize("env", [".venv-a1111", ".venv-forge"])
def test_host_api_check_passes_under_the_host_env(env):
    python = ROOT / env / "bin" / "python"
    if not python.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{python} is missing; CI must build the host envs (make host-envs)")
        pytest.skip(f"{env} not built (make host-envs)")
    result = subprocess.run([str(python), str(ROOT / "tests" / "host_api_check.py")], capture_output=True, text=True,
                            timeout=600, cwd=str(ROOT))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "host API check passed" in result.stdout


def test_a_killed_worker_fails_its_job_and_the_app_keeps_serving(models, tmp_path):
    import signal

    queue = JobQueue(tmp_path / "jobs.sqlite3", runner=real_runner(), outdir=tmp_path / "out",
                     models_dir=models["vace"].parent).start()
    pids: list[int] = []

    def on_change(record, event):
        if event and event.get("type") == "worker":
            pids.append(int(event["pid"]))
        if event and event.get("type") == "frames" and pids:
            os.kill(pids[-1], signal.SIGKILL)  # what an out-of-memory kill looks like from outside

    unsubscribe = queue.subscribe(on_change)
    overrides = dict(LONG_OVERRIDES, model=str(models["vace"]))
    try:
        with serve(queue) as server, httpx.Client(base_url=server.url, timeout=60) as client:
            doomed = client.post("/deforum_wan/txt2vid", json={"deforum_settings": long_settings(24),
                                                               "options_overrides": overrides}).json()["job_ids"][0]
            record = poll(client, doomed, finished)
            assert record["status"] == "FAILED" and record["error_type"] == "RETRYABLE"
            assert "SIGKILL" in record["message"]
            assert client.get("/deforum_wan/models").status_code == 200  # the app still answers
            unsubscribe()
            ok = client.post("/deforum_wan/txt2vid", json={"deforum_settings": SMALL,
                                                           "options_overrides": overrides}).json()["job_ids"][0]
            record = poll(client, ok, finished)
            assert record["status"] == "SUCCEEDED", record
            assert Path(record["video"]).is_file()
    finally:
        queue.close()


# ---------------------------------------------------------------- who may call


def _route_calls() -> list[tuple[str, str]]:
    """(method, path) for every route, with a made-up id."""
    table = api.route_table(JobQueue(":memory:", outdir="/tmp"))
    return [(m, path.replace("{id}", "batch-x-0")) for path, _fn, methods, _status in table for m in methods]


def _webui_app(fake_webui, **cmd) -> FastAPI:
    fake_webui.cmd_opts = SimpleNamespace(**{"api": True, "deforum_wan_api": False, **cmd})
    app = FastAPI()
    host.mount_api(None, app)
    return app


def test_the_web_ui_api_auth_guards_every_route_as_it_guards_sdapi(fake_webui):
    app = _webui_app(fake_webui, api_auth="alice:s3cret,bob:hunter2")
    calls = _route_calls()
    assert len(calls) == 11
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        for method, path in calls:
            for auth in (None, ("alice", "wrong"), ("mallory", "s3cret"), ("alice", "hunter2")):
                r = client.request(method, path, auth=auth, json={})
                assert r.status_code == 401, (method, path, auth, r.status_code)
                assert r.headers["www-authenticate"] == "Basic"
            r = client.request(method, path, headers={"Authorization": "Bearer s3cret"}, json={})
            assert r.status_code == 401
        for user, password in (("alice", "s3cret"), ("bob", "hunter2")):
            r = client.get("/deforum_wan/jobs", auth=(user, password))
            assert r.status_code == 200 and r.json() == {}
        r = client.post("/deforum_wan/txt2vid", auth=("alice", "s3cret"), json={"deforum_settings": SMALL})
        assert r.status_code in (202, 422)  # past the gate, into validation


def test_without_api_auth_the_web_ui_takes_our_token_when_it_is_set(fake_webui, monkeypatch):
    monkeypatch.setenv(api.TOKEN_ENV, "t" * 32)
    app = _webui_app(fake_webui)
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.get("/deforum_wan/jobs").status_code == 401
        assert client.get("/deforum_wan/jobs", headers={"Authorization": "Bearer " + "t" * 31}).status_code == 401
        assert client.get("/deforum_wan/jobs", headers={"Authorization": "Bearer " + "t" * 32}).status_code == 200
    monkeypatch.setenv(api.TOKEN_ENV, "t" * 32)
    both = _webui_app(fake_webui, api_auth="alice:s3cret")  # the host's auth decides; the token opens nothing
    with LiveServer(both) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.get("/deforum_wan/jobs", headers={"Authorization": "Bearer " + "t" * 32}).status_code == 401
        assert client.get("/deforum_wan/jobs", auth=("alice", "s3cret")).status_code == 200


def test_the_old_settings_option_no_longer_opens_the_api(fake_webui):
    from deforum_wan.webui import host as webui

    fake_webui.opts.deforum_wan_api = True  # saved in config.json by an older version
    app = FastAPI()
    webui.on_app_started(None, app)
    assert not api.has_routes(app)
    assert "deforum_wan_api" not in webui.OPTIONS


def test_the_standalone_app_wants_a_token_beyond_this_machine(tmp_path):
    for host in ("127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.2"):
        assert api.standalone_problem(host, "") is None, host
    for host in ("0.0.0.0", "::", "192.168.1.20", "no-such-host.invalid"):
        assert api.TOKEN_ENV in (api.standalone_problem(host, "") or ""), host
        assert api.standalone_problem(host, "x" * 40) is None
    assert "at least 16" in api.standalone_problem("127.0.0.1", "short")
    env = {k: v for k, v in os.environ.items() if k != api.TOKEN_ENV}
    result = subprocess.run([sys.executable, "-m", "deforum_wan", "ui", "--host", "0.0.0.0", "--port", "9"],
                            capture_output=True, text=True, timeout=120, env=env, cwd=str(tmp_path))
    assert result.returncode == 2 and f"without {api.TOKEN_ENV}" in result.stderr, result.stderr[-2000:]


def test_the_standalone_token_gate_covers_everything_it_serves(tmp_path):
    import base64

    from fastapi.responses import HTMLResponse

    token = "k" * 24
    queue = JobQueue(tmp_path / "jobs.sqlite3", runner=lambda job, **kw: None, outdir=tmp_path, default_model="vace")
    app = FastAPI()
    api.add_routes(app, queue)
    app.add_api_route("/", lambda: HTMLResponse("<html>the tab</html>"), methods=["GET"])
    api.guard_standalone(app, token)  # what build_app does with $DEFORUM_WAN_API_TOKEN
    basic = "Basic " + base64.b64encode(f"anyone:{token}".encode()).decode()
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        for path in ("/", "/deforum_wan/jobs", "/docs", "/openapi.json"):
            r = client.get(path)
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic"), path
            assert client.get(path, headers={"Authorization": "Bearer " + "k" * 23}).status_code == 401
            assert client.get(path, headers={"Authorization": f"Bearer {token}"}).status_code == 200, path
            assert client.get(path, headers={"Authorization": basic}).status_code == 200, path  # a browser
    queue.close()


# ---------------------------------------------------------------- URLs (SSRF)


@pytest.fixture
def web():
    from netfixtures import LocalServer, bomb_png, png_bytes, wav_bytes

    with LocalServer() as s:
        s.routes.add("/init.png", png_bytes((48, 32), (10, 200, 30)), "image/png")
        s.routes.add("/song.wav", wav_bytes(1.0), "audio/wav")
        s.routes.add("/bomb.png", bomb_png(), "image/png")
        s.routes.add("/slow.png", png_bytes(), "image/png", delay=3.0)
        yield s


def _accepted_settings(queue: JobQueue, response: httpx.Response) -> dict:
    assert response.status_code == 202, response.text
    return queue.get(response.json()["job_ids"][0]).job["settings"]


def test_urls_to_this_machine_or_the_network_inside_are_refused(tmp_path, web, monkeypatch):
    from netfixtures import fake_dns

    fake_dns(monkeypatch, {"metadata.example": ["169.254.169.254"], "nas.example": ["192.168.1.5"],
                           "localhost": ["127.0.0.1", "::1"]})
    web.routes.redirect("/to-metadata", "http://metadata.example/latest/meta-data/iam")
    # VACE: starts from the init image when there is one and from text when not (an I2V model needs one)
    queue = JobQueue(tmp_path / "jobs.sqlite3", runner=lambda job, **kw: None, outdir=tmp_path / "out",
                     default_model="vace")
    cases = [
        ("init_image", {"use_init": True}, web.url("/init.png"), "loopback"),
        ("init_image", {"use_init": True}, web.url("/init.png", "[::1]"), "loopback"),
        ("init_image", {"use_init": True}, "http://169.254.169.254/latest/meta-data/", "link-local"),
        ("init_image", {"use_init": True}, "http://metadata.example/latest/", "link-local"),
        ("soundtrack_path", {"add_soundtrack": "File"}, "http://nas.example/song.mp3", "private"),
        ("soundtrack_path", {"add_soundtrack": "File"}, web.url("/song.wav", "localhost"), "loopback"),
    ]
    with serve(queue) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        for key, switch, url, words in cases:
            r = client.post("/deforum_wan/txt2vid", json={"deforum_settings": dict(SMALL, **switch, **{key: url})})
            assert r.status_code == 422, (url, r.text)
            assert f"deforum_settings.{key}: cannot use" in r.json()["message"] and words in r.json()["message"], url
    with serve(queue, fetch_policy=FetchPolicy(allow_loopback=True)) as server, \
            httpx.Client(base_url=server.url, timeout=60) as client:
        r = client.post("/deforum_wan/txt2vid", json={"deforum_settings": dict(SMALL, use_init=True,
                                                                                init_image=web.url("/to-metadata"))})
        assert r.status_code == 422 and "metadata.example is 169.254.169.254" in r.json()["message"]
    assert web.routes.seen == ["/to-metadata"]  # the only request that reached a server: the redirect itself
    assert not queue.list()
    queue.close()


def test_used_urls_are_fetched_at_submit_and_the_worker_gets_files(tmp_path, web):
    from netfixtures import png_bytes

    queue = JobQueue(tmp_path / "jobs.sqlite3", runner=lambda job, **kw: None, outdir=tmp_path / "out",
                     default_model="vace")  # the second job has no init image, which an I2V model refuses
    with serve(queue, fetch_policy=FetchPolicy(allow_loopback=True)) as server, \
            httpx.Client(base_url=server.url, timeout=60) as client:
        settings = _accepted_settings(queue, client.post("/deforum_wan/txt2vid", json={"deforum_settings": dict(
            SMALL, use_init=True, init_image=web.url("/init.png"), add_soundtrack="File",
            soundtrack_path=web.url("/song.wav"))}))
        init, song = Path(settings["init_image"]), Path(settings["soundtrack_path"])
        inputs = (tmp_path / "out" / "deforum_wan_api_inputs").resolve()
        assert init.parent == inputs and song.parent == inputs and song.suffix == ".wav"
        assert init.read_bytes() == png_bytes((48, 32), (10, 200, 30))
        # A URL the render will not use is neither fetched nor changed (Deforum's files carry sample URLs).
        web.routes.seen.clear()
        settings = _accepted_settings(queue, client.post("/deforum_wan/txt2vid", json={"deforum_settings": dict(
            SMALL, use_init=False, init_image="http://169.254.169.254/x.png", add_soundtrack="None",
            soundtrack_path=web.url("/song.wav"))}))
        assert settings["init_image"] == "http://169.254.169.254/x.png" and web.routes.seen == []
    queue.close()


def test_a_slow_url_never_holds_up_other_requests(tmp_path, web, monkeypatch):
    queue = JobQueue(tmp_path / "jobs.sqlite3", runner=lambda job, **kw: None, outdir=tmp_path / "out",
                     default_model="i2v")
    monkeypatch.setattr(api, "MAX_PENDING_VALIDATIONS", 2)
    slow = {"deforum_settings": dict(SMALL, use_init=True, init_image=web.url("/slow.png"))}
    with serve(queue, fetch_policy=FetchPolicy(allow_loopback=True)) as server, \
            httpx.Client(base_url=server.url, timeout=60) as client:
        done: dict[str, tuple[int, float]] = {}

        def post(name: str) -> None:
            started = time.monotonic()
            with httpx.Client(base_url=server.url, timeout=60) as c:
                done[name] = (c.post("/deforum_wan/txt2vid", json=slow).status_code, time.monotonic() - started)

        threads = [threading.Thread(target=post, args=(n,)) for n in ("a", "b")]
        for t in threads:
            t.start()
        time.sleep(0.5)  # both are now waiting on the slow server
        answered = []
        for _ in range(5):
            started = time.monotonic()
            assert client.get("/deforum_wan/jobs").status_code == 200
            answered.append(time.monotonic() - started)
        busy = client.post("/deforum_wan/txt2vid", json={"deforum_settings": SMALL})
        for t in threads:
            t.join(60)
    assert max(answered) < 1.0, answered  # the slow fetch takes 3 s
    assert busy.status_code == 503 and busy.headers["retry-after"] == "5"
    assert done["a"][0] == done["b"][0] == 202 and min(done["a"][1], done["b"][1]) >= 2.5, done
    queue.close()


# ---------------------------------------------------------------- every 422 names its field


def test_findings_that_named_no_field_now_name_it(tmp_path, web):
    import base64

    from netfixtures import bomb_png

    queue = JobQueue(tmp_path / "jobs.sqlite3", runner=lambda job, **kw: None, outdir=tmp_path / "out",
                     default_model="vace")
    bomb = "data:image/png;base64," + base64.b64encode(bomb_png()).decode()
    cases = [
        (dict(SMALL, fps=1e-9), "deforum_settings.fps: must be"),
        (dict(SMALL, fps=0.01), "deforum_settings.fps"),
        (dict(SMALL, use_init=True, init_image=bomb), "deforum_settings.init_image: the image is far larger"),
        (dict(SMALL, prompts={"0": "a fox " * 5000}), "deforum_settings.prompts.0: at most 20000 characters"),
        (dict(SMALL, resume_from_timestring=True, resume_timestring="../../etc"), "deforum_settings.resume_timestring"),
        (dict(SMALL, animation_mode="Sideways"), "deforum_settings.animation_mode"),
        ([SMALL, dict(SMALL, W=100000)], "deforum_settings[1].W"),
    ]
    with serve(queue, fetch_policy=FetchPolicy(allow_loopback=True)) as server, \
            httpx.Client(base_url=server.url, timeout=60) as client:
        for settings, named in cases:
            r = client.post("/deforum_wan/txt2vid", json={"deforum_settings": settings})
            assert r.status_code == 422 and named in r.json()["message"], (named, r.text[:400])
        r = client.post("/deforum_wan/txt2vid", json={"deforum_settings": dict(SMALL, use_init=True,
                                                                                init_image=web.url("/bomb.png"))})
        assert r.status_code == 422 and "deforum_settings.init_image: cannot use" in r.json()["message"]
        r = client.post("/deforum_wan/txt2vid", content=b"[1,", headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["message"].startswith("Invalid request: body: not valid JSON")
    queue.close()


def test_a_parser_message_is_traced_to_the_key_the_user_wrote():
    """Planner messages that do not start with a key still name the field they mention."""
    from deforum_wan.service import validation

    data = {"animation_mode": "None", "wan_max_clip_frames": 5, "prompts": {"0": "a"}}
    loc = ("deforum_settings", 0)
    assert validation._plan_error("unknown animation_mode 'None'; expected one of ...", loc, data, {})[0] == \
        ("deforum_settings", 0, "animation_mode")
    assert validation._plan_error("overlap: must be between 1 and 1, got 5", loc, data, {})[0] == \
        ("deforum_settings", 0, "wan_max_clip_frames")
    assert validation._plan_error("overlap: must be between 1 and 1, got 5", loc, data, {"max_clip_frames": 5})[0] == \
        ("options_overrides", "max_clip_frames")
    assert validation._plan_error("steps: must be between 1 and 200, got 500", loc, {"wan_inference_steps": 500},
                                  {})[0] == ("deforum_settings", 0, "wan_inference_steps")


# ---------------------------------------------------------------- retry


def test_retry_route_requeues_a_full_disk_failure_as_a_resume(tmp_path):
    calls: list[dict] = []

    def runner(job, *, on_event, cancel=None, config=None):
        calls.append(job)
        ts = job.get("resume") or "20240202020202"
        folder = tmp_path / "out" / f"api_{ts}"
        on_event({"type": "start", "folder": str(folder), "timestring": ts, "clips": 1, "frames_total": 2,
                  "frames_on_disk": 0, "resumed": bool(job.get("resume"))})
        outputs.write_frame(folder, ts, len(calls) - 1, np.zeros((8, 8, 3), np.uint8))
        if len(calls) == 1:
            return {"status": "failed", "error": f"No space left on device while writing to {folder}",
                    "folder": str(folder), "timestring": ts, "frames_on_disk": 1, "frames_total": 2}
        return {"status": "done", "folder": str(folder), "timestring": ts, "frames_on_disk": 2, "frames_total": 2}

    queue = JobQueue(tmp_path / "jobs.sqlite3", runner=runner, outdir=tmp_path / "out", default_model="vace").start()
    terminal = JobQueue(tmp_path / "t.sqlite3", runner=lambda job, **kw: {"status": "failed", "error": "zoom: bad"},
                        outdir=tmp_path / "out", default_model="vace").start()
    try:
        with serve(queue) as server, httpx.Client(base_url=server.url, timeout=60) as client:
            job_id = client.post("/deforum_wan/txt2vid", json={"deforum_settings": SMALL}).json()["job_ids"][0]
            failed = poll(client, job_id, finished)
            assert (failed["status"], failed["error_type"]) == ("FAILED", "RETRYABLE")
            assert f"POST /deforum_wan/jobs/{job_id}/retry" in failed["message"]
            r = client.post(f"/deforum_wan/jobs/{job_id}/retry")
            assert r.status_code == 202 and "resume 20240202020202" in r.json()["message"]
            done = poll(client, job_id, finished)
            assert (done["status"], done["attempts"], done["timestring"]) == ("SUCCEEDED", 2, "20240202020202")
            assert calls[1]["resume"] == "20240202020202"
            r = client.post(f"/deforum_wan/jobs/{job_id}/retry")
            assert r.status_code == 409 and "already succeeded" in r.json()["message"]
            assert client.post("/deforum_wan/jobs/batch-nope-0/retry").status_code == 404
        with serve(terminal) as server, httpx.Client(base_url=server.url, timeout=60) as client:
            job_id = client.post("/deforum_wan/txt2vid", json={"deforum_settings": SMALL}).json()["job_ids"][0]
            assert poll(client, job_id, finished)["error_type"] == "TERMINAL"
            r = client.post(f"/deforum_wan/jobs/{job_id}/retry")
            assert r.status_code == 409 and "TERMINAL" in r.json()["message"]
    finally:
        queue.close()
        terminal.close()


def test_an_i2v_model_without_an_init_image_is_refused_naming_the_field(tmp_path):
    queue = JobQueue(tmp_path / "jobs.sqlite3", runner=lambda job, **kw: None, outdir=tmp_path / "out",
                     default_model="i2v")  # no models folder: "i2v" is a kind name
    with serve(queue) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        r = client.post("/deforum_wan/txt2vid", json={"deforum_settings": SMALL})
        assert r.status_code == 422, r.text
        assert r.json()["message"].startswith("Invalid request: deforum_settings.init_image: Wan2.1 I2V (i2v) cannot "
                                              "start a clip from text"), r.text
        unused = dict(SMALL, init_image="https://example.com/x.png")  # use_init is off
        r = client.post("/deforum_wan/txt2vid", json={"deforum_settings": unused})
        assert r.status_code == 422 and "deforum_settings.use_init:" in r.json()["message"], r.text
    assert not queue.list()
    queue.close()


# ---------------------------------------------------------------- Parseq manifests


def test_parseq_manifests_inline_as_the_settings_by_url_and_by_path(tmp_path, web):
    from test_parseq import build_manifest

    from deforum_wan.core.settings import load_settings

    manifest = build_manifest()
    web.routes.add("/m.json", json.dumps(manifest).encode(), "application/json")
    queue = JobQueue(tmp_path / "jobs.sqlite3", runner=lambda job, **kw: None, outdir=tmp_path / "out",
                     default_model="vace")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "parseq.json").write_text(json.dumps(manifest))
    small = {k: v for k, v in SMALL.items() if k != "max_frames"}
    with serve(queue) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        by_url = dict(small, parseq_manifest=web.url("/m.json"))
        r = client.post("/deforum_wan/txt2vid", json={"deforum_settings": by_url})
        assert r.status_code == 422 and "deforum_settings.parseq_manifest: cannot use" in r.json()["message"]
        assert "loopback" in r.json()["message"] and web.routes.seen == []
        r = client.post("/deforum_wan/txt2vid", json={"deforum_settings": dict(small, parseq_manifest="/etc/passwd")})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "deforum_settings", "parseq_manifest"]
        assert "only http(s) URLs, data: URLs and files inside" in r.json()["message"]
        stored = [_accepted_settings(queue, client.post("/deforum_wan/txt2vid", json={"deforum_settings": body}))
                  for body in (manifest, dict(small, parseq_manifest=json.dumps(manifest)),
                               dict(small, parseq_manifest=str(tmp_path / "out" / "parseq.json")))]
    with serve(queue, fetch_policy=FetchPolicy(allow_loopback=True)) as server, \
            httpx.Client(base_url=server.url, timeout=60) as client:
        stored.append(_accepted_settings(queue, client.post("/deforum_wan/txt2vid", json={"deforum_settings": by_url})))
        assert web.routes.seen == ["/m.json"]
    assert isinstance(stored[2]["parseq_manifest"], dict) and isinstance(stored[3]["parseq_manifest"], dict)
    for data in stored:  # what the worker loads: the manifest inline, no file or URL left to read
        s = load_settings(data)
        assert s.max_frames == 24 and s.fps == 16 and s.parseq is not None and s.prompts[0][1].startswith("a red fox")
    queue.close()


def test_bad_parseq_manifests_are_422_naming_the_field(tmp_path):
    from test_parseq import build_manifest

    queue = JobQueue(tmp_path / "jobs.sqlite3", runner=lambda job, **kw: None, outdir=tmp_path / "out",
                     default_model="vace")
    bad = build_manifest()
    bad["rendered_frames"][5]["strength"] = "high"
    long = {"options": {"output_fps": 16}, "rendered_frames": [{"frame": i, "strength": 0.5} for i in range(10_001)]}
    cases = [
        (dict(SMALL, parseq_manifest=bad), "rendered_frames[5].strength (frame 5): expected a number, got 'high'"),
        (bad, "rendered_frames[5].strength (frame 5): expected a number"),
        (dict(SMALL, parseq_manifest="{oops"), "the manifest is not valid JSON"),
        (dict(SMALL, parseq_manifest={"meta": {}}), "no rendered_frames"),
        (dict(SMALL, parseq_manifest=["a"]), "expected the manifest (JSON), a file path or an http(s) URL, got list"),
        (dict(SMALL, parseq_manifest="data:application/json,{}"), "give the manifest itself"),
        (dict(SMALL, parseq_manifest=long), "max_frames must be between 1 and 10000, got 10001"),
    ]
    with serve(queue) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        for body, words in cases:
            r = client.post("/deforum_wan/txt2vid", json={"deforum_settings": [body]})
            assert r.status_code == 422, (words, r.text[:300])
            assert f"deforum_settings[0].parseq_manifest: {words}" in r.json()["message"], r.text[:400]
            assert r.json()["detail"][0]["loc"] == ["body", "deforum_settings", 0, "parseq_manifest"]
    assert not queue.list()
    queue.close()


def test_guided_images_are_checked_per_key_and_their_urls_fetched_at_submit(tmp_path, web):
    import base64

    from netfixtures import png_bytes

    guided = dict(SMALL, max_frames=12, animation_mode="2D", use_looper=True)
    queue = JobQueue(tmp_path / "jobs.sqlite3", runner=lambda job, **kw: None, outdir=tmp_path / "out",
                     default_model="vace")
    text_url = "data:image/png;base64," + base64.b64encode(b"not a picture").decode()
    png_url = "data:image/png;base64," + base64.b64encode(png_bytes((40, 30), (1, 2, 3))).decode()
    ex = "https://example.com/"  # the plan refuses these before anything is fetched
    refused = [
        ({"0": ex + "a.png", "max_f/": ex + "b.png"}, "deforum_settings.init_images: ", 'cannot evaluate "max_f/"'),
        ({"0": ex + "a.png", "max_f+5": ex + "b.png"}, "deforum_settings.init_images: ",
         'init_images["max_f+5"]: frame 16 is outside'),
        ({"0": "/etc/passwd"}, "deforum_settings.init_images.0: ", "only http(s) URLs, data: URLs and files"),
        ({"0": "file:///etc/hosts"}, "deforum_settings.init_images.0: ", "file: URLs are not allowed"),
        ({"max_f/2": text_url}, "deforum_settings.init_images.max_f/2: ", "not an image"),
        ({"0": web.url("/init.png")}, "deforum_settings.init_images.0: cannot use", "loopback"),
    ]
    with serve(queue) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        for images, where, words in refused:
            r = client.post("/deforum_wan/txt2vid", json={"deforum_settings": dict(guided, init_images=images)})
            assert r.status_code == 422, (images, r.text)
            assert where in r.json()["message"] and words in r.json()["message"], (images, r.text)
        # with use_looper off Deforum's sample URLs are neither checked nor fetched
        off = dict(guided, use_looper=False, init_images={"0": "file:///etc/hosts"})
        assert client.post("/deforum_wan/txt2vid", json={"deforum_settings": off}).status_code == 202
    with serve(queue, fetch_policy=FetchPolicy(allow_loopback=True)) as server, \
            httpx.Client(base_url=server.url, timeout=60) as client:
        web.routes.seen.clear()
        images = json.dumps({"0": png_url, "max_f": web.url("/init.png")})  # JSON text, as Deforum saves it
        settings = _accepted_settings(queue, client.post("/deforum_wan/txt2vid", json={
            "deforum_settings": dict(guided, init_images=images)}))
        saved = json.loads(settings["init_images"])
        inputs = (tmp_path / "out" / "deforum_wan_api_inputs").resolve()
        assert set(saved) == {"0", "max_f"} and all(Path(p).parent == inputs for p in saved.values())
        assert Path(saved["0"]).read_bytes() == png_bytes((40, 30), (1, 2, 3))
        assert Path(saved["max_f"]).read_bytes() == png_bytes((48, 32), (10, 200, 30))
        assert web.routes.seen == ["/init.png"]
    queue.close()
