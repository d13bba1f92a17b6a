"""Pure numpy work on rendered clips: onto the output timeline, and colour continuity.

Kept apart from `render.py` so it is tested without models: given the same Wan
frames, these functions give the same output frames.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def resample(frames: np.ndarray, sources: Sequence[tuple[int, int, float]]) -> np.ndarray:
    """Output frames from a clip's Wan frames: each is frame `lo`, or a blend towards `hi` by `w`."""
    out = np.empty((len(sources),) + frames.shape[1:], np.uint8)
    for i, (lo, hi, w) in enumerate(sources):
        if w <= 0 or lo == hi:
            out[i] = frames[lo]
        else:
            mixed = frames[lo].astype(np.float32) * (1.0 - w) + frames[hi].astype(np.float32) * w
            out[i] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return out


def color_stats(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation over a stack of frames."""
    pixels = frames.reshape(-1, frames.shape[-1]).astype(np.float64)
    return pixels.mean(axis=0), pixels.std(axis=0)


def match_colors(frames: np.ndarray, overlap: int, reference: np.ndarray) -> np.ndarray:
    """Correct a chained clip's colour drift, in the spirit of Deforum's `color_coherence`.

    The clip's first `overlap` frames re-render what the previous clip ended with
    (`reference`), so any difference in their colour statistics is the model's
    drift, not the scene's. The per-channel gain and offset that maps one onto the
    other is applied to the whole clip; a new prompt's colours still come through.
    """
    if overlap <= 0 or reference.size == 0:
        return frames
    src_mean, src_std = color_stats(frames[:overlap])
    ref_mean, ref_std = color_stats(reference)
    gain = np.where(src_std > 1e-3, ref_std / np.maximum(src_std, 1e-3), 1.0)
    gain = np.clip(gain, 0.5, 2.0)  # a flat overlap frame must not blow up the rest
    offset = ref_mean - src_mean * gain
    corrected = frames.astype(np.float32) * gain.astype(np.float32) + offset.astype(np.float32)
    return np.clip(np.rint(corrected), 0, 255).astype(np.uint8)


def fit_image(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale an image to cover width x height and crop the centre, keeping its aspect."""
    from PIL import Image

    pil = Image.fromarray(image).convert("RGB")
    scale = max(width / pil.width, height / pil.height)
    size = (max(width, round(pil.width * scale)), max(height, round(pil.height * scale)))
    pil = pil.resize(size, Image.LANCZOS)
    left, top = (pil.width - width) // 2, (pil.height - height) // 2
    return np.asarray(pil.crop((left, top, left + width, top + height)))
