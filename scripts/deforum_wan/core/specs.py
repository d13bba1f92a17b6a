"""What each kind of Wan model can do: frame rate, clip length, size multiple, modes.

The plan needs these facts to cut a Deforum timeline into clips, and it must stay
pure, so they live here as plain data rather than on loaded pipelines. `models.py`
maps a folder on disk to one of these specs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

T2V = "t2v"
I2V = "i2v"
VACE = "vace"
MODES = (T2V, I2V, VACE)

# The model kind used when none is named: the CLI's --model default and the job queue's first
# choice. VACE because chained clips continue each other by design: VACE carries the previous
# clip's last frames into the next (and renders the first clip as T2V), so one model gives the
# continuous render the plan is built for; a T2V-only model renders independent clips.
DEFAULT_MODEL_KIND = VACE
# Which model a job or the tab takes when none is named: the default first, then the best continuity.
DEFAULT_KIND_ORDER = (DEFAULT_MODEL_KIND,) + tuple(
    k for k in ("vace", "ti2v-5b", "t2v", "a14b-t2v", "i2v", "a14b-i2v", "flf2v") if k != DEFAULT_MODEL_KIND)


@dataclass(frozen=True)
class ModelSpec:
    """Limits of one Wan model kind, as the plan sees them."""

    kind: str
    label: str
    native_fps: int
    max_frames: int  # largest clip, a 4n+1 count
    size_multiple: int  # width and height must be multiples of this
    modes: tuple[str, ...]  # which clip modes this model can render
    default_guidance: float = 5.0
    default_flow_shift: float = 3.0
    default_steps: int = 30

    def supports(self, mode: str) -> bool:
        return mode in self.modes


MODEL_SPECS: dict[str, ModelSpec] = {
    spec.kind: spec
    for spec in (
        ModelSpec("t2v", "Wan2.1 T2V", 16, 81, 16, (T2V,)),
        ModelSpec("i2v", "Wan2.1 I2V", 16, 81, 16, (I2V,), default_flow_shift=3.0),
        ModelSpec("flf2v", "Wan2.1 FLF2V", 16, 81, 16, (I2V,), default_flow_shift=16.0),
        ModelSpec("vace", "Wan2.1 VACE", 16, 81, 16, (T2V, VACE)),
        ModelSpec("ti2v-5b", "Wan2.2 TI2V-5B", 24, 121, 32, (T2V, I2V), default_flow_shift=5.0),
        ModelSpec("a14b-t2v", "Wan2.2 T2V-A14B", 16, 81, 16, (T2V,), default_guidance=4.0, default_steps=40),
        ModelSpec("a14b-i2v", "Wan2.2 I2V-A14B", 16, 81, 16, (I2V,), default_guidance=3.5, default_steps=40),
    )
}


def model_spec(kind: str) -> ModelSpec:
    """Look up a kind by name, with an error that lists the known ones."""
    try:
        return MODEL_SPECS[kind]
    except KeyError:
        known = ", ".join(sorted(MODEL_SPECS))
        raise ValueError(f"unknown model kind {kind!r}; known kinds: {known}") from None


def default_models_dir() -> Path:
    """Where Wan models live unless told otherwise: $DEFORUM_WAN_MODELS, else ./models/wan.

    Here rather than beside the model loader because the enhancer and the web UI
    look for models too, and neither should import the renderer for a path.
    """
    env = os.environ.get("DEFORUM_WAN_MODELS")
    return Path(env).expanduser() if env else Path("models") / "wan"
