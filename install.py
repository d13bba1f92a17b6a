"""Run by the web UI (Automatic1111 1.10 / Forge) at every start, in its own python.

Two steps, both idempotent and quick when nothing is missing:
1. the few light packages the hosts do not pin (numexpr, imageio-ffmpeg) go into
   the host's environment, and only when missing: nothing the host has is upgraded;
2. the renderer's newer diffusers/transformers/accelerate, and a torch of its
   own when the host's is older than 2.6 (stock A1111 and Forge), go into the
   extension's private `.deps/` folder (scripts/deforum_wan/deps.py and
   torchenv.py), which only the worker process sees. A manifest makes the next
   start a file read with no pip call.

A failure here never stops the web UI: it prints one line saying what to run.
DEFORUM_WAN_SKIP_DEPS=1 skips step 2 (e.g. when DEFORUM_WAN_WORKER_PYTHON points
at a python that has the renderer's libraries itself).
"""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.join(ROOT, "scripts")
if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)

HOST_REQUIREMENTS = {
    # import name: pip requirement (installed only when the module is missing)
    "numexpr": "numexpr>=2.8",
    "imageio_ffmpeg": "imageio-ffmpeg>=0.4.9",
}


def install_host_requirements(launch) -> None:
    """Only missing packages, through the host's own pip wrapper; nothing pinned is touched."""
    for module, requirement in HOST_REQUIREMENTS.items():
        if not launch.is_installed(module):
            launch.run_pip(f'install "{requirement}"', f"Deforum Wan requirement: {requirement}")


def install_private_folder() -> int:
    if os.environ.get("DEFORUM_WAN_SKIP_DEPS"):
        print("Deforum Wan: DEFORUM_WAN_SKIP_DEPS is set; the private renderer libraries are not checked")
        return 0
    try:
        from deforum_wan.service import deps

        return deps.install_private_deps()
    except Exception as exc:  # the web UI must start anyway; the tab says renders cannot run yet
        print(f"Deforum Wan: could not prepare the renderer libraries ({type(exc).__name__}: {exc}); "
              f'retry with: "{sys.executable}" "{os.path.abspath(__file__)}"')
        return 1


def main() -> int:
    try:
        import launch  # the web UI puts its root on PYTHONPATH for installers
    except ImportError:
        launch = None
    if launch is not None:
        try:
            install_host_requirements(launch)
        except Exception as exc:
            print(f"Deforum Wan: could not install a light requirement: {exc}")
    install_private_folder()
    return 0  # never fail the web UI's start; the line above says what is wrong


if __name__ == "__main__":
    raise SystemExit(main())
