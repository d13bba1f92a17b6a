"""Render events shown in a terminal: tqdm bars for clips and denoising steps."""
from __future__ import annotations

import sys
from typing import Any


class ConsoleProgress:
    """An `on_event` callback that draws two bars (clips, steps of the current clip) and prints messages."""

    def __init__(self, stream: Any = None):
        self.stream = stream or sys.stderr
        self.clips = None
        self.steps = None

    def __enter__(self) -> "ConsoleProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        for bar in (self.steps, self.clips):
            if bar is not None:
                bar.close()

    def _print(self, text: str) -> None:
        from tqdm import tqdm

        tqdm.write(text, file=self.stream)

    def __call__(self, event: dict) -> None:
        from tqdm import tqdm

        kind = event.get("type")
        if kind == "start":
            self._print(f"rendering {event['frames_total']} frames in {event['clips']} clips into {event['folder']}"
                        + (f" (resuming with {event['frames_on_disk']} on disk)" if event.get("resumed") else ""))
            self.clips = tqdm(total=event["clips"], desc="clips", unit="clip", file=self.stream, position=0)
        elif kind == "clip":
            if self.clips is not None:
                self.clips.n = event["clip"]
                self.clips.refresh()
            if self.steps is not None:
                self.steps.close()
            self.steps = tqdm(total=None, desc=f"clip {event['clip'] + 1} {event['mode']}", unit="step",
                              file=self.stream, position=1, leave=False)
        elif kind == "step" and self.steps is not None:
            self.steps.total = event["steps"]
            self.steps.n = event["step"]
            self.steps.set_postfix(eta=f"{event['eta_seconds']:.0f}s", frames=event["frames_written"])
        elif kind == "frames" and self.clips is not None:
            self.clips.n = event["clip"] + 1
            self.clips.refresh()
        elif kind in ("warning", "error"):
            self._print(f"{kind}: {event['message']}")
        elif kind == "status":
            self._print(event["message"])
