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

Depth: with a depth model (renderer/depth.py) and the settings' `use_depth_warping`
on in 3D, the warp uses a predicted depth map instead of Deforum's flat one, and,
as Deforum does, a new one for every warped frame: the depth of the picture about
to be warped (the frame before), not one map of the source frame for the whole
clip. Per frame was chosen because it is cheap beside the warp itself and a clip's
Wan render. Measured on a 2-core CPU at 512x512 with the tiny test model: 7.5 ms
a prediction on one thread (0.2 s with two threads while another job held the
cores); a 3D warp step takes 70 ms with flat depth, 120 ms with a predicted map
(prediction included). Depth Anything V2 Small (25M parameters) was not timed
here: on a GPU it should take tens of milliseconds a frame, small beside minutes
of Wan sampling per clip; on a CPU expect the better part of a second a frame.
With `use_depth_warping` off Deforum drops the map, so the guide is the
flat-depth one and nothing is predicted; 2D motion never uses depth.

Untested on real weights here (no GPU): the shapes, masks and timing are.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from ..core.plan import Clip, ClipPlan
from ..core.settings import DeforumSettings
from ..core.warp import WarpPath

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


def fly_with_depth(image: np.ndarray, start: int, end: int, path: WarpPath,
                   depth_model: Any) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """core.warp.fly with a depth map predicted for every frame from the picture being warped, as Deforum's
    loop does. The revealed mask travels with the picture as a fourth channel (fly carries it the same way)."""
    from ..core.warp import warp_frame

    current = np.asarray(image, dtype=np.uint8)
    mask = np.zeros(current.shape[:2], bool)
    for frame in range(start + 1, end + 1):
        depth = depth_model.predict(current)
        stacked = np.concatenate([current, np.where(mask, 255, 0).astype(np.uint8)[..., None]], axis=2)
        out, revealed = warp_frame(stacked, frame, path, depth=depth)
        current = np.ascontiguousarray(out[..., :3])
        mask = (out[..., 3] > 127) | revealed
        yield frame, current, mask


def clip_guide(settings: DeforumSettings, plan: ClipPlan, clip: Clip, last_shown: np.ndarray,
               depth_model: Any = None) -> Guide:
    """The guide for `clip`, flown from `last_shown` (the picture at output frame clip.output_start - 1).

    `depth_model` (an object with `predict(uint8 HxWx3) -> float32 HxW`, renderer/depth.py) is used when the
    settings warp in 3D with `use_depth_warping` on; otherwise the depth is Deforum's flat one."""
    from PIL import Image

    from ..core.warp import fly, scaled_path

    width, height = plan.width, plan.height
    picture = np.asarray(Image.fromarray(last_shown).convert("RGB").resize((width, height), Image.LANCZOS))
    path = scaled_path(settings, width, height)
    warped, masks = [], []
    start = clip.output_start - 1
    if start < 0:  # a first clip that VACE starts from the init image: that picture is frame 0 itself
        start = 0
        warped.append(picture)
        masks.append(np.zeros(picture.shape[:2], bool))
    use_depth = depth_model is not None and path.animation_mode == "3D" and path.use_depth_warping
    flight = (fly_with_depth(picture, start, clip.output_end - 1, path, depth_model) if use_depth
              else fly(picture, start, clip.output_end - 1, path))
    for _frame, image, revealed in flight:
        warped.append(image)
        masks.append(revealed)
    pick = wan_to_output(clip)
    frames = np.stack([warped[i] for i in pick]).copy()
    revealed = np.stack([masks[i] for i in pick])
    frames[revealed] = GREY
    return Guide(frames, revealed, float(clip.guide_scale if clip.guide_scale is not None else 1.0))
