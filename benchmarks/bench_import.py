"""Import cost of the web-UI entry script, in fresh processes, next to `import json` as a baseline.

The web UI imports scripts/deforum_wan_tab.py at every start, so what it costs is
paid by every user of the host, Wan tab used or not. Each sample is a new python
process (nothing cached in sys.modules); we report the median of N of the time
spent inside the import (perf_counter around it), so interpreter start-up is not
counted. A fake `modules` package stands in for the web UI, as in tests/test_imports.py.

    python benchmarks/bench_import.py [-n 15] [--python PATH]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=15, help="fresh processes per case")
    parser.add_argument("--python", default=sys.executable, help="interpreter to measure (e.g. a host env's)")
    args = parser.parse_args(argv)
    print(f"{args.python}: median of {args.n} fresh processes")
    for name, code in CASES.items():
        times, heavy = [], set()
        for _ in range(args.n):
            seconds, loaded = sample(args.python, code)
            times.append(seconds)
            heavy.update(loaded)
        print(f"  {name:<20} median {statistics.median(times) * 1000:7.2f} ms   "
              f"min {min(times) * 1000:7.2f} ms   heavy modules: {', '.join(sorted(heavy)) or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
