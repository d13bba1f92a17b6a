"""Render through the bridge the way the web UI does, from a host env's python; print one JSON summary line.

Run as `<host python> tests/host_render_check.py MODELS_DIR OUTDIR`, with
DEFORUM_WAN_DEPS_DIR naming the private folder that install.py filled for that
host. The worker is started with the host's own python (WorkerConfig's
default), exactly as inside Automatic1111 or Forge.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from deforum_wan.service import bridge
from deforum_wan.renderer import outputs


def main(models: str, outdir: str) -> int:
    job = {
        "settings": {"prompts": {"0": "a red fox", "8": "a blue bird"}, "max_frames": 17, "fps": 16, "W": 32, "H": 32,
                     "seed": 5, "batch_name": "hostcheck", "animation_mode": "3D",
                     "translation_x": "0:(0), 8:(2*sin(t/5))"},
        "model": str(Path(models) / "tiny-wan2.1-vace"), "outdir": outdir,
        "options": {"steps": 2, "max_clip_frames": 9, "seed": 7},
    }
    events: list[dict] = []
    outcome = bridge.run_job(job, on_event=events.append, config=bridge.WorkerConfig())
    environment = next((e for e in events if e.get("type") == "environment"), None)
    video = outcome.video
    frames = outputs.probe_video(video) if video else None
    print(json.dumps({"status": outcome.status, "error": outcome.error, "frames_on_disk": outcome.frames_on_disk,
                      "frames_total": outcome.frames_total, "video": video, "video_frames": frames,
                      "environment": environment, "worker": next((e for e in events if e.get("type") == "worker"), None),
                      "host_torch": _host_torch()}, default=str))
    return 0 if outcome.status == "done" else 1


def _host_torch() -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2]))
