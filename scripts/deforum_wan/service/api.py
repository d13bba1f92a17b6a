"""The txt2vid HTTP API under `/deforum_wan/`, shaped like Deforum's own API.

Deforum's clients post `{"deforum_settings": ..., "options_overrides": ...}` and
poll jobs whose fields are ACCEPTED/SUCCEEDED/..., QUEUED/GENERATING/..., so ours
take and return the same shapes (plus `wan_*` keys, the video path and timings).
What a request means is checked in validation.py, on a thread of its own, so a
slow request (a large plan, a slow URL) never holds up the others.

Who may call it: in the web UI, exactly who may call the web UI's own /sdapi
routes (`--api-auth user:pass,...`, HTTP Basic); with no --api-auth but
`DEFORUM_WAN_API_TOKEN` set, that token as a Bearer token. The standalone app
requires the token for everything it serves (API and tab) and will not listen
beyond this machine without one (webui/tab.py). Routes exist in the web UI only with
`--api`, `--nowebui` (the host's API-only mode) or `--deforum-wan-api` (preload.py).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import logging
import os
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from hmac import compare_digest
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from . import jobs
from .validation import (  # noqa: F401 - re-exported for clients of the API module
    MAX_BODY_BYTES,
    MAX_DEFORUM_STEPS,
    MAX_FPS,
    MAX_FRAMES,
    MAX_SETTINGS_PER_BATCH,
    MAX_SIDE,
    MAX_STEPS,
    MAX_TEXT_CHARS,
    MIN_FPS,
    MIN_SIDE,
    ApiError,
    BatchAccepted,
    Txt2VidRequest,
    Validator,
    field_name,
    model_schema,
    validate_model,
)

log = logging.getLogger(__name__)

PREFIX = "/deforum_wan"
TOKEN_ENV = "DEFORUM_WAN_API_TOKEN"
MIN_TOKEN_CHARS = 16
VALIDATION_THREADS = 2  # requests are checked two at a time; the rest wait their turn
MAX_PENDING_VALIDATIONS = 64  # beyond this, 503 (bodies waiting in memory: at most 64 x 5 MB)


def error_response(exc: ApiError) -> JSONResponse:
    """Deforum-style `message` plus FastAPI-style `detail` list, so either kind of client can read it."""
    messages = [f"{field_name(loc)}: {msg}" for loc, msg in exc.errors]
    return JSONResponse(status_code=exc.status, content={
        "message": "Invalid request: " + "; ".join(messages) if exc.status == 422 else "; ".join(messages),
        "errors": messages,
        "detail": [{"loc": ["body", *loc] if loc[0] != "body" else list(loc), "msg": msg, "type": "value_error"}
                   for loc, msg in exc.errors],
    })


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The raw body, refusing more than `limit` bytes by Content-Length and while streaming."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise ApiError(400, [(("body",), "invalid Content-Length header")]) from None
        if declared > limit:
            raise ApiError(413, [(("body",), f"{declared} bytes; the limit is {limit} bytes")])
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, [(("body",), f"exceeds the limit of {limit} bytes")])
        chunks.append(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------- who may call


def host_credentials(cmd_opts: Any) -> dict[str, str]:
    """`--api-auth "user:pass,user2:pass2"` as the web UI's modules/api/api.py reads it."""
    raw = getattr(cmd_opts, "api_auth", None)
    credentials: dict[str, str] = {}
    for item in str(raw or "").split(","):
        user, sep, password = item.partition(":")
        if sep:
            credentials[user] = password
    return credentials


def basic_auth(credentials: Mapping[str, str]) -> Callable[..., bool]:
    """The web UI's own check for its /sdapi routes: HTTP Basic, constant-time password compare, 401."""
    def auth(given: HTTPBasicCredentials = Depends(HTTPBasic())) -> bool:
        expected = credentials.get(given.username)
        if expected is not None and compare_digest(given.password.encode("utf-8"), expected.encode("utf-8")):
            return True
        raise HTTPException(status_code=401, detail="Incorrect username or password",
                            headers={"WWW-Authenticate": "Basic"})

    return auth


def token_matches(header: str | None, token: str, *, basic: bool = False) -> bool:
    """`Authorization: Bearer <token>` (or, with `basic`, HTTP Basic whose password is the token)."""
    scheme, _, value = (header or "").strip().partition(" ")
    expected = token.encode("utf-8")
    if scheme.lower() == "bearer":
        return compare_digest(value.strip().encode("utf-8"), expected)
    if basic and scheme.lower() == "basic":
        try:
            _user, _, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return False
        return compare_digest(password.encode("utf-8"), expected)
    return False


def bearer_auth(token: str) -> Callable[..., bool]:
    def auth(request: Request) -> bool:
        if token_matches(request.headers.get("authorization"), token):
            return True
        raise HTTPException(status_code=401, detail=f"send Authorization: Bearer <the {TOKEN_ENV} token>",
                            headers={"WWW-Authenticate": "Bearer"})

    return auth


def webui_dependencies(cmd_opts: Any, environ: Mapping[str, str] = os.environ) -> list[Any]:
    """Route dependencies in the web UI: the host's --api-auth when set, else our token when set, else none."""
    credentials = host_credentials(cmd_opts)
    if credentials:
        return [Depends(basic_auth(credentials))]
    token = environ.get(TOKEN_ENV, "")
    return [Depends(bearer_auth(token))] if token else []


class TokenGate:
    """ASGI middleware for the standalone app: every request needs the token (Bearer, or Basic for browsers)."""

    def __init__(self, app: Any, token: str):
        self.app, self.token = app, token

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if token_matches(headers.get("authorization"), self.token, basic=True):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        response = JSONResponse(status_code=401, content={"detail": f"the {TOKEN_ENV} token is required"},
                                headers={"WWW-Authenticate": 'Basic realm="Deforum Wan", charset="UTF-8"'})
        await response(scope, receive, send)


def is_loopback_host(host: str) -> bool:
    """Whether listening on `host` reaches this machine only (every address it resolves to is loopback)."""
    name = host.strip().strip("[]")
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(i[4][0]).split("%", 1)[0]).is_loopback for i in infos)


def standalone_problem(host: str, token: str | None) -> str | None:
    """Why the standalone app must not start on `host` with this token, or None."""
    if token and len(token) < MIN_TOKEN_CHARS:
        return f"{TOKEN_ENV} is {len(token)} characters; use at least {MIN_TOKEN_CHARS} (a random one)"
    if not token and not is_loopback_host(host):
        return (f"refusing to listen on {host} without {TOKEN_ENV}: anyone who can reach it could render and read "
                f"files. Set {TOKEN_ENV} to a long random string (python -c \"import secrets; "
                f"print(secrets.token_urlsafe(32))\") or listen on 127.0.0.1")
    return None


def refuse_standalone(host: str, environ: Mapping[str, str] = os.environ) -> bool:
    """True (and why, on stderr) when the standalone app must not start on `host` with the token it has."""
    problem = standalone_problem(host, environ.get(TOKEN_ENV, ""))
    if problem:
        print(f"deforum-wan ui: {problem}", file=sys.stderr, flush=True)
    return bool(problem)


def guard_standalone(app: Any, token: str | None = None) -> Any:
    """`app` behind TokenGate when a token is given or $DEFORUM_WAN_API_TOKEN is set (the tab too: it can render)."""
    token = token if token is not None else os.environ.get(TOKEN_ENV, "")
    if token:
        app.add_middleware(TokenGate, token=token)
    return app


# ---------------------------------------------------------------- routes


def _not_found(kind: str, ident: str) -> JSONResponse:
    return JSONResponse(status_code=404, content={"id": ident, "status": "NOT FOUND", "message": f"{kind} {ident} not found."})


def models_payload(queue: jobs.JobQueue) -> dict[str, Any]:
    """Wan models found in the models folder, and Qwen models when the enhancer can list them."""
    from ..core.specs import default_models_dir
    from ..renderer.models import scan_models

    root = Path(queue.models_dir) if queue.models_dir else default_models_dir()
    infos, problems = scan_models(root)
    payload: dict[str, Any] = {
        "models_dir": str(root),
        "default_model": queue.default_model,
        "models": [{"name": i.name, "kind": i.kind, "label": i.label, "path": str(i.path), "size_bytes": i.size_bytes,
                    "modes": list(i.spec.modes), "native_fps": i.spec.native_fps} for i in infos],
        "problems": [str(p) for p in problems],
        "qwen_models": [],
    }
    try:
        from ..enhance.qwen import find_qwen_models

        payload["qwen_models"] = [
            {"name": q.name, "path": str(q.path), "params": q.params, "label": q.label, "source": q.source}
            for q in find_qwen_models(queue.models_dir)
        ]
    except (ImportError, AttributeError):
        pass  # no enhancer in this install
    except Exception:  # the enhancer is optional: its problems never break the models list
        log.debug("qwen model discovery failed", exc_info=True)
    return payload


def route_table(queue: jobs.JobQueue, *, allowed_roots: Sequence[str | os.PathLike[str]] | None = None,
                model_roots: Sequence[str | os.PathLike[str]] | None = None,
                max_body_bytes: int = MAX_BODY_BYTES, fetch_policy: Any = None,
                ) -> list[tuple[str, Any, list[str], int]]:
    """(path, endpoint, methods, status) for every route; plain functions, so any fastapi version can mount them.

    `fetch_policy`: a fetch.FetchPolicy, or a function returning one per request (the web UI's options).
    """
    validator = Validator(queue, allowed_roots, model_roots, fetch_policy=fetch_policy)
    pool = ThreadPoolExecutor(max_workers=VALIDATION_THREADS, thread_name_prefix="deforum-wan-validate")
    pending = {"count": 0}  # touched only on the event loop

    def check_and_submit(raw: bytes) -> tuple[str, list[str]]:
        settings_list, overrides = validator.request(raw)
        try:
            return queue.submit(settings_list, overrides)
        except ValueError as exc:  # no model found
            raise ApiError(422, [(("options_overrides", "model"), str(exc))]) from None

    async def txt2vid(request: Request) -> JSONResponse:
        if pending["count"] >= MAX_PENDING_VALIDATIONS:
            return JSONResponse(status_code=503, headers={"Retry-After": "5"}, content={
                "message": f"busy: {pending['count']} requests are being checked; try again in a few seconds"})
        pending["count"] += 1
        try:
            raw = await read_body(request, max_body_bytes)
            loop = asyncio.get_running_loop()
            batch_id, job_ids = await loop.run_in_executor(pool, check_and_submit, raw)
        except ApiError as exc:
            return error_response(exc)
        finally:
            pending["count"] -= 1
        return JSONResponse(status_code=202, content={"message": "Job(s) accepted", "batch_id": batch_id,
                                                      "job_ids": job_ids})

    def list_jobs() -> JSONResponse:
        return JSONResponse({r.id: r.to_dict() for r in queue.list()})

    def get_job(id: str) -> JSONResponse:  # noqa: A002 - Deforum's parameter name
        record = queue.get(id)
        return JSONResponse(record.to_dict(include_settings=True)) if record else _not_found("Job", id)

    def cancel_job(id: str) -> JSONResponse:  # noqa: A002
        try:
            cancelled = queue.cancel(id)
        except KeyError:
            return _not_found("Job", id)
        if cancelled:
            return JSONResponse({"id": id, "message": "Job cancelled."})
        return JSONResponse(status_code=400, content={
            "id": id, "message": f"Job with ID {id} not in a cancellable state. Has it already finished?"})

    def retry_job(id: str) -> JSONResponse:  # noqa: A002
        record = queue.get(id)
        if record is None:
            return _not_found("Job", id)
        if not queue.retry(id):
            fresh = queue.get(id) or record
            return JSONResponse(status_code=409, content={
                "id": id, "status": fresh.status, "error_type": fresh.error_type,
                "message": f"Job {id} cannot be retried: {jobs.retry_refusal(fresh) or 'its state just changed'}"})
        fresh = queue.get(id) or record
        return JSONResponse(status_code=202, content={"id": id, "status": fresh.status, "phase": fresh.phase,
                                                      "message": fresh.message})

    def list_batches() -> JSONResponse:
        return JSONResponse(queue.batches())

    def get_batch(id: str) -> JSONResponse:  # noqa: A002
        records = queue.batch(id)
        return JSONResponse([r.to_dict() for r in records]) if records else _not_found("Batch", id)

    def cancel_batch(id: str) -> JSONResponse:  # noqa: A002
        try:
            ids = queue.cancel_batch(id)
        except KeyError:
            return _not_found("Batch", id)
        return JSONResponse({"ids": ids, "message": f"{len(ids)} job(s) cancelled."})

    def models() -> JSONResponse:
        return JSONResponse(models_payload(queue))

    def video(id: str):  # noqa: A002
        record = queue.get(id)
        if record is None:
            return _not_found("Job", id)
        if record.status != jobs.SUCCEEDED or not record.video or not Path(record.video).is_file():
            return JSONResponse(status_code=404, content={
                "id": id, "status": record.status, "message": "no video yet: the job has not finished successfully"})
        path = Path(record.video)
        return FileResponse(str(path), media_type="video/mp4", filename=path.name)

    return [
        (f"{PREFIX}/txt2vid", txt2vid, ["POST"], 202),
        (f"{PREFIX}/batches", txt2vid, ["POST"], 202),  # Deforum's path for the same request
        (f"{PREFIX}/batches", list_batches, ["GET"], 200),
        (f"{PREFIX}/batches/{{id}}", get_batch, ["GET"], 200),
        (f"{PREFIX}/batches/{{id}}", cancel_batch, ["DELETE"], 200),
        (f"{PREFIX}/jobs", list_jobs, ["GET"], 200),
        (f"{PREFIX}/jobs/{{id}}", get_job, ["GET"], 200),
        (f"{PREFIX}/jobs/{{id}}", cancel_job, ["DELETE"], 200),
        (f"{PREFIX}/jobs/{{id}}/retry", retry_job, ["POST"], 202),
        (f"{PREFIX}/jobs/{{id}}/video", video, ["GET"], 200),
        (f"{PREFIX}/models", models, ["GET"], 200),
    ]


def _docs(path: str, methods: list[str]) -> dict[str, Any]:
    """The request and response models of the txt2vid routes, for /docs (the endpoints read the body themselves)."""
    if methods != ["POST"] or path.endswith("/retry"):
        return {}
    body = {"content": {"application/json": {"schema": model_schema(Txt2VidRequest)}}, "required": True}
    return {"openapi_extra": {"requestBody": body}, "response_model": BatchAccepted}


def build_router(queue: jobs.JobQueue, *, dependencies: Sequence[Any] = (), **kwargs: Any) -> APIRouter:
    """The routes as an APIRouter, for apps that prefer `include_router`."""
    router = APIRouter()
    for path, endpoint, methods, status in route_table(queue, **kwargs):
        router.add_api_route(path, endpoint, methods=methods, status_code=status, dependencies=list(dependencies),
                             **_docs(path, methods))
    return router


def add_routes(app: Any, queue: jobs.JobQueue, *, allowed_roots: Sequence[str | os.PathLike[str]] | None = None,
               model_roots: Sequence[str | os.PathLike[str]] | None = None, dependencies: Sequence[Any] = (),
               fetch_policy: Any = None) -> None:
    """Mount every `/deforum_wan/` route on `app` (FastAPI), backed by `queue`, each behind `dependencies`.

    `app.add_api_route` rather than `include_router`: it behaves the same from
    fastapi 0.94 to today, and the routes stay visible in `app.routes`. It also
    skips the web UI's own auth (which its Api.add_api_route adds), so the web UI
    passes webui_dependencies() here.
    """
    table = route_table(queue, allowed_roots=allowed_roots, model_roots=model_roots, fetch_policy=fetch_policy)
    for path, endpoint, methods, status in table:
        app.add_api_route(path, endpoint, methods=methods, status_code=status, dependencies=list(dependencies),
                          **_docs(path, methods))


def api_enabled(cmd_opts: Any) -> bool:
    """The web UI serves our routes only with `--api`, `--nowebui` or `--deforum-wan-api`."""
    return any(bool(getattr(cmd_opts, name, False)) for name in ("api", "nowebui", "deforum_wan_api"))


def route_paths(app: Any) -> list[str]:
    """Every route path of `app`, including routes of included routers (newer fastapi nests them)."""
    out: list[str] = []
    pending = list(getattr(app, "routes", ()))
    while pending:
        route = pending.pop(0)
        if getattr(route, "path", None) is not None:
            out.append(str(route.path))
        inner = getattr(route, "original_router", None) or getattr(route, "app", None)
        if inner is not None and inner is not app and hasattr(inner, "routes") and not hasattr(route, "path"):
            pending += list(inner.routes)
    return out


def has_routes(app: Any) -> bool:
    """Whether our routes are mounted on `app`."""
    return any(p.startswith(PREFIX + "/") for p in route_paths(app))
