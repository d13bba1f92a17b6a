"""The web UI imports our entry script at every start: it must not pull in torch."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers", "accelerate", "cv2")
CORE = [
    "deforum_wan",
    "deforum_wan.core.settings",
    "deforum_wan.core.schedules",
    "deforum_wan.core.prompts",
    "deforum_wan.renderer.outputs",
    "deforum_wan.core.inspection",
    "deforum_wan.core.specs",
    "deforum_wan.cli",
]
OPTIONAL = ["deforum_wan.core.movement", "deforum_wan.core.plan", "deforum_wan.renderer.models", "deforum_wan.renderer.pipelines", "deforum_wan.renderer.tiny",
            "deforum_wan.renderer.render", "deforum_wan.enhance.qwen", "deforum_wan.enhance.rewrite", "deforum_wan.enhance.command", "deforum_wan.service.bridge", "deforum_wan.service.deps", "deforum_wan.service.jobs",
            "deforum_wan.service.api", "deforum_wan.webui.tab", "deforum_wan.webui.tab_data", "deforum_wan.webui.host", "deforum_wan.renderer.frames",
            "deforum_wan.core.seeds", "deforum_wan.service.worker", "deforum_wan.renderer.progress"]

FAKE_HOST = textwrap.dedent(
    """
    import sys, types
    modules = types.ModuleType("modules")
    cb = types.ModuleType("modules.script_callbacks")
    registered = []
    for name in ("on_ui_tabs", "on_ui_settings", "on_app_started"):
        setattr(cb, name, lambda fn, _n=name: registered.append(_n))
    shared = types.ModuleType("modules.shared")
    modules.script_callbacks, modules.shared = cb, shared
    sys.modules.update({"modules": modules, "modules.script_callbacks": cb, "modules.shared": shared})
    """
)


def _heavy_after(code: str) -> list[str]:
    probe = code + f"\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_entry_script_imports_nothing_heavy():
    code = FAKE_HOST + f"\nimport runpy\nrunpy.run_path({str(REPO / 'scripts' / 'deforum_wan_tab.py')!r})\nassert registered, 'no callback registered'"
    assert _heavy_after(code) == []


def test_core_modules_import_nothing_heavy():
    import importlib.util

    present = CORE + [m for m in OPTIONAL if importlib.util.find_spec(m) is not None]
    code = "\n".join(f"import {m}" for m in present)
    assert _heavy_after(code) == []
