"""Live previews while a clip denoises: Wan latents -> a small RGB image, without the VAE.

Why not decode: Wan's VAE is the slow, memory-hungry part of a clip (seconds and
gigabytes of GPU memory for one decode), so it cannot run every few steps. Each
latent channel is close to a linear mix of red, green and blue, so one 16x3 (or
48x3) matrix product per latent pixel gives a blurry but faithful picture of where
the clip is heading. ComfyUI ("latent2rgb") and Wan2GP preview Wan the same way.
It reads one latent frame that the pipelines layer has already copied to the CPU
(16 x 60 x 104 floats at 480p, 0.4 MB): no model, no VAE, no extra GPU memory.

The projection (`latent_to_rgb`, `preview_image`) is pure numpy (PIL only resizes);
`PreviewFiles` keeps the image beside the frames under hidden names, so Deforum's
frame naming and resume never see it, and removes it when the render ends.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from . import outputs

log = logging.getLogger(__name__)

DEFAULT_EVERY = 4  # a preview every 4th denoising step (and at each clip's last step)
MAX_SIDE = 256  # previews are at most this many pixels on their long side

# Latent -> RGB factors and bias from ComfyUI, comfy/latent_formats.py, classes Wan21 and Wan22
# (`latent_rgb_factors`, `latent_rgb_factors_bias`; https://github.com/comfyanonymous/ComfyUI).
# One row per latent channel: its contribution to (R, G, B) in [-1, 1], applied to the
# normalised latents ((z - latents_mean) / latents_std), which is the space diffusers'
# Wan pipelines denoise in. Wan 2.1 VAE: 16 channels, 8x spatial; Wan 2.2 VAE (TI2V-5B):
# 48 channels, 16x spatial.
WAN21_RGB_FACTORS = (
    (-0.1299, -0.1692, 0.2932),
    (0.0671, 0.0406, 0.0442),
    (0.3568, 0.2548, 0.1747),
    (0.0372, 0.2344, 0.1420),
    (0.0313, 0.0189, -0.0328),
    (0.0296, -0.0956, -0.0665),
    (-0.3477, -0.4059, -0.2925),
    (0.0166, 0.1902, 0.1975),
    (-0.0412, 0.0267, -0.1364),
    (-0.1293, 0.0740, 0.1636),
    (0.0680, 0.3019, 0.1128),
    (0.0032, 0.0581, 0.0639),
    (-0.1251, 0.0927, 0.1699),
    (0.0060, -0.0633, 0.0005),
    (0.3477, 0.2275, 0.2950),
    (0.1984, 0.0913, 0.1861),
)
WAN21_RGB_BIAS = (-0.1835, -0.0868, -0.3360)

WAN22_RGB_FACTORS = (
    (0.0119, 0.0103, 0.0046),
    (-0.1062, -0.0504, 0.0165),
    (0.0140, 0.0409, 0.0491),
    (-0.0813, -0.0677, 0.0607),
    (0.0656, 0.0851, 0.0808),
    (0.0264, 0.0463, 0.0912),
    (0.0295, 0.0326, 0.0590),
    (-0.0244, -0.0270, 0.0025),
    (0.0443, -0.0102, 0.0288),
    (-0.0465, -0.0090, -0.0205),
    (0.0359, 0.0236, 0.0082),
    (-0.0776, 0.0854, 0.1048),
    (0.0564, 0.0264, 0.0561),
    (0.0006, 0.0594, 0.0418),
    (-0.0319, -0.0542, -0.0637),
    (-0.0268, 0.0024, 0.0260),
    (0.0539, 0.0265, 0.0358),
    (-0.0359, -0.0312, -0.0287),
    (-0.0285, -0.1032, -0.1237),
    (0.1041, 0.0537, 0.0622),
    (-0.0086, -0.0374, -0.0051),
    (0.0390, 0.0670, 0.2863),
    (0.0069, 0.0144, 0.0082),
    (0.0006, -0.0167, 0.0079),
    (0.0313, -0.0574, -0.0232),
    (-0.1454, -0.0902, -0.0481),
    (0.0714, 0.0827, 0.0447),
    (-0.0304, -0.0574, -0.0196),
    (0.0401, 0.0384, 0.0204),
    (-0.0758, -0.0297, -0.0014),
    (0.0568, 0.1307, 0.1372),
    (-0.0055, -0.0310, -0.0380),
    (0.0239, -0.0305, 0.0325),
    (-0.0663, -0.0673, -0.0140),
    (-0.0416, -0.0047, -0.0023),
    (0.0166, 0.0112, -0.0093),
    (-0.0211, 0.0011, 0.0331),
    (0.1833, 0.1466, 0.2250),
    (-0.0368, 0.0370, 0.0295),
    (-0.3441, -0.3543, -0.2008),
    (-0.0479, -0.0489, -0.0420),
    (-0.0660, -0.0153, 0.0800),
    (-0.0101, 0.0068, 0.0156),
    (-0.0690, -0.0452, -0.0927),
    (-0.0145, 0.0041, 0.0015),
    (0.0421, 0.0451, 0.0373),
    (0.0504, -0.0483, -0.0356),
    (-0.0837, 0.0168, 0.0055),
)
WAN22_RGB_BIAS = (0.0317, -0.0878, -0.1388)

# channels -> (factors [C, 3], bias [3], VAE spatial stride)
_FORMATS = {
    16: (np.asarray(WAN21_RGB_FACTORS, np.float32), np.asarray(WAN21_RGB_BIAS, np.float32), 8),
    48: (np.asarray(WAN22_RGB_FACTORS, np.float32), np.asarray(WAN22_RGB_BIAS, np.float32), 16),
}


def due(step: int, total: int, every: int) -> bool:
    """Whether step `step` (1-based) of `total` gets a preview: every `every`th step and the last one; 0 = never."""
    return every > 0 and (step % every == 0 or step >= total)


def middle_frame(latents: Any) -> Any:
    """The middle latent frame [C, h, w] of latents [B, C, T, h, w] or [C, T, h, w] (numpy or torch, no copy).

    The middle rather than the first: a continuation clip's first frames are the
    known frames it starts from, the middle shows what is being made.
    """
    if latents.ndim == 5:
        return latents[0, :, latents.shape[2] // 2]
    if latents.ndim == 4:
        return latents[:, latents.shape[1] // 2]
    raise ValueError(f"expected latents shaped [B, C, T, h, w] or [C, T, h, w], got {tuple(latents.shape)}")


def latent_to_rgb(latent: np.ndarray) -> np.ndarray:
    """One latent frame [C, h, w] (C = 16 or 48) -> uint8 RGB [h, w, 3] at latent resolution."""
    latent = np.asarray(latent, dtype=np.float32)
    if latent.ndim != 3:
        raise ValueError(f"expected one latent frame shaped [C, h, w], got {latent.shape}")
    fmt = _FORMATS.get(latent.shape[0])
    if fmt is None:
        raise ValueError(f"no latent->RGB factors for {latent.shape[0]} channels (Wan uses 16, or 48 for TI2V-5B)")
    factors, bias = fmt[0], fmt[1]
    rgb = np.tensordot(latent, factors, axes=([0], [0])) + bias  # [h, w, 3], about -1..1
    return np.clip((rgb + 1.0) * 127.5, 0.0, 255.0).round().astype(np.uint8)


def preview_size(width: int, height: int, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """(width, height) with the same aspect, at most `max_side` on the long side; never enlarged."""
    scale = min(1.0, max_side / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def preview_image(latent: np.ndarray, size: tuple[int, int] | None = None, max_side: int = MAX_SIDE) -> np.ndarray:
    """One latent frame -> uint8 RGB [H, W, 3]: the clip's `size` (width, height) fitted into `max_side`.

    Without `size`, the latent's pixel size (its VAE's stride times the latent size) is used.
    """
    from PIL import Image

    rgb = latent_to_rgb(latent)
    h, w = rgb.shape[:2]
    if size is None:
        stride = _FORMATS[np.shape(latent)[0]][2]
        size = (w * stride, h * stride)
    target = preview_size(int(size[0]), int(size[1]), max_side)
    if target == (w, h):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize(target, Image.BILINEAR))


class PreviewFiles:
    """The preview images of one render: hidden files beside its frames, removed at the end.

    Two names take turns so that each preview has a new path: a viewer that only
    reloads when the path changes (the tab) sees every one, and the file it is
    reading is not replaced under it until the preview after next.
    """

    def __init__(self, folder: Path, timestring: str) -> None:
        self.folder, self.timestring = Path(folder), timestring
        self.count = 0

    def path(self, n: int) -> Path:
        return self.folder / f".{self.timestring}_preview{n % 2}.png"

    def write(self, image: np.ndarray) -> Path | None:
        """Write atomically; None if it could not be written (a preview never stops a render)."""
        path = self.path(self.count)
        try:
            outputs.write_png(path, image, compress_level=1)
        except OSError as exc:  # e.g. a full disk, or a reader holding the file on Windows
            log.debug("preview %s not written: %s", path, exc)
            return None
        self.count += 1
        return path

    def remove(self) -> None:
        for n in (0, 1):
            try:
                self.path(n).unlink(missing_ok=True)
            except OSError:
                log.debug("cannot remove %s", self.path(n), exc_info=True)
