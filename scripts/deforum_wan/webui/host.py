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
    "deforum_wan_gpus": ("", "GPU groups, one Wan job at a time on each (e.g. 0,1;2,3; empty: $DEFORUM_WAN_GPUS, "
                             "else one job at a time); applies after a restart"),
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
    from ..service import gpu_groups, jobs

    return jobs.get_queue(db_path=db_path(), outdir=outdir(), models_dir=models_dir(),
                          slots=gpu_groups.configured_groups(_opt("deforum_wan_gpus")))


def _shared() -> Any:
    from modules import shared

    return shared


def _state() -> Any:
    return getattr(_shared(), "state", None)


class _JobView:
    """One running job's share of `shared.state`: its progress numbers kept apart, everything else the host's.

    HostProgress writes job_count/job_no/steps/textinfo here; interrupt flags and
    previews read and write through to the host's state.
    """

    OWN = ("job_count", "job_no", "sampling_steps", "sampling_step", "textinfo")

    def __init__(self, state: Any) -> None:
        object.__setattr__(self, "_state", state)
        object.__setattr__(self, "own", {})

    def __getattr__(self, name: str) -> Any:
        own = self.__dict__["own"]
        return own[name] if name in own else getattr(self.__dict__["_state"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.OWN:
            self.own[name] = value
        else:
            setattr(self._state, name, value)


class HostMirror:
    """Every queue job, from the tab or the API, runs as the host's own jobs do in `shared.state`.

    A1111 and Forge begin a job with `state.begin()` (which clears an Interrupt
    pressed earlier and sets the start time `/sdapi/v1/progress` divides by) and
    end it with `state.end()` (job_count back to 0). Between the two, worker events
    become job_count/job_no/sampling steps (bridge.HostProgress), and the host's
    Interrupt, noticed within half a second even while the worker is silent,
    cancels our running jobs once. An Interrupt pressed while no job of ours runs
    stops nothing of ours.

    With GPU groups several jobs run at once: the host's one progress shows them all
    (begin at the first, end after the last; textinfo lists each job, the counts add up).
    """

    def __init__(self, queue: Any, state: Any, poll_seconds: float = 0.5) -> None:
        self.queue, self.state, self.poll_seconds = queue, state, poll_seconds
        self._lock = threading.RLock()
        self._jobs: dict[str, Any] = {}  # running job id -> its HostProgress on a _JobView
        self._latest: str | None = None  # the job whose event came last (its steps are shown)
        self._handled = False  # the Interrupt now set was acted on (jobs started after it keep running)
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def __call__(self, record: Any, event: dict | None) -> None:
        kind = (event or {}).get("type")
        if kind == "running":
            self._begin(record.id)
        elif kind in ("finished", "requeued"):
            self._end(record.id)
        elif event is not None and kind != "cancel":
            with self._lock:
                progress = self._jobs.get(record.id)
                if progress is None:
                    return
                progress(event)  # HostProgress never raises
                self._latest = record.id
                self._show()

    def _call(self, name: str, **kwargs: Any) -> None:
        method = getattr(self.state, name, None)
        if callable(method):
            try:
                method(**kwargs)
            except Exception:  # a host's state API we do not know must not stop the render
                log.debug("shared.state.%s failed", name, exc_info=True)

    def _set(self, name: str, value: Any) -> None:
        try:
            setattr(self.state, name, value)
        except Exception:
            log.debug("shared.state.%s cannot be set", name, exc_info=True)

    def _show(self) -> None:
        """The host's progress from every running job: one job as it is; several summed, each on the text line."""
        views = {job_id: progress.state.own for job_id, progress in self._jobs.items()}
        if not views:
            return
        latest = views.get(self._latest or "") or next(iter(views.values()))
        if len(views) == 1:
            for name, value in latest.items():
                self._set(name, value)
            return
        self._set("job_count", sum(int(v.get("job_count") or 1) for v in views.values()))
        self._set("job_no", sum(int(v.get("job_no") or 0) for v in views.values()))
        for name in ("sampling_steps", "sampling_step"):
            if name in latest:
                self._set(name, latest[name])
        lines = [f"{job_id}: {str(v.get('textinfo') or 'starting').removeprefix('Wan: ')}" for job_id, v in views.items()]
        self._set("textinfo", f"Wan, {len(views)} jobs | " + " | ".join(lines))

    def _begin(self, job_id: str) -> None:
        from ..service import bridge

        with self._lock:
            if not self._jobs:
                self._call("begin", job="Deforum Wan")
                self._handled = False
                self._stop = threading.Event()
                self._watcher = threading.Thread(target=self._watch, args=(self._stop,),
                                                 name="deforum-wan-host-interrupt", daemon=True)
                self._watcher.start()
            elif self._handled and self._interrupted():
                # begin() would clear an Interrupt already acted on; with jobs still running we clear it ourselves
                self._set("interrupted", False)
                self._set("stopping_generation", False)
                self._handled = False
            self._jobs[job_id] = bridge.HostProgress(_JobView(self.state))
            self._show()

    def _end(self, job_id: str | None) -> None:
        with self._lock:
            if job_id is None or self._jobs.pop(job_id, None) is None:
                return
            if self._jobs:
                self._show()
                return
            self._stop.set()
            watcher, self._watcher = self._watcher, None
            self._call("end")
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(timeout=5)

    def _interrupted(self) -> bool:
        return bool(getattr(self.state, "interrupted", False) or getattr(self.state, "stopping_generation", False))

    def _watch(self, stop: threading.Event) -> None:
        while not stop.wait(self.poll_seconds):
            with self._lock:
                if self._handled or not self._interrupted():
                    continue
                self._handled = True
                running = list(self._jobs)
            for job_id in running:
                try:
                    self.queue.cancel(job_id)
                except KeyError:
                    pass


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
