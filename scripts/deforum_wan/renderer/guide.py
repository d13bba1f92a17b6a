"""The VACE motion guide: the camera path itself, not words about it.

For a VACE clip with `--motion guide` (or `both`), the last frame the viewer saw
(the previous clip's last shown frame) is flown along the clip's camera path
with Deforum's own warp (core/warp.py), output frame by output frame, and each
of the clip's Wan frames after its known frames gets the warped picture of the
output frame nearest to it in time. Pixels the warp reveals are grey. VACE's
mask marks those frames as generated (255) with the warped picture as their
content: VACE encodes a masked frame's content as a reactive hint, so the model
follows the motion and the picture while free to redraw it (a mask of 0 would
copy the warped pixels, blur included). The hint's weight is the clip's
`guide_scale` (the plan maps Deforum's strength_schedule onto it).

Untested on real weights here (no GPU): the shapes, masks and timing are.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.plan import Clip, ClipPlan
from ..core.settings import DeforumSettings

GREY = 128


@dataclass(frozen=True, eq=False)
class Guide:
    """One clip's guide: a picture and a revealed-pixel mask for every Wan frame after the known ones."""

    frames: np.ndarray  # uint8 (n, height, width, 3)
    revealed: np.ndarray  # bool (n, height, width): the warp's new pixels, drawn grey in `frames`
    scale: float  # VACE conditioning scale


def wan_to_output(clip: Clip) -> list[int]:
    """For each Wan frame of the clip after its known frames, the index (within the clip's output frames) of
    the output frame nearest to it in time: the guide shows the camera where that Wan frame is."""
    positions = np.array([lo + w for lo, _hi, w in clip.sources], dtype=np.float64)
    return [int(np.abs(positions - local).argmin()) for local in range(clip.overlap, clip.num_frames)]


def clip_guide(settings: DeforumSettings, plan: ClipPlan, clip: Clip, last_shown: np.ndarray) -> Guide:
    """The guide for `clip`, flown from `last_shown` (the picture at output frame clip.output_start - 1)."""
    from PIL import Image

    from ..core.warp import fly
    from .motion_preview import scaled_path

    width, height = plan.width, plan.height
    picture = np.asarray(Image.fromarray(last_shown).convert("RGB").resize((width, height), Image.LANCZOS))
    path = scaled_path(settings, width, height)
    warped, masks = [], []
    start = clip.output_start - 1
    if start < 0:  # a first clip that VACE starts from the init image: that picture is frame 0 itself
        start = 0
        warped.append(picture)
        masks.append(np.zeros(picture.shape[:2], bool))
    for _frame, image, revealed in fly(picture, start, clip.output_end - 1, path):
        warped.append(image)
        masks.append(revealed)
    pick = wan_to_output(clip)
    frames = np.stack([warped[i] for i in pick]).copy()
    revealed = np.stack([masks[i] for i in pick])
    frames[revealed] = GREY
    return Guide(frames, revealed, float(clip.guide_scale if clip.guide_scale is not None else 1.0))
