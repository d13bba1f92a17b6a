"""Web-UI entry point: registers Deforum Wan's callbacks and nothing else.

The web UI imports every file in `scripts/` at start, so this file stays cheap:
no torch, diffusers or transformers here or in what it imports. Rendering runs
in a separate worker process with its own libraries (see DESIGN in the README).
"""
import os
import sys

_SCRIPTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _SCRIPTS_DIR not in sys.path:
    sys.path.insert(0, _SCRIPTS_DIR)

from deforum_wan.webui import host  # noqa: E402

host.register(__file__)
