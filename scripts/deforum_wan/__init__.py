"""Deforum Wan: render Deforum settings and schedules with Wan video models.

The package root imports nothing heavy, so the web UI can load the extension
without paying for torch, diffusers or transformers.
"""

__version__ = "0.1.0"
