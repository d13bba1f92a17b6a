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
                "deforum_wan_model", "deforum_wan_enhance_preview", "deforum_wan_environment_check")


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


def check(settings_path: Path) -> dict:
    import gradio as gr

    root = Path(tempfile.mkdtemp(prefix="deforum-wan-host-"))
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

    # The import and plan handlers on a real Deforum file.
    state, summary, status, _plan = _fn(blocks, "on_load")(str(settings_path))
    assert state and "frames" in summary, status
    defaults = ["", 32, 32, 2, 0, "auto", 0, True, "auto", False, "", 0.5, ""]
    plan_dict, table, figure, note, state = _fn(blocks, "on_plan")(state, None, None, *defaults)
    rows = _value(table)
    assert plan_dict and rows and figure is not None, note
    # Edit the first prompt in the table: the edit must survive a re-plan as wan_prompts.
    rows[0][6] = "a red fox in the snow"
    plan_dict, table, figure, note, state = _fn(blocks, "on_plan")(state, rows, plan_dict, *defaults)
    assert state.get("wan_prompts") and _value(table)[0][6] == "a red fox in the snow", state.get("wan_prompts")
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
