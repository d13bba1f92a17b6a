"""Build the Wan tab the way a web UI does, in a host env (.venv-a1111 / .venv-forge); exit non-zero on failure.

Run with a host env's python: `python tests/host_ui_check.py [SETTINGS_FILE]`. A fake
`modules` package stands in for the web UI (shared.opts, shared.state,
script_callbacks, paths); the tab is built through the real entry script, nested in
a parent Blocks as Automatic1111/Forge nest it, and its import/plan handlers run on a
real Deforum settings file. Prints one JSON line with what it saw.
"""
from __future__ import annotations

import json
import os
import runpy
import sys
import tempfile
import traceback
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SETTINGS = REPO.parent / "shared" / "deforum-settings" / "a1111-deforum-test-simple.txt"
EXPECTED_IDS = ("deforum_wan_settings_path", "deforum_wan_plan_table", "deforum_wan_plot", "deforum_wan_generate",
                "deforum_wan_interrupt", "deforum_wan_progress", "deforum_wan_video", "deforum_wan_resume_list",
                "deforum_wan_model", "deforum_wan_enhance_preview", "deforum_wan_environment_check",
                "deforum_wan_init_image", "deforum_wan_init_path", "deforum_wan_init_strength", "deforum_wan_init_status")


# The tab's option controls in the order its handlers take them: model, width, height, steps, guidance, continuity,
# overlap, colour, timing, min clip s, motion, preset, cache, LoRAs, memory, GPUs, enhancer (4), init image (its
# choice, strength).
DEFAULTS = ("", 32, 32, 2, 0, "auto", 0, True, "auto", 2, "words", "quality", "", "", "auto", "", False, "", 0.5, "",
            None, 0.8)


def fake_host(root: Path) -> dict[str, list]:
    """Install a minimal `modules` package: what webui.py touches, nothing more."""
    registered: dict[str, list] = {"on_ui_tabs": [], "on_ui_settings": [], "on_app_started": []}
    modules = types.ModuleType("modules")
    modules.__path__ = []  # a package, so `from modules import x` resolves the submodules below
    cb = types.ModuleType("modules.script_callbacks")
    for name in registered:
        setattr(cb, name, lambda fn, _n=name: registered[_n].append(fn))

    class OptionInfo:
        def __init__(self, default=None, label="", component=None, component_args=None, section=None, **kw):
            self.default, self.label, self.component, self.component_args, self.section = (
                default, label, component, component_args, section)

    class Options:
        def __init__(self) -> None:
            self.data_labels: dict[str, OptionInfo] = {}
            self.outdir_samples = ""
            self.outdir_img2img_samples = str(root / "outputs" / "img2img-images")

        def add_option(self, key: str, info: OptionInfo) -> None:
            self.data_labels[key] = info
            setattr(self, key, info.default)

    class State:
        interrupted = False

        def begin(self, job: str = "") -> None:
            self.interrupted = False

        def end(self) -> None:
            pass

    shared = types.ModuleType("modules.shared")
    shared.opts, shared.OptionInfo, shared.state = Options(), OptionInfo, State()
    shared.cmd_opts = types.SimpleNamespace(api=False, deforum_wan_api=False)
    paths = types.ModuleType("modules.paths")
    paths.models_path, paths.script_path = str(root / "models"), str(root)
    modules.script_callbacks, modules.shared, modules.paths = cb, shared, paths
    sys.modules.update({"modules": modules, "modules.script_callbacks": cb, "modules.shared": shared,
                        "modules.paths": paths})
    return registered


def _elem_ids(blocks) -> set[str]:
    return {getattr(b, "elem_id", None) for b in blocks.blocks.values()} - {None}


def _fn(blocks, name: str):
    fns = blocks.fns.values() if isinstance(blocks.fns, dict) else blocks.fns  # gradio 4: a dict
    for dep in fns:
        if getattr(dep.fn, "__name__", "") == name:
            return dep.fn
    raise AssertionError(f"no handler named {name}")


def _value(update):
    return update.get("value") if isinstance(update, dict) else update


def _triggers(blocks, name: str) -> set[tuple[str, str]]:
    """(elem_id, event) pairs that run the handler `name`; "page" for the page's load."""
    def elem(block_id):
        block = blocks.blocks.get(block_id)
        return "page" if block is None or block is blocks else block.elem_id

    if isinstance(blocks.fns, dict):  # gradio 4: BlockFunction.targets = [(id, event)]
        return {(elem(i), event) for dep in blocks.fns.values() if dep.name == name for i, event in dep.targets}
    return {(elem(i), dep["trigger"]) for fn, dep in zip(blocks.fns, blocks.dependencies)
            if getattr(fn.fn, "__name__", "") == name for i in (dep["targets"] or [None])}


def _component(config: dict, elem_id: str) -> dict:
    return next(c for c in config["components"] if c.get("props", {}).get("elem_id") == elem_id)


def _write_settings(path: Path, **changes) -> Path:
    data = json.loads(DEFAULT_SETTINGS.read_text(encoding="utf-8"))
    data.update(changes)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def check_setup(blocks, config: dict) -> None:
    """Renderer libraries missing (an empty private folder): the banner is at the top, with the command."""
    from deforum_wan.service import deps, doctor

    box, note = _component(config, "deforum_wan_setup"), _component(config, "deforum_wan_setup_note")
    assert box["props"].get("visible") is not False, box["props"]
    assert "Renders cannot run yet" in note["props"]["value"] and deps.install_command() in note["props"]["value"]
    ids = [c.get("props", {}).get("elem_id") for c in config["components"]]
    assert ids.index("deforum_wan_setup") < ids.index("deforum_wan_upload"), "the banner is not at the top"
    assert ("deforum_wan_setup_check", "click") in _triggers(blocks, "on_check_setup")
    shown, text, _resume = _fn(blocks, "on_page_load")()
    assert shown.get("visible") is True and deps.install_command() in text
    real = doctor.diagnose
    ready = real(probe=False)  # as the doctor reports it once the command ran and the worker imports all
    ready["private"]["problem"], ready["worker"] = None, {"torch": "2.13.0+cpu", "diffusers": "0.42.1", "errors": {}}
    doctor.diagnose = lambda **kw: ready  # "Check again": hidden
    try:
        hidden, text, _env = _fn(blocks, "on_check_setup")()
    finally:
        doctor.diagnose = real
    assert hidden.get("visible") is False and text == "", (hidden, text)


def check_imports(blocks, root: Path) -> None:
    """Uploads are named by their file name; Deforum's own settings come before our renders' resume files."""
    temporary = _write_settings(root / "gradio" / "0a1b2c" / "my_dance.txt")  # gradio's copy of the upload
    upload = types.SimpleNamespace(name=str(temporary), orig_name=str(temporary))  # gradio 3.41's wrapper
    for value in (upload, str(temporary)):  # gradio 4: the path
        state, _summary, status, _plan = _fn(blocks, "on_upload")(value)
        assert state and "`my_dance.txt`" in status and str(root) not in status, status
    out = root / "outputs" / "img2img-images"
    deforum = _write_settings(out / "Deforum_1" / "20240101000000_settings.txt")
    ours = _write_settings(out / "Wan_2" / "20240102000000_settings.txt", resume_from_timestring=True,
                           resume_timestring="20240102000000")
    (ours.parent / "20240102000000_wan_plan.json").write_text("{}")
    os.utime(deforum, (1_000_000, 1_000_000))  # ours is the newest file
    state, _summary, status, _plan, box = _fn(blocks, "on_latest")()
    assert _value(box) == str(deforum) and not state["resume_from_timestring"], status
    deforum.unlink()
    state, _summary, status, _plan, box = _fn(blocks, "on_latest")()
    assert _value(box) == str(ours) and state["resume_from_timestring"] is False, state
    assert "20240102000000" in status and "Unfinished renders" in status, status


def _dropped(blocks, path: Path):
    """What the init image box hands its handler for a dropped file: the component's own preprocess of what the
    browser sends, with gradio's save_pil_to_cache replaced as Forge replaces it (modules/ui_tempdir.py,
    `save_pil_to_file(pil_image, cache_dir=None, format="png")`: no `name`)."""
    import gradio
    from gradio import processing_utils

    box = next(b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == "deforum_wan_init_image")
    if gradio.__version__.startswith("3."):
        import base64

        return box.preprocess("data:image/png;base64," + base64.b64encode(path.read_bytes()).decode())
    from gradio.data_classes import FileData

    original = processing_utils.save_pil_to_cache

    def host_save(pil_image, cache_dir=None, format="png"):
        return original(pil_image, cache_dir, format=format)

    processing_utils.save_pil_to_cache = host_save
    try:
        return box.preprocess(FileData(path=str(path)))
    finally:
        processing_utils.save_pil_to_cache = original


def check_init_image(blocks, root: Path, state: dict, defaults: list) -> None:
    """An uploaded picture is kept where the API keeps its inputs and the plan starts from it; a path outside the
    allowed folders, or a file that is not an image, is refused with a message; clearing brings the file's own back."""
    from PIL import Image

    from deforum_wan.service.validation import Validator

    for name in ("on_init_upload", "on_init_path", "on_init_clear", "on_init_import", "on_init_strength"):
        assert _triggers(blocks, name), f"{name} is not wired"
    upload = root / "gradio" / "9f8e" / "start.png"  # gradio's temporary copy
    upload.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 24), (200, 30, 20)).save(upload)
    choice, status, _image = _fn(blocks, "on_init_upload")(_dropped(blocks, upload), state, None, 0.6)
    saved = Path(choice["path"])
    outdir = root / "outputs" / "img2img-images"
    assert saved.parent == outdir / "deforum_wan_api_inputs", choice
    assert Image.open(saved).convert("RGB").tobytes() == Image.open(upload).convert("RGB").tobytes(), choice
    assert "The render starts from the uploaded image" in status and "strength 0.60" in status, status
    assert "use_init off" in status, status  # what it replaces, said clearly
    plan_dict, _table, _fig, note, kept = _fn(blocks, "on_plan")(state, None, None, *defaults[:-2], choice, 0.6)
    assert plan_dict["clips"][0]["mode"] != "t2v" and "init image: the uploaded image from the tab" in note, note
    assert not kept.get("use_init"), "the tab's init image leaked into the imported settings"
    # The job's settings as Generate submits them: the API's own validation accepts the saved path.
    from deforum_wan.core.settings import load_settings
    from deforum_wan.webui import init_image

    job = init_image.apply(load_settings(state), choice, 0.6).to_dict()
    assert job["use_init"] is True and job["init_image"] == str(saved) and job["strength"] == 0.6, job
    queue = types.SimpleNamespace(outdir=str(outdir), models_dir=None)
    assert Validator(queue, [str(outdir)]).check_source(job["init_image"], ("init_image",), "image") == str(saved)
    # Refused: a file outside the allowed folders, a file that is not an image, a traversal.
    outside = root / "elsewhere.png"
    Image.new("RGB", (8, 8)).save(outside)
    not_image = outdir / "notes.png"
    not_image.write_text("hello")
    for given, words in ((str(outside), "only http(s) URLs, data: URLs and files inside"),
                         (str(not_image), "not an image PIL can read"), (str(outdir / ".." / "x.png"), "'..'"),
                         ("file:///etc/passwd", "file: URLs are not allowed")):
        kept_choice, status, image = _fn(blocks, "on_init_path")(given, state, choice, 0.6)
        assert kept_choice == choice and "**Cannot use the init image**" in status and words in status, status
        assert _value(image) is None or image == {"__type__": "update"}, image
    bad_upload = root / "gradio" / "9f8e" / "broken.png"
    bad_upload.write_bytes(b"\x89PNG not really")
    refused, status, image = _fn(blocks, "on_init_upload")(str(bad_upload), state, None, 0.6)
    assert refused is None and "not an image PIL can read" in status and _value(image) is None, status
    # A path inside the output folder: copied to the inputs folder and shown as the thumbnail.
    inside = outdir / "Deforum_1" / "frame.png"
    Image.new("RGB", (16, 16), (0, 90, 200)).save(inside)
    picked, status, image = _fn(blocks, "on_init_path")(str(inside), state, None, 0.6)
    assert Path(picked["path"]).parent == saved.parent and _value(image) == picked["path"], picked
    assert f"The render starts from {inside}" in status, status
    cleared, status = _fn(blocks, "on_init_clear")(state, 0.6)
    assert cleared is None and "No init image" in status, status
    strength, status = _fn(blocks, "on_init_import")(dict(state, strength=0.35), None, 0.6)
    assert _value(strength) == 0.35, strength


def check(settings_path: Path) -> dict:
    import gradio as gr

    root = Path(tempfile.mkdtemp(prefix="deforum-wan-host-"))
    os.environ["DEFORUM_WAN_DEPS_DIR"] = str(root / "no-deps")  # the renderer libraries are missing
    os.environ.pop("DEFORUM_WAN_WORKER_PYTHON", None)
    registered = fake_host(root)
    runpy.run_path(str(REPO / "scripts" / "deforum_wan_tab.py"))
    assert all(registered.values()), f"callbacks not registered: {registered}"
    for fn in registered["on_ui_settings"]:
        fn()
    opts = sys.modules["modules.shared"].opts
    assert {"deforum_wan_models_dir", "deforum_wan_default_model", "deforum_wan_memory_profile"} <= set(
        opts.data_labels) and "deforum_wan_api" not in opts.data_labels, sorted(opts.data_labels)

    tabs = registered["on_ui_tabs"][0]()
    assert len(tabs) == 1, tabs
    blocks, title, tab_id = tabs[0]
    assert isinstance(blocks, gr.Blocks) and (title, tab_id) == ("Wan", "deforum_wan"), tabs
    missing = [i for i in EXPECTED_IDS if i not in _elem_ids(blocks)]
    assert not missing, f"missing elements: {missing}"

    # Nest it as the web UI does: a TabItem with elem_id tab_<id>, interface.render().
    with gr.Blocks(analytics_enabled=False) as demo:
        with gr.Tabs():
            with gr.TabItem(title, id=tab_id, elem_id=f"tab_{tab_id}"):
                blocks.render()
    config = demo.get_config_file()
    assert any(c.get("props", {}).get("elem_id") == "tab_deforum_wan" for c in config["components"])
    check_setup(blocks, config)
    # No plan, no table (gradio's empty table is a fake row of zeros); never an add-row control.
    for elem_id in ("deforum_wan_plan_table", "deforum_wan_enhance_table"):
        assert _component(config, elem_id)["props"]["visible"] is False, elem_id
    css = (REPO / "style.css").read_text(encoding="utf-8")
    assert "#tab_deforum_wan #deforum_wan_plan_table .controls-wrap" in css
    # Size, steps and guidance re-plan the note as they change, not only on "Update plan".
    for elem_id in ("deforum_wan_width", "deforum_wan_height", "deforum_wan_steps", "deforum_wan_guidance",
                    "deforum_wan_timing", "deforum_wan_min_clip"):
        assert (elem_id, "change") in _triggers(blocks, "on_plan_note"), elem_id
    assert ("page", "load") in _triggers(blocks, "on_page_load")

    # The import and plan handlers on a real Deforum file.
    state, summary, status, _plan = _fn(blocks, "on_load")(str(settings_path))
    assert state and "frames" in summary, status
    defaults = list(DEFAULTS)
    plan_dict, table, figure, note, state = _fn(blocks, "on_plan")(state, None, None, *defaults)
    rows = _value(table)
    assert plan_dict and rows and figure is not None and table["visible"] is True, note
    # A speed preset with its LoRA: the note says what it costs against quality.
    fast = [*defaults[:3], 0, *defaults[4:10], "guide", "turbo", "taylorseer", "lightx2v_4step:1.0", *defaults[14:]]
    fast_plan, _table, _figure, fast_note, _state = _fn(blocks, "on_plan")(state, None, None, *fast)
    assert fast_plan["preset"] == "turbo" and list(fast_plan["loras"]) == ["lightx2v_4step:1.0"], fast_note
    assert "of quality, preset **turbo**" in fast_note and fast_plan["cache"] == "taylorseer:5", fast_note
    assert fast_plan["motion"] == "guide", fast_note
    # Edit the first prompt in the table: the edit must survive a re-plan as wan_prompts.
    rows[0][6] = "a red fox in the snow"
    plan_dict, table, figure, note, state = _fn(blocks, "on_plan")(state, rows, plan_dict, *defaults)
    assert state.get("wan_prompts") and _value(table)[0][6] == "a red fox in the snow", state.get("wan_prompts")
    wider = ["", 64, 48, *defaults[3:]]
    new_plan, note = _fn(blocks, "on_plan_note")(state, rows, plan_dict, *wider)
    assert "64×48" in note and (new_plan["width"], new_plan["height"]) == (64, 48), note
    assert _fn(blocks, "on_plan")(None, None, None, *defaults)[1] == gr.update(visible=False)
    # API wiring: only the command-line flags add the routes (no settings option does).
    from fastapi import FastAPI

    from deforum_wan.service import api

    app = FastAPI()
    for fn in registered["on_app_started"]:
        fn(demo, app)
    assert not api.has_routes(app), "routes without --api or --deforum-wan-api"
    sys.modules["modules.shared"].cmd_opts = types.SimpleNamespace(api=True, deforum_wan_api=False)
    for fn in registered["on_app_started"]:
        fn(demo, app)
    assert api.has_routes(app), "--api did not add the API routes"
    latest = _fn(blocks, "on_latest")()
    assert latest[0] is None and "No Deforum settings" in latest[2], latest
    check_imports(blocks, root)
    check_init_image(blocks, root, state, defaults)
    return {"gradio": gr.__version__, "components": len(config["components"]), "clips": len(rows),
            "python": sys.version.split()[0]}


def check_standalone() -> dict:
    """The standalone app serves its page (the same tab) through FastAPI."""
    from fastapi.testclient import TestClient

    from deforum_wan.webui.standalone import build_app

    root = Path(tempfile.mkdtemp(prefix="deforum-wan-app-"))
    app = build_app(str(root / "outputs"), str(root / "models"))
    with TestClient(app) as client:
        page = client.get("/")
        assert page.status_code == 200 and "gradio" in page.text.lower(), page.status_code
        config = client.get("/config").json()
        ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
        assert "tab_deforum_wan" in ids and "deforum_wan_generate" in ids
    return {"standalone_components": len(config["components"])}


def main(argv: list[str]) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("DEFORUM_WAN_JOBS_DB", str(Path(tempfile.mkdtemp(prefix="deforum-wan-jobs-")) / "jobs.sqlite3"))
    settings = Path(argv[1]) if len(argv) > 1 else DEFAULT_SETTINGS
    try:
        seen = check(settings)
        seen.update(check_standalone())
    except Exception:
        traceback.print_exc()
        return 1
    print(json.dumps(seen))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
