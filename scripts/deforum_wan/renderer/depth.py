"""Depth models for Deforum's depth warping: find a local folder, load it, predict a map per picture.

A depth model is a transformers depth-estimation folder (config.json, weights and
preprocessor_config.json), the usual one Depth Anything V2 Small
(`depth-anything/Depth-Anything-V2-Small-hf`). It is given as a folder, or as a
folder name under `<models_dir>/depth/` (`<models>/wan/depth/` in a web UI). It
is loaded from disk only (`local_files_only`), on CUDA when there is one, else
the CPU. `predict` returns the model's raw map (relative inverse depth for Depth
Anything, as MiDaS gives) at the picture's own size; core/warp.py turns it into z
the way Deforum's `depth_algorithm` does.

torch and transformers are imported inside the functions.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DEPTH_SUBDIR = "depth"
EXAMPLE_REPO = "depth-anything/Depth-Anything-V2-Small-hf"


class DepthModelError(ValueError):
    """A depth model cannot be found or loaded; the message says where it looked."""


def depth_dir(models_dir: str | Path | None) -> Path:
    """`<models_dir>/depth`, with the default models folder when none is given."""
    from ..core.specs import default_models_dir

    return Path(models_dir).expanduser() / DEPTH_SUBDIR if models_dir else default_models_dir() / DEPTH_SUBDIR


def _is_model_folder(folder: Path) -> bool:
    return folder.is_dir() and (folder / "config.json").is_file()


def available_depth_models(models_dir: str | Path | None) -> list[str]:
    """Names of the depth model folders under `<models_dir>/depth/`."""
    root = depth_dir(models_dir)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and _is_model_folder(p))


def find_depth_model(name_or_folder: str, models_dir: str | Path | None = None) -> Path:
    """The folder of a depth model: a plain name is a folder under `<models_dir>/depth/`; anything with a path
    separator (`./NAME`, `~/models/...`, an absolute path) is the model folder itself. Raises DepthModelError
    naming where it looked and the names found."""
    text = str(name_or_folder or "").strip()
    if not text:
        raise DepthModelError("no depth model given")
    root = depth_dir(models_dir)
    if "/" in text or "\\" in text or text.startswith("~"):
        given = Path(text).expanduser()
        if _is_model_folder(given):
            return given.resolve()
        where = f"{given} is not a model folder (no config.json)"
    else:
        candidate = root / text
        if text not in (".", "..") and _is_model_folder(candidate):
            return candidate.resolve()
        where = f"there is no model folder {candidate}"
    names = available_depth_models(models_dir)
    found = f"depth models in {root}: {', '.join(names)}" if names else f"no depth models in {root}"
    raise DepthModelError(
        f"depth model {text!r} not found: {where} ({found}); give a folder name there or a path to a folder "
        f"(./NAME for one here), e.g. after `hf download {EXAMPLE_REPO} --local-dir "
        f"{root / 'Depth-Anything-V2-Small-hf'}`"
    )


class DepthModel:
    """A transformers depth-estimation model loaded from a local folder."""

    def __init__(self, folder: str | Path, device: str | None = None):
        import torch
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        self.folder = Path(folder)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device.startswith(("mps", "xpu")):
            device = "cpu"  # kept simple and portable: a small model on the CPU
        self.device = device
        try:
            self.processor = AutoImageProcessor.from_pretrained(str(self.folder), local_files_only=True)
            model = AutoModelForDepthEstimation.from_pretrained(str(self.folder), local_files_only=True)
        except Exception as exc:
            raise DepthModelError(f"{self.folder}: cannot load a depth-estimation model: {exc}") from exc
        self.dtype = torch.float16 if device.startswith("cuda") else torch.float32
        self.model: Any = model.to(device=device, dtype=self.dtype).eval()

    def predict(self, image: np.ndarray) -> np.ndarray:
        """The model's raw depth map of a uint8 HxWx3 picture, float32 HxW at the picture's size."""
        import torch
        import torch.nn.functional as F

        if self.model is None:
            raise DepthModelError(f"{self.folder}: the depth model was freed")
        image = np.asarray(image)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] < 3:
            raise ValueError(f"expected an HxWx3 picture, got {image.shape}")
        image = np.ascontiguousarray(image[..., :3], dtype=np.uint8)
        height, width = image.shape[:2]
        inputs = self.processor(images=image, return_tensors="pt")
        pixels = inputs["pixel_values"].to(device=self.device, dtype=self.dtype)
        with torch.inference_mode():
            predicted = self.model(pixel_values=pixels).predicted_depth
        if predicted.ndim == 3:
            predicted = predicted[:, None]
        resized = F.interpolate(predicted.float(), size=(height, width), mode="bicubic", align_corners=False)
        return resized[0, 0].cpu().numpy().astype(np.float32)

    def free(self) -> None:
        """Drop the weights (and the CUDA cache they used)."""
        if self.model is None:
            return
        self.model = None
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()


def load_depth_model(name_or_folder: str, models_dir: str | Path | None = None, device: str | None = None) -> DepthModel:
    """find_depth_model, then DepthModel."""
    folder = find_depth_model(name_or_folder, models_dir)
    log.info("loading depth model %s", folder)
    return DepthModel(folder, device)


def depth_wanted(settings: Any, motion: str) -> bool:
    """Whether a render predicts depth: the motion guide is on (guide/both) and the settings warp in 3D with
    `use_depth_warping` (Deforum predicts depth only then)."""
    if motion not in ("guide", "both"):
        return False
    from ..core.warp import warp_path

    path = warp_path(settings)
    return bool(path.use_depth_warping and path.animation_mode == "3D")


class LazyDepth:
    """One render's depth model: the folder checked at once, the weights loaded at the first guide that needs them
    (never when no clip does), freed at the end."""

    def __init__(self, name: str | None, models_dir: str | Path | None, device: str | None, wanted: bool,
                 emit: Any = None):
        self.folder = find_depth_model(name, models_dir) if name else None
        self.wanted, self.device, self.emit = wanted and self.folder is not None, device, emit
        self.model: DepthModel | None = None

    def get(self) -> DepthModel | None:
        if not self.wanted:
            return None
        if self.model is None:
            if self.emit:
                self.emit({"type": "status", "message": f"loading depth model {self.folder.name}"})
            self.model = DepthModel(self.folder, self.device)
        return self.model

    def free(self) -> None:
        if self.model is not None:
            self.model.free()
            self.model = None
