"""Glue to the host web UI (A1111 or Forge): options and callbacks.

Imported only inside the web UI; `modules` is the host's package.
"""
from __future__ import annotations

SECTION = ("deforum_wan", "Deforum Wan")


def on_ui_settings() -> None:
    from modules import shared

    shared.opts.add_option(
        "deforum_wan_models_dir",
        shared.OptionInfo("", "Wan models folder (empty: <models>/wan)", section=SECTION),
    )


def register() -> None:
    from modules import script_callbacks

    script_callbacks.on_ui_settings(on_ui_settings)
