"""Import cost of the web-UI entry script, in fresh processes, next to `import json` as a baseline.

The web UI imports scripts/deforum_wan_tab.py at every start, so what it costs is
paid by every user of the host, Wan tab used or not. Each sample is a new python
process (nothing cached in sys.modules); we report the median of N of the time
spent inside the import (perf_counter around it), so interpreter start-up is not
counted. A fake `modules` package stands in for the web UI, as in tests/test_imports.py.

    python benchmarks/bench_import.py [-n 15] [--python PATH]
    python benchmarks/bench_import.py --webui /path/to/stable-diffusion-webui [-n 7]

With --webui, each sample starts that web UI's own python in its folder, imports
its `modules.script_callbacks` (as the web UI has before loading scripts) and
times `script_loading.load_module` of the entry script, the way the web UI loads
it, next to a minimal extension script that registers the same three callbacks
the usual way (the host's public on_* functions).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENTRY = REPO / "scripts" / "deforum_wan_tab.py"

FAKE_HOST = textwrap.dedent(
    """
    import sys, types
    modules = types.ModuleType("modules")
    modules.__path__ = []
    cb = types.ModuleType("modules.script_callbacks")
    for name in ("on_ui_tabs", "on_ui_settings", "on_app_started"):
        setattr(cb, name, lambda fn: None)
    shared = types.ModuleType("modules.shared")
    modules.script_callbacks, modules.shared = cb, shared
    sys.modules.update({"modules": modules, "modules.script_callbacks": cb, "modules.shared": shared})
    """
)

CASES = {
    "import json": "import json",
    "deforum_wan_tab.py": f"import runpy; runpy.run_path({str(ENTRY)!r})",
}
HEAVY = ("torch", "diffusers", "transformers", "gradio", "matplotlib")


def sample(python: str, code: str) -> tuple[float, list[str]]:
    probe = FAKE_HOST + textwrap.dedent(
        f"""
        import time
        t0 = time.perf_counter()
        {code}
        t1 = time.perf_counter()
        import json, sys
        print(json.dumps([t1 - t0, [m for m in {HEAVY!r} if m in sys.modules]]))
        """
    )
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO)
    seconds, heavy = json.loads(out.stdout.strip().splitlines()[-1])
    return seconds, heavy


WEBUI_PROBE = textwrap.dedent(
    """
    import json, sys, time
    sys.argv = ARGV
    from modules import script_callbacks, script_loading
    before = set(sys.modules)
    t0 = time.perf_counter()
    script_loading.load_module(SCRIPT)
    t1 = time.perf_counter()
    print(json.dumps([t1 - t0, [m for m in HEAVY if m in sys.modules and m not in before]]))
    """
)


MINIMAL_EXTENSION = textwrap.dedent(
    """
    from modules import script_callbacks

    def noop(*args):
        return None

    script_callbacks.on_ui_tabs(noop)
    script_callbacks.on_ui_settings(noop)
    script_callbacks.on_app_started(noop)
    """
)


def sample_webui(webui: Path, script: Path) -> tuple[float, list[str]]:
    python = webui / ("venv/Scripts/python.exe" if sys.platform == "win32" else "venv/bin/python")
    argv = ["webui", "--always-cpu"] if (webui / "modules_forge").is_dir() else ["webui"]  # Forge wants a device
    code = (WEBUI_PROBE.replace("SCRIPT", repr(str(script))).replace("ARGV", repr(argv))
            .replace("HEAVY", repr(HEAVY)))
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True, cwd=webui)
    seconds, heavy = json.loads(out.stdout.strip().splitlines()[-1])
    return seconds, heavy


def report(name: str, samples: list[tuple[float, list[str]]]) -> None:
    times = [s for s, _ in samples]
    heavy = sorted({m for _, loaded in samples for m in loaded})
    print(f"  {name:<28} median {statistics.median(times) * 1000:7.2f} ms   "
          f"min {min(times) * 1000:7.2f} ms   heavy modules: {', '.join(heavy) or 'none'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=15, help="fresh processes per case")
    parser.add_argument("--python", default=sys.executable, help="interpreter to measure (e.g. a host env's)")
    parser.add_argument("--webui", type=Path, help="a web UI folder (A1111 or Forge) with its venv/: load as it loads")
    args = parser.parse_args(argv)
    if args.webui:
        print(f"{args.webui}: script_loading.load_module, median of {args.n} fresh processes")
        with tempfile.TemporaryDirectory() as tmp:
            minimal = Path(tmp) / "minimal_extension.py"
            minimal.write_text(MINIMAL_EXTENSION, encoding="utf-8")
            for name, script in (("minimal extension (3 on_*)", minimal), ("deforum_wan_tab.py", ENTRY)):
                report(name, [sample_webui(args.webui, script) for _ in range(args.n)])
        return 0
    print(f"{args.python}: median of {args.n} fresh processes")
    for name, code in CASES.items():
        report(name, [sample(args.python, code) for _ in range(args.n)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
