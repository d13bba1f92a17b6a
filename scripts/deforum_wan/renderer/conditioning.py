"""What each clip is conditioned on, and the images behind it.

A clip starts from text (T2V), from a picture (I2V: the init image, a guided image or
the previous clip's last frame) or from known frames (VACE: the previous clip's last
K frames, then the motion guide's pictures or, in Video Input mode, its span of the
source video; guided images kept at their frames). This module builds that request
for each clip, reads the images the render needs (checked before any model loads),
and anchors every clip's colours to one reference.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import outputs
from .errors import InputError
from .frames import ColorReference, fit_image, match_to_reference
from .kept_images import check_kept_images, clip_images, pin, start_image, starts_from_init, with_kept
from .kept_images import read_image as load_image  # checked: an image PIL reads, at most 8192 px a side
from .pipelines import ClipRequest
from ..core.plan import Clip, ClipPlan
from ..core.settings import DeforumSettings
from ..core.specs import I2V, T2V, VACE
from ..core.video_input import VIDEO_INPUT


def check_images(plan: ClipPlan, settings: DeforumSettings) -> None:
    """Read the images the render will need (the init image, the colour reference) before any model loads."""
    if starts_from_init(plan) and settings.animation_mode != VIDEO_INPUT:  # Video Input starts from its source
        load_image(str(settings.init_image))
    check_kept_images(plan)  # guided images (core/guided.py)
    if plan.color_match and plan.color_reference == "image":
        load_image(str(plan.color_image), field="color_coherence_image_path")


def render_clip(pipelines: Any, plan: ClipPlan, clip: Clip, tail: np.ndarray | None,
                 settings: DeforumSettings, on_step: Callable[[int, int], bool],
                 on_preview: Callable[[int, int, np.ndarray], None] | None = None, preview_every: int = 0,
                 depth: Any = None, source: Any = None) -> np.ndarray:
    """One clip's frames from the loaded pipelines, conditioned as its mode and the plan say."""
    request = ClipRequest(
        prompt=clip.render_prompt, negative_prompt=clip.negative_prompt, num_frames=clip.num_frames,
        width=plan.width, height=plan.height, steps=clip.steps, guidance=clip.guidance, guidance_2=clip.guidance_2,
        seed=clip.seed,
        flow_shift=clip.flow_shift, on_step=on_step, on_preview=on_preview, preview_every=preview_every,
        scheduler=plan.scheduler, scheduler_options=tuple(sorted(plan.scheduler_options.items())),
    )
    if source is not None:  # Video Input: the clip restyles its span of the source video (renderer/source_video.py)
        return pipelines.vace(source.request(plan, clip, tail, request))
    if clip.mode == T2V:
        return pipelines.t2v(request)
    images = clip_images(plan, clip)  # guided images this clip keeps (renderer/kept_images.py)
    if tail is None and start_image(clip, images) is not None:  # an I2V clip started from a guided image
        tail = start_image(clip, images)[None]
    elif tail is None and plan.bootstrap:  # the guide's first picture: frame 0 of a short T2V render of this clip
        tail = pipelines.t2v(replace(request, num_frames=5, on_preview=None, preview_every=0))[:1]
    elif tail is None and clip.overlap:  # the first clip, started from the settings' init image
        tail = fit_image(load_image(str(settings.init_image)), plan.width, plan.height)[None]
    if clip.mode == I2V:
        return pin(clip, pipelines.i2v(with_kept(replace(request, image=tail[-1]), clip, images)), images)
    if clip.mode == VACE:  # a first clip keeping guided images may start from nothing (overlap 0)
        request = replace(request, known_frames=list(tail[-clip.overlap:]) if clip.overlap else [])
        if plan.motion != "words":  # the camera path as a warped picture (renderer/guide.py)
            from .guide import clip_guide

            guide = clip_guide(settings, plan, clip, tail[-1], depth_model=depth.get() if depth else None)
            request = replace(request, guide_frames=guide.frames, conditioning_scale=guide.scale)
        return pin(clip, pipelines.vace(with_kept(request, clip, images)), images)
    raise InputError(f"clip {clip.index}: unknown mode {clip.mode!r}")


class ColorAnchor:
    """Every clip matched to one fixed reference, as Deforum's color_coherence does, so drift cannot build up.

    The reference is color_coherence_image_path (color_coherence Image), else the init image when the
    render starts from one, else output frame 0 (the first clip is then the reference and left as it is;
    on resume frame 0 is read back from disk).
    """

    def __init__(self, plan: ClipPlan, settings: DeforumSettings, folder: Path, timestring: str):
        self.plan, self.settings, self.folder, self.timestring = plan, settings, folder, timestring
        self.reference: ColorReference | None = None
        # Whether frame 0 was on disk when the render began (a resume), not when the first clip ends: across
        # GPUs, rank 0 may have written it by the time another rank's first clip ends.
        self.resumed = outputs.contiguous_frames(folder, timestring) > 0

    def match(self, clip: Clip, frames: np.ndarray) -> np.ndarray:
        space = self.plan.color_space
        if not (self.plan.color_match and space):
            return frames
        if self.reference is None:
            image = self._reference_image()
            if image is None:  # the first clip of a text-started render is the reference itself
                self.reference = ColorReference.from_frames(frames[clip.sources[0][0]], space)
                return frames
            self.reference = ColorReference.from_frames(image, space)
        return match_to_reference(frames, self.reference)

    def _reference_image(self) -> np.ndarray | None:
        plan = self.plan
        if plan.color_reference == "image":
            return load_image(str(plan.color_image), field="color_coherence_image_path")
        if starts_from_init(plan) and self.settings.animation_mode != VIDEO_INPUT:  # (Video Input: its source)
            return fit_image(load_image(str(self.settings.init_image)), plan.width, plan.height)
        first = self.folder / outputs.frame_name(self.timestring, 0)
        if self.resumed:
            from PIL import Image

            return np.asarray(Image.open(first).convert("RGB"))
        return None
