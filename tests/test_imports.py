"""The web UI imports our entry script at every start: it must not pull in torch."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers", "accelerate", "cv2", "ray")  # ray: farmdriver.py, its own process
PKG = REPO / "scripts" / "deforum_wan"
# Every module of the package: the web UI may import any of them (torch comes later, inside functions).
MODULES = sorted(
    ".".join(p.relative_to(PKG.parent).with_suffix("").parts).removesuffix(".__init__")
    for p in PKG.rglob("*.py") if p.name != "__main__.py"
)

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
    assert len(MODULES) > 40 and "deforum_wan.renderer.pipelines" in MODULES  # the walk found the package
    code = "\n".join(f"import {m}" for m in MODULES)
    assert _heavy_after(code) == []
