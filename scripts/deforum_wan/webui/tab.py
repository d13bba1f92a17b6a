"""The Wan tab: import Deforum settings, see the plan and camera path, pick a model, render, resume.

One `build_tab(ctx)` serves Automatic1111 (gradio 3.41.2), Forge (gradio 4.40.0)
and the standalone app (`deforum-wan ui`), so it is written against the gradio
3.41 subset that Forge translates: `gr.update(...)`, no `gr.X.update`, no
gradio-4-only keywords. Everything host-specific (folders, options, the host's
Interrupt) comes in through `TabContext`. Gradio is imported inside functions and
torch never: renders, and the enhancer preview, run in worker processes.

Renders go through the JobQueue the API shares (deforum_wan.service.jobs). Progress is a generator on the Generate click (both gradio versions stream it
through their queue); Interrupt runs outside the queue so it is never stuck behind it.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from ..service import bridge, doctor
from . import init_image, tab_data
from .tab_data import Controls, error_html as _error_html, last_frame as _last_frame, none_if_zero as _none_if_zero

SCRIPTS_DIR = Path(__file__).resolve().parents[2]
EXTENSION_DIR = SCRIPTS_DIR.parent
POLL_SECONDS = 0.5


# ---------------------------------------------------------------------------
# What the host provides


@dataclass
class TabContext:
    """Host hooks: where outputs and models go, and defaults.

    The host's progress and Interrupt are handled for every job, the tab's and the
    API's alike, by webui/host.py's HostMirror, not here.
    """

    outdir: Callable[[], str]
    models_dir: Callable[[], str]
    default_model: Callable[[], str | None] = lambda: None
    memory_profile: Callable[[], str] = lambda: "auto"
    output_roots: Callable[[], list[str]] = lambda: []
    webui_root: str | None = None
    jobs: Callable[[], "Jobs"] | None = None
    standalone: bool = False
    allowed_roots: Callable[[], list[str]] = lambda: []  # where init images may be read from (the API's roots)
    fetch_policy: Callable[[], Any] | None = None  # renderer.fetch.FetchPolicy for init image URLs

    def init_images(self) -> init_image.InitImages:
        """The API's Validator on the tab's queue: its allowed roots and inputs folder take the tab's init image."""
        from ..service.validation import Validator

        return init_image.InitImages(Validator(self.get_jobs().queue, self.allowed_roots() or None),
                                     self.fetch_policy)

    def get_jobs(self) -> "Jobs":
        if self.jobs is None:
            self.jobs = _memo(lambda: shared_jobs(self.outdir(), self.models_dir()))
        return self.jobs()


def _memo(fn: Callable[[], Any]) -> Callable[[], Any]:
    box: list[Any] = []
    lock = threading.Lock()

    def get() -> Any:
        with lock:
            if not box:
                box.append(fn())
            return box[0]

    return get


# ---------------------------------------------------------------------------
# Jobs: the JobQueue shared with the API; renders run in the worker through bridge.run_job


class Jobs:
    """What the tab needs from the shared JobQueue (deforum_wan.service.jobs), with the ETA of step events kept."""

    def __init__(self, queue: Any):
        self.queue = queue
        self.eta: dict[str, float] = {}
        with contextlib.suppress(Exception):
            queue.subscribe(self._on_change)

    def _on_change(self, record: Any, event: dict | None) -> None:
        if event and event.get("type") == "step" and isinstance(event.get("eta_seconds"), (int, float)):
            self.eta[str(tab_data.record_field(record, "id"))] = float(event["eta_seconds"])

    def submit(self, settings: dict, overrides: dict) -> str:
        _batch, job_ids = self.queue.submit([settings], overrides)
        return str(job_ids[0])

    def get(self, job_id: str) -> dict | None:
        record = self.queue.get(job_id)
        if record is None:
            return None
        data = record.to_dict() if hasattr(record, "to_dict") else dict(record)
        data["video"] = tab_data.record_field(record, "video")
        data["eta_seconds"] = self.eta.get(job_id)
        return data

    def cancel(self, job_id: str) -> Any:
        with contextlib.suppress(KeyError):
            return self.queue.cancel(job_id)
        return False


def shared_jobs(outdir: str, models_dir: str) -> Jobs:
    """The process-wide JobQueue (jobs.get_queue), which the API shares; its folders follow the host's options."""
    from ..service import jobs

    return Jobs(jobs.get_queue(outdir=outdir, models_dir=models_dir))


# ---------------------------------------------------------------------------
# Handlers (plain functions: the tab wires them, tests call them)


def _settings_from_state(state: Any):
    from ..core.settings import load_settings

    if not state:
        raise ValueError("import a Deforum settings file first")
    return load_settings(state)


def load_settings_file(path: str | None, shown: str | None = None) -> tuple[dict | None, str, str]:
    """(settings as a dict, inspect summary, status line) for a settings path; `shown` names it in the status.

    Deforum's resume flag is cleared (tab_data.without_resume): an imported file never
    turns Generate into a resume; the status says so when it was set.
    """
    from ..core.inspection import format_inspection, inspect_settings
    from ..core.settings import load_settings
    from ..renderer import fetch, manifest

    if not path or not str(path).strip():
        return None, "", "Give a settings file."
    shown = shown or str(path).strip()
    try:
        loader = manifest.loader_for(str(path).strip(), fetch.host_policy())  # a parseq_manifest the file names
        settings, note = tab_data.without_resume(load_settings(str(path).strip(), load_manifest=loader))
        summary = format_inspection(inspect_settings(settings))
    except (ValueError, OSError) as exc:
        return None, "", f"**Could not import** `{shown}`: {exc}"
    return settings.to_dict(), summary, f"Imported `{shown}`" + (f"  \n**Note:** {note}." if note else "")


def model_spec_and_note(model_path: str | None):
    """The spec of the chosen model folder, or the fallback kind's, with a note for the user."""
    from ..renderer.models import ModelError, classify_model
    from ..core.specs import DEFAULT_MODEL_KIND, MODEL_SPECS

    fallback = MODEL_SPECS[DEFAULT_MODEL_KIND]
    if model_path:
        try:
            return classify_model(model_path).spec, ""
        except ModelError as exc:
            return fallback, f"{exc}; planned for {fallback.label}"
    return fallback, f"no model chosen: planned for {fallback.label}"


def edited_settings(settings_state: Any, rows: Any, plan_state: Any):
    """The imported settings with the table's prompt edits (what the tab keeps between plans)."""
    from ..core.plan import ClipPlan

    settings = _settings_from_state(settings_state)
    if plan_state and rows is not None:
        settings = tab_data.apply_prompt_edits(ClipPlan.from_dict(plan_state), settings, rows)
    return settings


def make_plan(settings_state: Any, rows: Any, plan_state: Any, controls: Controls):
    """Settings for the render (table edits, the tab's init image), the new plan, and notes; ValueError for the user."""
    from ..core.plan import plan_clips
    from ..core.seeds import resolve_seed

    settings = init_image.apply(edited_settings(settings_state, rows, plan_state), controls.init_image,
                                controls.init_strength)
    spec, note = model_spec_and_note(controls.model_path)
    plan = plan_clips(settings, spec, controls.plan_options(seed=resolve_seed(settings.seed)))
    notes = [note] if note else []
    choice = init_image.InitChoice.from_state(controls.init_image)
    if choice is not None:
        notes.append(f"init image: {choice.shown} from the tab, in place of the settings' (strength "
                     f"{float(settings.raw.get('strength', init_image.DEFAULT_STRENGTH)):.2f})")
    if settings.seed == -1:
        notes.append("seed -1: the seeds shown are an example; the render draws its own")
    return settings, plan, notes


def scan_model_choices(models_dir: str) -> dict[str, str]:
    from ..renderer.models import scan_models

    infos, _problems = scan_models(models_dir)
    return tab_data.model_choices(infos)


def run_enhance_preview(settings: Any, controls: Controls, models_dir: str, timeout: float = 900) -> list[list[Any]]:
    """Before/after prompts from `deforum-wan enhance --json`, run by the worker python (the host never loads torch)."""
    with tempfile.TemporaryDirectory(prefix="deforum-wan-enhance-") as tmp:
        path = Path(tmp) / "settings.txt"
        path.write_text(settings.to_json(), encoding="utf-8")
        config = bridge.WorkerConfig()
        cmd = [config.python, "-m", "deforum_wan", "enhance", str(path), "--json",
               "--style", controls.style or "", "--style-strength", str(float(controls.style_strength or 0.5)),
               "--continuity", controls.continuity or "auto"]
        if controls.model_path:
            cmd += ["--model", controls.model_path]
        if controls.qwen:
            cmd += ["--qwen", controls.qwen]
        for flag, value in (("--width", controls.width), ("--height", controls.height), ("--steps", controls.steps)):
            if _none_if_zero(value):
                cmd += [flag, str(int(value))]
        env = bridge.worker_env(config)
        env.setdefault("DEFORUM_WAN_MODELS", models_dir)
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if result.returncode != 0:
        tail = [ln for ln in (result.stderr or result.stdout).splitlines() if ln.strip()][-2:]
        raise ValueError(" | ".join(tail) or f"enhance exited with {result.returncode}")
    return tab_data.enhance_rows(json.loads(result.stdout))


def resume_choices(outdir: str) -> dict[str, tab_data.UnfinishedRender]:
    return {r.label: r for r in tab_data.unfinished_renders(outdir)}


# ---------------------------------------------------------------------------
# The tab


def _read_css() -> str:
    try:
        return (EXTENSION_DIR / "style.css").read_text(encoding="utf-8")
    except OSError:
        return ""


def build_tab(ctx: TabContext):
    """The Wan tab as a gr.Blocks; gradio 3.41 and 4.40 alike."""
    import gradio as gr

    from ..renderer.memory import MEMORY_PROFILES
    from ..core.choices import TIMINGS
    from ..core.speed import PRESETS
    from ..core.plan import CONTINUITY, DEFAULT_MIN_CLIP_SECONDS

    choices = scan_model_choices(ctx.models_dir())
    default_model = tab_data.pick_default_model(choices, ctx.default_model())
    model_paths: dict[str, str] = dict(choices)

    blocks_kwargs: dict[str, Any] = {"analytics_enabled": False}
    if ctx.standalone:
        blocks_kwargs.update(css=_read_css(), title="Deforum Wan")
    with gr.Blocks(**blocks_kwargs) as blocks:
        outer = gr.Column(elem_id="tab_deforum_wan") if ctx.standalone else contextlib.nullcontext()
        with outer:
            settings_state = gr.State(None)
            plan_state = gr.State(None)
            job_state = gr.State(None)

            banner = doctor.setup_banner()  # renderer libraries or the worker's torch missing: say so first
            with gr.Column(visible=bool(banner), elem_id="deforum_wan_setup") as setup_box:
                setup_note = gr.Markdown(banner, elem_id="deforum_wan_setup_note")
                setup_btn = gr.Button("Check again", elem_id="deforum_wan_setup_check")

            with gr.Row():
                with gr.Column(scale=5):
                    gr.Markdown("### Import Deforum settings")
                    upload = gr.File(label="Settings file (.txt / .json)", file_types=[".txt", ".json"],
                                     elem_id="deforum_wan_upload")
                    path_box = gr.Textbox(label="…or a path to a settings file", elem_id="deforum_wan_settings_path",
                                          placeholder="/path/to/20240101120000_settings.txt", max_lines=1)
                    with gr.Row():
                        load_path_btn = gr.Button("Load path", elem_id="deforum_wan_load_path")
                        latest_btn = gr.Button("Take Deforum's last settings", elem_id="deforum_wan_latest")
                    import_status = gr.Markdown("", elem_id="deforum_wan_import_status")
                    # gradio 4 scrolls an updated textbox to its end, hiding the summary's first lines
                    no_scroll = {} if gr.__version__.startswith("3.") else {"autoscroll": False}
                    summary = gr.Textbox(label="Summary", lines=10, max_lines=24, interactive=False,
                                         elem_id="deforum_wan_summary", elem_classes=["deforum-wan-mono"], **no_scroll)
                    init = init_image.InitPanel(ctx.init_images, settings_state)
                with gr.Column(scale=4):
                    gr.Markdown("### Model and options")
                    with gr.Row():
                        model_dd = gr.Dropdown(label="Wan model", choices=list(choices), value=default_model,
                                               elem_id="deforum_wan_model", scale=4)
                        refresh_models_btn = gr.Button("Refresh", elem_id="deforum_wan_refresh_models",
                                                       elem_classes=["deforum-wan-tool"], scale=1)
                    models_note = gr.Markdown(f"Models folder: `{ctx.models_dir()}`" + (
                        "" if choices else " — no Wan models found there"), elem_id="deforum_wan_models_note")
                    with gr.Row():
                        width = gr.Number(label="Width", value=0, precision=0, elem_id="deforum_wan_width",
                                          info="0: the settings' W")
                        height = gr.Number(label="Height", value=0, precision=0, elem_id="deforum_wan_height",
                                           info="0: the settings' H")
                    with gr.Row():
                        steps = gr.Number(label="Steps", value=0, precision=0, elem_id="deforum_wan_steps",
                                          info="0: the model's default")
                        guidance = gr.Number(label="Guidance", value=0, elem_id="deforum_wan_guidance",
                                             info="0: the model's default")
                    with gr.Row():
                        continuity = gr.Radio(label="Continuity", choices=list(CONTINUITY), value="auto",
                                              elem_id="deforum_wan_continuity")
                        overlap = gr.Number(label="Overlap", value=0, precision=0, elem_id="deforum_wan_overlap",
                                            info="VACE frames carried over; 0: default")
                    with gr.Row():
                        timing = gr.Dropdown(label="Timing", choices=list(TIMINGS), value="auto",
                                             elem_id="deforum_wan_timing")
                        min_clip = gr.Number(label="Min clip seconds", value=DEFAULT_MIN_CLIP_SECONDS,
                                             elem_id="deforum_wan_min_clip", info="0: a clip per prompt")
                        motion = gr.Dropdown(label="Camera motion", choices=["words", "guide", "both"], value="words",
                                             elem_id="deforum_wan_motion", info="guide: VACE follows the warped path")
                    with gr.Row():
                        preset = gr.Dropdown(label="Speed preset", choices=list(PRESETS), value="quality",
                                             elem_id="deforum_wan_preset", info="fast/turbo need their LoRA")
                        cache = gr.Textbox(label="Step cache", value="", max_lines=1, elem_id="deforum_wan_cache",
                                           placeholder="none, fbcache:0.05, taylorseer:5, magcache, seacache")
                    loras = gr.Textbox(label="LoRAs (name:weight, comma-separated)", value="", max_lines=2,
                                       elem_id="deforum_wan_loras", placeholder="lightx2v_4step:1.0, style:0.8")
                    with gr.Row():
                        color_match = gr.Checkbox(label="Colour matching", value=True,
                                                  elem_id="deforum_wan_color_match")
                        memory = gr.Dropdown(label="Memory profile", choices=list(MEMORY_PROFILES),
                                             value=ctx.memory_profile() or "auto", elem_id="deforum_wan_memory")
                        gpus = gr.Textbox(label="GPUs", value="", max_lines=1, elem_id="deforum_wan_gpus",
                                          placeholder="0,1: one clip across them")
                    with gr.Accordion("Prompt enhancer (Qwen)", open=False, elem_id="deforum_wan_enhancer"):
                        enhance = gr.Checkbox(label="Enhance prompts when rendering", value=False,
                                              elem_id="deforum_wan_enhance")
                        style = gr.Textbox(label="Style", elem_id="deforum_wan_style", max_lines=2)
                        style_strength = gr.Slider(label="Style strength", minimum=0, maximum=1, step=0.05,
                                                   value=0.5, elem_id="deforum_wan_style_strength")
                        qwen = gr.Textbox(label="Qwen model folder (empty: pick one)", elem_id="deforum_wan_qwen",
                                          max_lines=1)
                        enhance_btn = gr.Button("Preview enhanced prompts", elem_id="deforum_wan_enhance_preview")
                        enhance_status = gr.Markdown("")
                        enhance_table = gr.Dataframe(headers=tab_data.ENHANCE_HEADERS, datatype=["number", "str", "str"],
                                                     col_count=(3, "fixed"), interactive=False, wrap=True, visible=False,
                                                     elem_id="deforum_wan_enhance_table", type="array")
                    with gr.Accordion("Environment", open=False, elem_id="deforum_wan_environment"):
                        env_note = gr.Markdown(doctor.summary_markdown(), elem_id="deforum_wan_environment_note")
                        env_btn = gr.Button("Check the worker (starts it once: a few seconds)",
                                            elem_id="deforum_wan_environment_check")

            gr.Markdown("### Plan")
            plan_note = gr.Markdown("", elem_id="deforum_wan_plan_note")
            # Shown once there is a plan: gradio's empty table is a fake row (gradio 4.40 cannot draw zero
            # rows), and a "fixed" row count, which 3.41 cannot update, would pin every plan to one length;
            # style.css hides the "New row" button instead.
            plan_table = gr.Dataframe(headers=tab_data.PLAN_HEADERS, datatype=tab_data.PLAN_DATATYPES,
                                      col_count=(len(tab_data.PLAN_HEADERS), "fixed"), interactive=True, wrap=True,
                                      visible=False, elem_id="deforum_wan_plan_table", type="array")
            with gr.Row():
                update_plan_btn = gr.Button("Update plan (keeps prompt edits)", elem_id="deforum_wan_update_plan")
                preview_camera_btn = gr.Button("Preview camera", elem_id="deforum_wan_preview_camera")
            with gr.Row():
                plot = gr.Plot(label="Camera path", elem_id="deforum_wan_plot")
                camera_video = gr.Video(label="Camera preview (no model: the picture flown along the path)",
                                        interactive=False, height=360, elem_id="deforum_wan_camera_video")

            gr.Markdown("### Render")
            with gr.Row():
                generate_btn = gr.Button("Generate", variant="primary", elem_id="deforum_wan_generate")
                interrupt_btn = gr.Button("Interrupt", elem_id="deforum_wan_interrupt")
            progress = gr.HTML(tab_data.progress_html(None), elem_id="deforum_wan_progress")
            with gr.Row():
                preview = gr.Image(label="Latest frame", type="filepath", interactive=False, height=360,
                                   elem_id="deforum_wan_preview")
                video = gr.Video(label="Video", interactive=False, height=360, elem_id="deforum_wan_video")
            out_folder = gr.Textbox(label="Output folder", interactive=False, elem_id="deforum_wan_outfolder")
            with gr.Row():
                resume_dd = gr.Dropdown(label="Unfinished renders", choices=list(resume_choices(ctx.outdir())),
                                        elem_id="deforum_wan_resume_list", scale=4)
                refresh_resume_btn = gr.Button("Refresh", elem_id="deforum_wan_refresh_resume",
                                               elem_classes=["deforum-wan-tool"], scale=1)
                resume_btn = gr.Button("Resume", elem_id="deforum_wan_resume", scale=1)

        option_inputs = [model_dd, width, height, steps, guidance, continuity, overlap, color_match, timing, min_clip,
                         motion, preset, cache, loras, memory, gpus, enhance, style, style_strength, qwen, init.state,
                         init.strength]

        def controls_of(values: tuple) -> Controls:
            (label, w, h, st, g, cont, ov, cm, tm, mc, mo, ps, ca, lo, mem, gp, enh, sty, strength, qw, ini,
             ini_s) = values
            return Controls(model_path=model_paths.get(label) if label else None, width=w, height=h, steps=st,
                            guidance=g, continuity=cont, overlap=ov, color_match=cm, timing=tm, min_clip_seconds=mc,
                            motion=mo, preset=ps, cache=ca, loras=lo, memory_profile=mem, gpus=gp, enhance=enh,
                            style=sty, style_strength=strength, qwen=qw, init_image=ini, init_strength=ini_s)

        # -- import
        def on_load(path: Any):
            state, text, status = load_settings_file(path)
            return state, text, status, None  # a new file drops the old plan (and its edits)

        def on_upload(value: Any):
            path, name = tab_data.upload_source(value)  # shown by its own name, not gradio's temporary path
            state, text, status = load_settings_file(path, shown=name)
            return state, text, status, None

        def on_latest():
            path = tab_data.newest_settings(ctx.output_roots(), ctx.webui_root)
            if path is None:
                where = ", ".join(str(p) for p in ctx.output_roots() if p) or "no output folders"
                return (None, "", f"No Deforum settings found (looked for `*_settings.txt` in the batch folders of "
                        f"{where}, and `deforum_settings.txt` in the web UI folder)", None, gr.update())
            state, text, status = load_settings_file(str(path))
            return state, text, status, None, gr.update(value=str(path))

        def on_plan(state: Any, rows: Any, plan_dict: Any, *values: Any):
            if not state:
                return None, gr.update(visible=False), None, "Import a settings file to see its plan.", state
            try:
                settings, plan, notes = make_plan(state, rows, plan_dict, controls_of(values))
                from .plot import camera_figure
                figure = camera_figure(settings, plan)
            except (ValueError, OSError) as exc:
                return None, gr.update(visible=False), None, f"**Cannot plan:** {exc}", state
            kept = edited_settings(state, rows, plan_dict)  # the tab's init image stays out of the imported settings
            return (plan.to_dict(), gr.update(value=tab_data.plan_rows(plan, settings), visible=True), figure,
                    tab_data.plan_summary(plan, notes), kept.to_dict())

        plan_outputs = [plan_state, plan_table, plot, plan_note, settings_state]
        plan_inputs = [settings_state, plan_table, plan_state, *option_inputs]
        load_outputs = [settings_state, summary, import_status, plan_state]
        imports = [upload.upload(on_upload, inputs=[upload], outputs=load_outputs),
                   load_path_btn.click(on_load, inputs=[path_box], outputs=load_outputs),
                   path_box.submit(on_load, inputs=[path_box], outputs=load_outputs),
                   latest_btn.click(on_latest, outputs=[*load_outputs, path_box])]
        for event in [init.after_import(e) for e in imports] + init.wire():  # the init image can change clip modes
            event.then(on_plan, inputs=plan_inputs, outputs=plan_outputs)
        update_plan_btn.click(on_plan, inputs=plan_inputs, outputs=plan_outputs)

        def on_preview_camera(state: Any, rows: Any, plan_dict: Any, *values: Any):
            try:  # numpy, PIL and ffmpeg in this process (renderer/motion_preview.py): a few seconds, no torch
                from ..renderer.motion_preview import tab_preview
                settings, plan, _notes = make_plan(state, rows, plan_dict, controls_of(values))
                return gr.update(value=tab_preview(settings, plan)), gr.update()
            except (ValueError, OSError) as exc:
                return gr.update(value=None), f"**Cannot preview the camera:** {exc}"

        preview_camera_btn.click(on_preview_camera, inputs=plan_inputs, outputs=[camera_video, plan_note])
        for control in (model_dd, continuity, overlap):  # these move clip boundaries: table and plot too
            control.change(on_plan, inputs=plan_inputs, outputs=plan_outputs)

        def on_plan_note(state: Any, rows: Any, plan_dict: Any, *values: Any):
            """Size, steps, guidance, colour matching: the same clips, so only the plan and its note change."""
            if not state:
                return gr.update(), gr.update()
            try:
                _settings, plan, notes = make_plan(state, rows, plan_dict, controls_of(values))
            except (ValueError, OSError) as exc:
                return gr.update(), f"**Cannot plan:** {exc}"
            return plan.to_dict(), tab_data.plan_summary(plan, notes)

        for control in (width, height, steps, guidance, color_match, timing, min_clip, motion, preset):
            control.change(on_plan_note, inputs=plan_inputs, outputs=[plan_state, plan_note])

        # -- models
        def on_refresh_models(current: str | None):
            new = scan_model_choices(ctx.models_dir())
            model_paths.clear()
            model_paths.update(new)
            value = current if current in new else tab_data.pick_default_model(new, ctx.default_model())
            note = f"Models folder: `{ctx.models_dir()}`" + ("" if new else " — no Wan models found there")
            return gr.update(choices=list(new), value=value), note

        refresh_models_btn.click(on_refresh_models, inputs=[model_dd], outputs=[model_dd, models_note])

        # -- enhancer preview
        def on_enhance(state: Any, rows: Any, plan_dict: Any, *values: Any):
            try:
                settings, _plan, _notes = make_plan(state, rows, plan_dict, controls_of(values))
                table = run_enhance_preview(settings, controls_of(values), ctx.models_dir())
            except (ValueError, OSError, subprocess.TimeoutExpired) as exc:
                return f"**Enhancer failed:** {exc}", gr.update()
            return f"{len(table)} prompt(s) enhanced", gr.update(value=table, visible=bool(table))

        enhance_btn.click(on_enhance, inputs=plan_inputs, outputs=[enhance_status, enhance_table])

        # -- setup and environment: what renders really run on (the worker is asked, as doctor does)
        def on_check_setup():
            report = doctor.diagnose(models_dir=ctx.models_dir())
            text = doctor.setup_banner(report)
            return gr.update(visible=bool(text)), text, doctor.report_markdown(report)

        for button in (setup_btn, env_btn):
            button.click(on_check_setup, outputs=[setup_box, setup_note, env_note])

        def on_page_load():
            """Each page (re)load: the setup banner and the unfinished renders as they are now."""
            text = doctor.setup_banner()
            return gr.update(visible=bool(text)), text, gr.update(choices=list(resume_choices(ctx.outdir())))

        blocks.load(on_page_load, outputs=[setup_box, setup_note, resume_dd])

        # -- render
        def watch(job_id: str, jobs: Jobs) -> Iterator[tuple]:
            shown_preview = None
            record = None
            while True:
                record = jobs.get(job_id)
                new_preview = tab_data.record_field(record, "preview")
                preview_update = gr.update()
                if new_preview and new_preview != shown_preview and os.path.isfile(new_preview):
                    preview_update, shown_preview = gr.update(value=new_preview), new_preview
                folder = tab_data.record_field(record, "outdir") or ""
                if tab_data.is_terminal(record):
                    break
                yield (tab_data.progress_html(record), preview_update, gr.update(), gr.update(value=folder),
                       job_id, gr.update())
                time.sleep(POLL_SECONDS)
            video_path = tab_data.record_field(record, "video")
            video_update = gr.update(value=video_path) if video_path and os.path.isfile(video_path) else gr.update()
            last = _last_frame(record)
            preview_update = gr.update(value=last) if last and last != shown_preview else gr.update()
            yield (tab_data.progress_html(record), preview_update, video_update,
                   gr.update(value=tab_data.record_field(record, "outdir") or ""), job_id,
                   gr.update(choices=list(resume_choices(ctx.outdir())), value=None))

        run_outputs = [progress, preview, video, out_folder, job_state, resume_dd]

        def on_generate(state: Any, rows: Any, plan_dict: Any, *values: Any):
            controls = controls_of(values)
            try:
                settings, _plan, _notes = make_plan(state, rows, plan_dict, controls)
                if not controls.model_path:
                    raise ValueError(f"no Wan model chosen; put one in {ctx.models_dir()} and press Refresh")
                jobs = ctx.get_jobs()
                job_id = jobs.submit(settings.to_dict(), controls.overrides())
            except (ValueError, OSError) as exc:
                yield (_error_html(exc), gr.update(), gr.update(), gr.update(), None, gr.update())
                return
            yield (tab_data.progress_html({"status": "ACCEPTED", "message": "submitted"}), gr.update(value=None),
                   gr.update(value=None), gr.update(value=""), job_id, gr.update())
            yield from watch(job_id, jobs)

        def on_resume(label: str | None, *values: Any):
            controls = controls_of(values)
            entry = resume_choices(ctx.outdir()).get(label or "")
            try:
                if entry is None:
                    raise ValueError("choose an unfinished render (Refresh updates the list)")
                if not controls.model_path:
                    raise ValueError("no Wan model chosen")
                from ..core.settings import load_settings

                # Deforum's own resume keys: the render continues this timestring's frames.
                settings = load_settings(entry.settings_path).to_dict()
                settings.update(resume_from_timestring=True, resume_timestring=entry.timestring)
                jobs = ctx.get_jobs()
                job_id = jobs.submit(settings, controls.overrides())
            except (ValueError, OSError) as exc:
                yield (_error_html(exc), gr.update(), gr.update(), gr.update(), None, gr.update())
                return
            yield (tab_data.progress_html({"status": "ACCEPTED", "message": f"resuming {entry.timestring}"}),
                   gr.update(), gr.update(value=None), gr.update(value=str(entry.folder)), job_id, gr.update())
            yield from watch(job_id, jobs)

        def on_interrupt(job_id: str | None):
            if job_id:
                ctx.get_jobs().cancel(job_id)

        generate_btn.click(on_generate, inputs=plan_inputs, outputs=run_outputs)
        resume_btn.click(on_resume, inputs=[resume_dd, *option_inputs], outputs=run_outputs)
        interrupt_btn.click(on_interrupt, inputs=[job_state], outputs=[], queue=False)
        refresh_resume_btn.click(lambda: gr.update(choices=list(resume_choices(ctx.outdir()))), outputs=[resume_dd])
    return blocks


# ---------------------------------------------------------------------------
# Standalone: `deforum-wan ui`
