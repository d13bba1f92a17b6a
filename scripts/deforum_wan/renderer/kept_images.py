"""The images clips keep (guided images, the init image): read and checked, handed to the pipelines, shown.

The plan (core/guided.py) says which clip keeps which image at which Wan frame. Here
each image is read once before any model loads (a path, or an http(s) URL through
renderer/fetch.py's SSRF rules), checked to be an image PIL reads and at most
fetch.MAX_IMAGE_SIDE a side (a text file, an SVG or a decompression bomb is refused,
naming its field), fitted to the render size, and given to the clip's request: a VACE
clip as a kept frame (`ClipRequest.keep_at`, mask black), an FLF2V clip as its
`last_image`. The model re-renders a kept frame, so the clip's Wan frame there is
replaced by the image itself and the output frame that shows it is that Wan frame:
the image appears where the settings put it, after the render's colour matching.
"""
from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from . import fetch
from .errors import InputError
from .frames import fit_image
from .pipelines import ClipRequest
from ..core.guided import FIRST, INIT, KEEP, LAST
from ..core.plan import Clip, ClipPlan
from ..core.specs import T2V


def read_image(source: str, policy: fetch.FetchPolicy | None = None, field: str = "init_image") -> np.ndarray:
    """An RGB image from a local path or an http(s) URL, checked for type and size; errors name `field`."""
    from PIL import Image

    try:
        if fetch.is_url(source):
            data = fetch.fetch(source.strip(), fetch.IMAGE, policy).data  # checks the image itself
        else:
            path = Path(source).expanduser()
            if path.stat().st_size > fetch.MAX_BYTES[fetch.IMAGE]:
                raise fetch.FetchError(f"the file is larger than {fetch.MAX_BYTES[fetch.IMAGE] // 2**20} MB")
            data = path.read_bytes()
            fetch.check_image(data)  # PIL reads it (not text, not SVG), at most MAX_IMAGE_SIDE a side
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except Exception as exc:
        raise InputError(f"{field} {source!r} cannot be read: {exc}") from None


def _guided(clip: Clip) -> list[Any]:
    return [k for k in clip.kept if k.role != INIT]  # the init image reaches a clip as its start frame


def check_kept_images(plan: ClipPlan, policy: fetch.FetchPolicy | None = None) -> None:
    """Read every guided image the plan keeps, before any model loads: the first bad one is named."""
    seen: set[str] = set()
    for clip in plan.clips:
        for kept in _guided(clip):
            if kept.source not in seen:
                read_image(kept.source, policy, kept.field)
                seen.add(kept.source)


def clip_images(plan: ClipPlan, clip: Clip) -> dict[str, np.ndarray]:
    """The clip's guided images, fitted to the render size (scaled to cover, centre cropped): source -> image."""
    return {k.source: fit_image(read_image(k.source, field=k.field), plan.width, plan.height) for k in _guided(clip)}


def start_image(clip: Clip, images: dict[str, np.ndarray]) -> np.ndarray | None:
    """The guided image a first I2V clip starts from (an image at frame 0 stands in for init_image), else None."""
    return next((images[k.source] for k in clip.kept if k.role == FIRST), None)


def with_kept(request: ClipRequest, clip: Clip, images: dict[str, np.ndarray]) -> ClipRequest:
    """The request with the clip's guided images: VACE kept frames (and their scale), FLF2V's last image."""
    keep = tuple((k.wan_frame, images[k.source]) for k in clip.kept if k.role == KEEP)
    last = next((images[k.source] for k in clip.kept if k.role == LAST), None)
    if keep:
        request = replace(request, keep_at=request.keep_at + keep)
    if last is not None:
        request = replace(request, last_image=last)
    if clip.keep_scale is not None:
        request = replace(request, conditioning_scale=clip.keep_scale)
    return request


def pin(clip: Clip, frames: np.ndarray, images: dict[str, np.ndarray]) -> np.ndarray:
    """The clip's Wan frames with each guided image in place of the model's version of it."""
    kept = _guided(clip)
    if not kept:
        return frames
    frames = frames.copy()
    for k in kept:
        frames[k.wan_frame] = images[k.source]
    return frames


def pin_outputs(clip: Clip, frames: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Output frames where each guided image's output frame is its (colour-matched) Wan frame, not a blend."""
    for k in _guided(clip):
        out[k.frame - clip.output_start] = frames[k.wan_frame]
    return out


def starts_from_init(plan: ClipPlan) -> bool:
    """The first clip starts from the settings' init image (not text, a bootstrap frame or a guided image)."""
    first = plan.clips[0] if plan.clips else None
    return bool(first and first.mode != T2V and not plan.bootstrap and first.overlap
                and not any(k.role == FIRST for k in first.kept))
