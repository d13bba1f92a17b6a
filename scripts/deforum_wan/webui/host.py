"""Glue to the host web UI (Automatic1111 or Forge): the Wan tab, its options, the API.

Imported only inside the web UI; `modules` is the host's package. Registering is
cheap: gradio and the tab are built only when the host calls `on_ui_tabs`.
Outputs go where Deforum puts its own (`outdir_samples or outdir_img2img_samples`
+ batch name); models live in `<models_path>/wan/` unless the option says otherwise.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

SECTION = ("deforum_wan", "Deforum Wan")
TAB_TITLE = "Wan"
TAB_ID = "deforum_wan"  # the host makes the tab's element id tab_deforum_wan
log = logging.getLogger(__name__)

OPTIONS = {
    # key: (default, label)
    "deforum_wan_models_dir": ("", "Wan models folder (empty: <models>/wan)"),
    "deforum_wan_default_model": ("", "Default Wan model (folder name; empty: the first found)"),
    "deforum_wan_memory_profile": ("auto", "Memory profile for Wan renders"),
}


def _opt(name: str) -> Any:
    from modules import shared

    opts = getattr(shared, "opts", None)
    default = OPTIONS[name][0] if name in OPTIONS else None
    return getattr(opts, name, default) if opts is not None else default


def _webui_root() -> str:
    try:
        from modules import paths

        return str(getattr(paths, "script_path", None) or os.getcwd())
    except ImportError:
        return os.getcwd()


def models_dir() -> str:
    """The option, else `<models_path>/wan`."""
    chosen = _opt("deforum_wan_models_dir")
    if chosen:
        return str(Path(chosen).expanduser())
    try:
        from modules import paths

        return str(Path(paths.models_path) / "wan")
    except (ImportError, AttributeError):
        return str(Path(_webui_root()) / "models" / "wan")


def outdir() -> str:
    """Deforum's output root: outdir_samples, else outdir_img2img_samples (the batch folder goes inside)."""
    root = _opt("outdir_samples") or _opt("outdir_img2img_samples") or "outputs/img2img-images"
    path = Path(root)
    return str(path if path.is_absolute() else Path(_webui_root()) / path)


def output_roots() -> list[str]:
    """Where Deforum may have saved settings: its output root, the img2img folder and Forge's outputs/deforum."""
    base = Path(_webui_root())
    roots = [outdir(), _opt("outdir_img2img_samples"), _opt("outdir_samples"), str(base / "outputs" / "deforum"),
             str(base / "outputs" / "img2img-images")]
    seen: list[str] = []
    for root in roots:
        if root:
            path = str(Path(root) if Path(root).is_absolute() else base / root)
            if path not in seen:
                seen.append(path)
    return seen


def allowed_roots() -> list[str]:
    """Folders the API may read init images and soundtracks from: every output folder the host names,
    its inputs, and DEFORUM_WAN_ALLOWED_ROOTS."""
    opts = getattr(_shared(), "opts", None)
    roots = [outdir()]
    data = getattr(opts, "data", None)
    if isinstance(data, dict):
        roots += [v for k, v in data.items() if k.startswith("outdir_") and isinstance(v, str) and v.strip()]
    for name in ("outdir_samples", "outdir_txt2img_samples", "outdir_img2img_samples", "outdir_extras_samples",
                 "outdir_grids", "outdir_save", "outdir_init_images"):
        value = getattr(opts, name, "")
        if isinstance(value, str) and value.strip():
            roots.append(value)
    extra = getattr(opts, "deforum_wan_api_allowed_roots", "") or os.environ.get("DEFORUM_WAN_ALLOWED_ROOTS", "")
    roots += [p for p in str(extra).split(os.pathsep) if p.strip()]
    roots += ["outputs", "inputs"]
    return list(dict.fromkeys(roots))


def db_path() -> Path:
    """$DEFORUM_WAN_JOBS_DB, else a queue file of this web UI's own in the extension's `.jobs/`.

    Two web UIs that share one extension checkout (a symlink, as A1111 and Forge
    often do) would otherwise share a queue, and each would render the other's jobs
    with its own worker into the other's folders.
    """
    from ..service import jobs

    env = os.environ.get("DEFORUM_WAN_JOBS_DB")
    if env:
        return Path(env).expanduser()
    digest = hashlib.sha1(os.path.realpath(_webui_root()).encode("utf-8")).hexdigest()[:12]
    return jobs.default_db_path().with_name(f"jobs-{digest}.sqlite3")


def queue() -> Any:
    """The process's job queue, writing where the host's options say (the tab and the API share it)."""
    from ..service import jobs

    return jobs.get_queue(db_path=db_path(), outdir=outdir(), models_dir=models_dir())


def _shared() -> Any:
    from modules import shared

    return shared


def _state() -> Any:
    return getattr(_shared(), "state", None)


class HostMirror:
    """Every queue job, from the tab or the API, runs as the host's own jobs do in `shared.state`.

    A1111 and Forge begin a job with `state.begin()` (which clears an Interrupt
    pressed earlier and sets the start time `/sdapi/v1/progress` divides by) and
    end it with `state.end()` (job_count back to 0). Between the two, worker events
    become job_count/job_no/sampling steps (bridge.HostProgress), and the host's
    Interrupt, noticed within half a second even while the worker is silent,
    cancels that job once. An Interrupt pressed while no job of ours runs stops
    nothing of ours.
    """

    def __init__(self, queue: Any, state: Any, poll_seconds: float = 0.5) -> None:
        self.queue, self.state, self.poll_seconds = queue, state, poll_seconds
        self._lock = threading.Lock()
        self._job: str | None = None
        self._progress: Any = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def __call__(self, record: Any, event: dict | None) -> None:
        kind = (event or {}).get("type")
        if kind == "running":
            self._begin(record.id)
        elif kind in ("finished", "requeued"):
            self._end(record.id)
        elif event is not None and kind != "cancel" and record.id == self._job:
            self._progress(event)  # HostProgress never raises

    def _call(self, name: str, **kwargs: Any) -> None:
        method = getattr(self.state, name, None)
        if callable(method):
            try:
                method(**kwargs)
            except Exception:  # a host's state API we do not know must not stop the render
                log.debug("shared.state.%s failed", name, exc_info=True)

    def _begin(self, job_id: str) -> None:
        from ..service import bridge

        self._end(self._job)  # a job that vanished without finishing (never expected)
        with self._lock:
            self._call("begin", job="Deforum Wan")
            self._job = job_id
            self._progress = bridge.HostProgress(self.state)
            self._stop = threading.Event()
            self._watcher = threading.Thread(target=self._watch, args=(job_id, self._progress, self._stop),
                                             name="deforum-wan-host-interrupt", daemon=True)
            self._watcher.start()

    def _end(self, job_id: str | None) -> None:
        with self._lock:
            if job_id is None or job_id != self._job:
                return
            self._stop.set()
            watcher, self._job, self._watcher = self._watcher, None, None
            self._call("end")
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(timeout=5)

    def _watch(self, job_id: str, progress: Any, stop: threading.Event) -> None:
        while not stop.wait(self.poll_seconds):
            if progress.check_interrupt():
                try:
                    self.queue.cancel(job_id)
                except KeyError:
                    pass
                return


def mirror_host_progress(queue: Any) -> HostMirror | None:
    """Subscribe a HostMirror to the queue (once per queue); None outside a web UI."""
    state = _state()
    if state is None:
        return None
    existing = getattr(queue, "_host_mirror", None)
    if existing is not None:
        return existing
    mirror = HostMirror(queue, state)
    queue._host_mirror = mirror
    queue.subscribe(mirror)
    return mirror


def tab_context():
    import functools

    from .tab import Jobs, TabContext

    return TabContext(
        jobs=functools.cache(lambda: Jobs(queue())),  # one wrapper (one subscription) on this web UI's queue
        outdir=outdir, models_dir=models_dir, default_model=lambda: _opt("deforum_wan_default_model") or None,
        memory_profile=lambda: _opt("deforum_wan_memory_profile") or "auto", output_roots=output_roots,
        webui_root=_webui_root(), allowed_roots=allowed_roots, fetch_policy=_fetch_policy,
    )


def _fetch_policy() -> Any:
    """The API's URL rules (the host's options) for the tab's init image URLs too."""
    from ..renderer import fetch

    return fetch.host_policy()


def on_ui_tabs() -> list[tuple[Any, str, str]]:
    from .tab import build_tab

    return [(build_tab(tab_context()), TAB_TITLE, TAB_ID)]


def on_ui_settings() -> None:
    import gradio as gr
    from modules import shared

    from ..renderer.memory import MEMORY_PROFILES

    for key, (default, label) in OPTIONS.items():
        if key == "deforum_wan_memory_profile":
            info = shared.OptionInfo(default, label, gr.Dropdown, {"choices": list(MEMORY_PROFILES)}, section=SECTION)
        else:
            info = shared.OptionInfo(default, label, section=SECTION)
        shared.opts.add_option(key, info)


def on_app_started(demo: Any, app: Any) -> None:
    """Host progress for every job; the API routes only with --api/--nowebui/--deforum-wan-api (api.on_app_started).

    There is deliberately no settings option that turns the API on: the routes are
    reachable exactly when the web UI's own API is, behind the same --api-auth.
    """
    from ..service import api

    mirror_host_progress(queue())
    if _opt("deforum_wan_api") and not api.api_enabled(getattr(_shared(), "cmd_opts", None)):
        log.warning("Deforum Wan: the old deforum_wan_api setting no longer turns the API on; "
                    "start the web UI with --api or --deforum-wan-api")
    mount_api(demo, app)


def mount_api(demo: Any, app: Any) -> None:
    """Add the routes when --api/--nowebui/--deforum-wan-api is on (once per app), behind the host's own auth."""
    from ..renderer import fetch
    from ..service import api

    cmd_opts = getattr(_shared(), "cmd_opts", None)
    if not api.api_enabled(cmd_opts) or api.has_routes(app):
        return
    dependencies = api.webui_dependencies(cmd_opts)
    api.add_routes(app, queue(), allowed_roots=allowed_roots(), model_roots=[models_dir()],
                   dependencies=dependencies, fetch_policy=fetch.host_policy)
    how = "--api-auth" if api.host_credentials(cmd_opts) else api.TOKEN_ENV if dependencies else "no authentication"
    log.info("Deforum Wan API: routes under %s/ (%s)", api.PREFIX, how)


CALLBACKS = (  # (the host's callback list, its category, our callback)
    ("callbacks_ui_tabs", "ui_tabs", "on_ui_tabs"),
    ("callbacks_ui_settings", "ui_settings", "on_ui_settings"),
    ("callbacks_app_started", "app_started", "on_app_started"),
)


def register(entry_file: str | None = None) -> None:
    """Register the callbacks, naming `entry_file` as their script when the host lets us.

    A1111's and Forge's public `on_ui_tabs(...)` & co. find the calling file with
    `inspect.stack()`, which reads the source of every frame on the stack: about
    70 ms per callback in a started web UI. `add_callback(..., filename=...)`, which
    both hosts' on_* functions call, skips that; the public functions stay the
    fallback for a host without it.
    """
    from modules import script_callbacks

    callback_map = getattr(script_callbacks, "callback_map", None)
    add_callback = getattr(script_callbacks, "add_callback", None)
    for key, category, name in CALLBACKS:
        ours = globals()[name]
        if entry_file and callable(add_callback) and isinstance(callback_map, dict) and key in callback_map:
            try:
                add_callback(callback_map[key], ours, category=category, filename=entry_file)
                continue
            except TypeError:  # a host whose add_callback takes other arguments
                pass
        getattr(script_callbacks, name)(ours)
