"""Live previews while a clip denoises: Wan latents -> a small RGB image, without decoding.

Why not decode: Wan's VAE decoder is the slow, memory-hungry part of a clip
(seconds and gigabytes of GPU memory for one decode), so it cannot run every few
steps. Each latent channel is close to a linear mix of red, green and blue, so one
C x 3 matrix product plus a bias per latent pixel (C = 16 for the Wan 2.1 VAE, 48
for the Wan 2.2 one of TI2V-5B) gives a blurry but faithful picture of where the
clip is heading. It reads one latent frame that the pipelines layer has already
copied to the CPU (16 x 60 x 104 floats at 480p, 0.4 MB).

Where the map comes from: it is fitted from the model's own VAE the first time a
job needs previews (`map_for_vae`), so it follows whichever VAE the model ships,
fine-tuned ones included; a fixed table would only suit the VAE it was made for.
The fit encodes a few synthetic pictures (`fit_images`: the 64 colours of a 4x4x4
grid over the RGB cube as flat 64x64 patches, and two gradients; 256x256 each),
each held still for 5 frames: Wan encodes the first frame alone and each next 4
together, and the second latent frame is the kind previewed (a clip's middle).
The latents are normalised as diffusers' Wan pipelines do before denoising,
(z - latents_mean) / latents_std from the VAE config (decoding undoes it), so the
map reads the latents the denoising loop produces. Each picture is averaged down
to the latent grid (8x8 or 16x16 pixel blocks) and RGB ~ latent @ W + b is solved
by least squares with a light ridge (`solve_map`), which keeps channels the flat
pictures barely move from getting large weights. It runs under no_grad on the
VAE's device, once per VAE: the Wan 2.1 VAE encoder needs about 9 TFLOP for it
(0.2 to 1 s on a GPU), and the result is cached, in memory by the pipelines for
the job and on disk for the next loads, as $DEFORUM_WAN_CACHE/preview/<key>.json
(default ~/.cache/deforum-wan/preview), keyed by a hash of the VAE config, of its
encoder's outer weights (a fine-tune with an unchanged config gets its own fit)
and of the fit recipe.

The projection (`latent_to_rgb`, `preview_image`) is pure numpy (PIL only resizes);
`PreviewFiles` keeps the image beside the frames under hidden names, so Deforum's
frame naming and resume never see it, and removes it when the render ends.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.specs import cache_root
from . import outputs

log = logging.getLogger(__name__)

DEFAULT_EVERY = 4  # a preview every 4th denoising step (and at each clip's last step)
MAX_SIDE = 256  # previews are at most this many pixels on their long side

FIT_VERSION = 1  # part of the cache key: bump it whenever the fit below changes
FIT_SIDE = 256  # each fit picture is FIT_SIDE x FIT_SIDE pixels
FIT_TILE = 64  # one flat colour per FIT_TILE x FIT_TILE patch
FIT_LEVELS = 4  # levels per channel: 4 ** 3 = 64 colours
FIT_FRAMES = 5  # held still: latent frame 0 is the first frame alone, latent frame 1 the next four
RIDGE = 1e-2  # weight shrinkage, relative to the latents' mean energy per channel


@dataclass(frozen=True, eq=False)
class LatentRGB:
    """A fitted latent -> RGB map: rgb = latent @ factors + bias, about -1..1 per colour.

    `stride` is the VAE's pixels per latent pixel (8 or 16). `error` is the RMS error
    of the fit on its own pictures and `spread` the RMS distance of their colours
    from their mean colour, which is what a map without factors would get.
    """

    factors: np.ndarray  # [C, 3] float32
    bias: np.ndarray  # [3] float32
    stride: int
    error: float = float("nan")
    spread: float = float("nan")

    @property
    def channels(self) -> int:
        return int(self.factors.shape[0])

    def to_json(self) -> dict[str, Any]:
        return {"channels": self.channels, "stride": self.stride, "factors": self.factors.tolist(),
                "bias": self.bias.tolist(), "error": self.error, "spread": self.spread}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LatentRGB:
        factors = np.asarray(data["factors"], np.float32)
        bias = np.asarray(data["bias"], np.float32)
        if factors.ndim != 2 or factors.shape[1] != 3 or bias.shape != (3,) or not np.isfinite(factors).all():
            raise ValueError(f"not a latent -> RGB map: factors {factors.shape}, bias {bias.shape}")
        return cls(factors, bias, int(data["stride"]), float(data.get("error", "nan")),
                   float(data.get("spread", "nan")))


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


def latent_to_rgb(latent: np.ndarray, rgb_map: LatentRGB) -> np.ndarray:
    """One latent frame [C, h, w] -> uint8 RGB [h, w, 3] at latent resolution, with the VAE's fitted map."""
    latent = np.asarray(latent, dtype=np.float32)
    if latent.ndim != 3:
        raise ValueError(f"expected one latent frame shaped [C, h, w], got {latent.shape}")
    if latent.shape[0] != rgb_map.channels:
        raise ValueError(f"a latent frame of {latent.shape[0]} channels, but the map is for {rgb_map.channels}")
    rgb = np.tensordot(latent, rgb_map.factors, axes=([0], [0])) + rgb_map.bias  # [h, w, 3], about -1..1
    return np.clip((rgb + 1.0) * 127.5, 0.0, 255.0).round().astype(np.uint8)


def preview_size(width: int, height: int, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """(width, height) with the same aspect, at most `max_side` on the long side; never enlarged."""
    scale = min(1.0, max_side / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def preview_image(latent: np.ndarray, rgb_map: LatentRGB, size: tuple[int, int] | None = None,
                  max_side: int = MAX_SIDE) -> np.ndarray:
    """One latent frame -> uint8 RGB [H, W, 3]: the clip's `size` (width, height) fitted into `max_side`.

    Without `size`, the latent's pixel size (its VAE's stride times the latent size) is used.
    """
    from PIL import Image

    rgb = latent_to_rgb(latent, rgb_map)
    h, w = rgb.shape[:2]
    if size is None:
        size = (w * rgb_map.stride, h * rgb_map.stride)
    target = preview_size(int(size[0]), int(size[1]), max_side)
    if target == (w, h):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize(target, Image.BILINEAR))


# --- fitting the map from the VAE ---------------------------------------------------------


def fit_images() -> np.ndarray:
    """The pictures the map is fitted on: float32 [5, FIT_SIDE, FIT_SIDE, 3], 0..1.

    Four mosaics of 16 flat patches hold the 64 colours, in an order that gives
    each patch unlike neighbours; the fifth holds two smooth gradients side by side.
    """
    levels = np.linspace(0.0, 1.0, FIT_LEVELS)
    colours = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    colours = colours[(np.arange(len(colours)) * 29) % len(colours)]  # 29 is coprime to 64: a permutation
    per_side = FIT_SIDE // FIT_TILE
    mosaics = colours.reshape(-1, per_side, per_side, 3).repeat(FIT_TILE, axis=1).repeat(FIT_TILE, axis=2)
    u, v = np.meshgrid(np.linspace(0.0, 1.0, FIT_SIDE // 2), np.linspace(0.0, 1.0, FIT_SIDE))  # across, down
    gradients = np.concatenate([np.stack([u, v, 1.0 - u], -1), np.stack([1.0 - v, u * v, v], -1)], axis=1)
    return np.concatenate([mosaics, gradients[None]]).astype(np.float32)


def _execution_device(vae: Any) -> Any:
    """Where the VAE's inputs go: its offload hook's device if it has one, else its weights' device."""
    import torch

    try:
        from diffusers.utils.torch_utils import get_module_execution_device

        return get_module_execution_device(vae)
    except (ImportError, StopIteration, ValueError):
        return next((p.device for p in vae.parameters() if p.device.type != "meta"), torch.device("cpu"))


def fit_samples(vae: Any, device: Any = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Encode `fit_images` with `vae`: (latents [N, C] as the pipelines denoise them, colours [N, 3] in -1..1, stride).

    One encode per picture keeps the peak memory to one 256x256x5 clip.
    """
    import torch

    channels = int(vae.config.z_dim)
    mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(1, channels, 1, 1)
    std = torch.tensor(vae.config.latents_std, dtype=torch.float32).view(1, channels, 1, 1)
    device = torch.device(device) if device is not None else _execution_device(vae)
    latents, colours, stride = [], [], 0
    with torch.no_grad():
        for image in fit_images():
            pixels = torch.from_numpy(image).permute(2, 0, 1)[None, :, None] * 2.0 - 1.0  # [1, 3, 1, H, W], -1..1
            clip = pixels.repeat(1, 1, FIT_FRAMES, 1, 1).to(device=device, dtype=vae.dtype)
            z = vae.encode(clip).latent_dist.mean[:, :, -1].float().cpu()  # the last latent frame, [1, C, h, w]
            z = (z - mean) / std
            h, w = z.shape[-2:]
            stride = FIT_SIDE // h
            if stride * h != FIT_SIDE or stride * w != FIT_SIDE:
                raise ValueError(f"a {FIT_SIDE}x{FIT_SIDE} picture gave a {h}x{w} latent")
            block = image.reshape(h, stride, w, stride, 3).mean(axis=(1, 3))  # the colour under each latent pixel
            latents.append(z[0].permute(1, 2, 0).reshape(-1, channels).numpy())
            colours.append(block.reshape(-1, 3) * 2.0 - 1.0)
    return np.concatenate(latents).astype(np.float64), np.concatenate(colours).astype(np.float64), stride


def solve_map(latents: np.ndarray, colours: np.ndarray, stride: int, ridge: float = RIDGE) -> LatentRGB:
    """Least squares colours ~ latents @ factors + bias, the factors lightly shrunk (ridge, via lstsq)."""
    x, y = np.asarray(latents, np.float64), np.asarray(colours, np.float64)
    if x.ndim != 2 or y.shape != (len(x), 3) or len(x) <= x.shape[1]:
        raise ValueError(f"need more samples than channels: latents {x.shape}, colours {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("the VAE gave non-finite latents")
    x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - x_mean, y - y_mean
    channels = x.shape[1]
    shrink = np.sqrt(ridge * max(float((xc**2).sum()) / channels, 1e-12)) * np.eye(channels)
    factors = np.linalg.lstsq(np.vstack([xc, shrink]), np.vstack([yc, np.zeros((channels, 3))]), rcond=None)[0]
    bias = y_mean - x_mean @ factors
    error = float(np.sqrt(np.mean((x @ factors + bias - y) ** 2)))
    spread = float(np.sqrt(np.mean(yc**2)))
    return LatentRGB(factors.astype(np.float32), bias.astype(np.float32), int(stride), error, spread)


def fit_map(vae: Any, device: Any = None) -> LatentRGB:
    """Fit the map from `vae` (no cache): `fit_samples`, then `solve_map`."""
    return solve_map(*fit_samples(vae, device))


def cache_dir() -> Path:
    """$DEFORUM_WAN_CACHE/preview, else $XDG_CACHE_HOME or ~/.cache, /deforum-wan/preview."""
    return cache_root() / "preview"


def vae_key(vae: Any) -> str | None:
    """A hash of what the fit depends on: the VAE config, its encoder's outer weights and the fit recipe.

    The weights tell a fine-tune from the VAE it started from when the config is
    the same. None when they cannot be read (sequential offload keeps them on the
    meta device): then the map is fitted for the job and not cached on disk.
    """
    config = {k: v for k, v in dict(vae.config).items() if not str(k).startswith("_")}
    digest = hashlib.sha256(json.dumps({"config": config, "fit": [FIT_VERSION, FIT_SIDE, FIT_TILE, FIT_LEVELS,
                                        FIT_FRAMES, RIDGE]}, sort_keys=True, default=str).encode())
    encoder = list(getattr(vae, "encoder", vae).parameters())
    quant = getattr(vae, "quant_conv", None)
    for tensor in encoder[:2] + encoder[-2:] + (list(quant.parameters()) if quant is not None else []):
        if tensor.device.type == "meta":
            return None
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:32]


def _read_cached(path: Path, channels: int) -> LatentRGB | None:
    try:
        rgb_map = LatentRGB.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or damaged: fit again
    return rgb_map if rgb_map.channels == channels else None


def _write_cached(path: Path, rgb_map: LatentRGB, seconds: float) -> None:
    """Atomic: a temp file in the same folder, then os.replace. A cache that cannot be written is skipped."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({**rgb_map.to_json(), "fit_seconds": round(seconds, 3), "created": time.time()}, f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        log.info("preview map not cached at %s: %s", path, exc)


def map_for_vae(vae: Any, device: Any = None, folder: str | Path | None = None) -> LatentRGB:
    """The latent -> RGB map of `vae`: from the disk cache (`folder`, default `cache_dir()`), else fitted and cached."""
    key = vae_key(vae)
    path = (Path(folder) if folder else cache_dir()) / f"{key}.json" if key else None
    if path is not None:
        cached = _read_cached(path, int(vae.config.z_dim))
        if cached is not None:
            return cached
    start = time.perf_counter()
    rgb_map = fit_map(vae, device)
    seconds = time.perf_counter() - start
    log.info("preview map fitted from the VAE in %.2fs: RMS error %.3f (colour spread %.3f)",
             seconds, rgb_map.error, rgb_map.spread)
    if path is not None:
        _write_cached(path, rgb_map, seconds)
    return rgb_map


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
