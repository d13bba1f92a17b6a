"""Golden warp geometry, measured on frames made by Deforum's own warp functions.

The test card, the cases and the dot measurement live here (numpy only) so that
tests/test_warp.py measures its own frames exactly the same way. Running the file
needs a Deforum checkout and torch, OpenCV, einops, pandas and numexpr (see README.md):

    python tests/golden/make_golden.py --deforum /path/to/sd-webui-deforum

It warps the card frame by frame with Deforum's ``anim_frame_warp`` (2D and 3D, flat
depth, and a fixed depth map in the depth cases) and writes warp_golden.json (dot centroids at frames 0, 12 and 24) and
a few small PNGs of Deforum's frame 24.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import types
from pathlib import Path

import numpy as np

W, H = 256, 192
FRAMES = 24
CHECK_FRAMES = (0, 12, 24)
SPACING, RADIUS = 32, 5.0
BACKGROUND = 16
THRESHOLD = 60  # a channel above this is dot, not background
EDGE = 3  # blobs this close to the picture edge are clipped or smeared by the border: not measured
PNG_CASES = ("2d_perspective_flip", "3d_dolly_pan")

_3D = {"animation_mode": "3D", "translation_z": "0: (0)"}
CASES: dict[str, dict] = {
    "2d_zoom_in": {"zoom": "0: (1.02)"},
    "2d_zoom_out": {"zoom": "0: (0.98)"},
    "2d_angle": {"zoom": "0: (1)", "angle": "0: (1.5)"},
    "2d_translation": {"zoom": "0: (1)", "translation_x": "0: (2.5)", "translation_y": "0: (-1.5)"},
    "2d_transform_center": {"zoom": "0: (1.015)", "angle": "0: (1)", "transform_center_x": "0: (0.25)",
                            "transform_center_y": "0: (0.7)"},
    "2d_keyframes": {"zoom": "0: (1), 10: (1), 11: (1.03)", "translation_x": "0: (0), 6: (4), 18: (-2)"},
    "2d_wrap": {"zoom": "0: (1)", "translation_x": "0: (4)", "border": "wrap"},
    "2d_perspective_flip": {"zoom": "0: (1)", "translation_x": "0: (3)", "enable_perspective_flip": True,
                            "perspective_flip_theta": "0: (0.5)", "perspective_flip_phi": "0: (0.7)",
                            "perspective_flip_gamma": "0: (0.4)", "perspective_flip_fv": "0: (53)"},
    "3d_dolly": {**_3D, "translation_z": "0: (4)"},
    "3d_translation_x": {**_3D, "translation_x": "0: (3)", "translation_y": "0: (1)"},
    "3d_pan": {**_3D, "rotation_3d_y": "0: (0.8)"},
    "3d_tilt": {**_3D, "rotation_3d_x": "0: (0.6)"},
    "3d_roll": {**_3D, "rotation_3d_z": "0: (1.5)"},
    "3d_dolly_pan": {**_3D, "translation_z": "0: (2)", "rotation_3d_y": "0: (-0.6)", "fov_schedule": "0: (40)",
                     "sampling_mode": "bilinear", "padding_mode": "reflection"},
    "3d_nearest_zeros": {**_3D, "translation_z": "0: (-2)", "translation_x": "0: (-2)", "sampling_mode": "nearest",
                         "padding_mode": "zeros", "aspect_ratio_use_old_formula": True},
    "3d_depth_midas": {**_3D, "translation_z": "0: (3)", "rotation_3d_y": "0: (0.5)", "use_depth_warping": True,
                       "depth_algorithm": "Midas-3-Hybrid"},
    "3d_depth_zoe": {**_3D, "translation_x": "0: (3)", "use_depth_warping": True, "depth_algorithm": "Zoe"},
    "3d_depth_legacy": {**_3D, "translation_z": "0: (3)", "translation_x": "0: (-2)", "use_depth_warping": True,
                        "depth_algorithm": "Zoe+AdaBins (old)"},
    "3d_perspective_flip": {**_3D, "rotation_3d_z": "0: (0.5)", "enable_perspective_flip": True,
                            "perspective_flip_phi": "0: (0.5)", "perspective_flip_fv": "0: (60)"},
}

# Deforum's defaults (deforum_helpers/args.py) for everything a case does not set.
DEFAULTS = {
    "animation_mode": "2D", "angle": "0: (0)", "zoom": "0: (1)", "translation_x": "0: (0)", "translation_y": "0: (0)",
    "translation_z": "0: (0)", "transform_center_x": "0: (0.5)", "transform_center_y": "0: (0.5)",
    "rotation_3d_x": "0: (0)", "rotation_3d_y": "0: (0)", "rotation_3d_z": "0: (0)", "fov_schedule": "0: (70)",
    "near_schedule": "0: (200)", "far_schedule": "0: (10000)", "aspect_ratio_schedule": "0: (1)",
    "aspect_ratio_use_old_formula": False, "enable_perspective_flip": False, "perspective_flip_theta": "0: (0)",
    "perspective_flip_phi": "0: (0)", "perspective_flip_gamma": "0: (0)", "perspective_flip_fv": "0: (53)",
    "border": "replicate", "use_depth_warping": False, "depth_algorithm": "Midas-3-Hybrid", "midas_weight": 0.2,
    "padding_mode": "border", "sampling_mode": "bicubic",
}


def case_settings(name: str) -> dict:
    """The full settings dict of a case (a Deforum settings file's keys)."""
    return {**DEFAULTS, **CASES[name], "W": W, "H": H, "max_frames": FRAMES + 1, "seed": 1}


def dot_layout() -> list[tuple[int, float, float]]:
    """(channel, x, y) of every dot: a grid, channels interleaved so equal channels sit >= 45 px apart."""
    return [(int((col + 2 * row) % 3), SPACING / 2 + col * SPACING - 0.5, SPACING / 2 + row * SPACING - 0.5)
            for row in range(H // SPACING) for col in range(W // SPACING)]


def test_card() -> np.ndarray:
    """Dark card, one anti-aliased dot per grid point in pure red, green or blue (uint8 HxWx3)."""
    card = np.full((H, W, 3), float(BACKGROUND))
    sub = (np.arange(4) + 0.5) / 4 - 0.5  # 4x4 supersampling per pixel
    ys = (np.arange(H)[:, None] + sub[None, :]).reshape(-1)
    xs = (np.arange(W)[:, None] + sub[None, :]).reshape(-1)
    for channel, cx, cy in dot_layout():
        inside = ((xs[None, :] - cx) ** 2 + (ys[:, None] - cy) ** 2) <= RADIUS ** 2
        cover = inside.reshape(H, 4, W, 4).mean(axis=(1, 3))
        card[..., channel] += cover * (255 - BACKGROUND)
    return np.clip(np.rint(card), 0, 255).astype(np.uint8)


def depth_map() -> np.ndarray:
    """A fixed HxW depth map (float32, 1..2), standing in for a depth model's output in the depth cases."""
    yy, xx = np.mgrid[0:H, 0:W]
    return (1.0 + 0.6 * xx / W + 0.3 * (yy / H) ** 2).astype(np.float32)


def _components(mask: np.ndarray) -> np.ndarray:
    """4-connected labels (0 = background) by repeated min-propagation."""
    h, w = mask.shape
    big = h * w + 1
    labels = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), big)
    while True:
        padded = np.pad(labels, 1, constant_values=big)
        best = np.minimum.reduce([labels, padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]])
        best = np.where(mask, best, big)
        if np.array_equal(best, labels):
            break
        labels = best
    return np.where(mask, labels, 0)


def measure(image: np.ndarray) -> list[list[float]]:
    """[channel, x, y, mass] of every dot blob away from the edges (intensity-weighted centroids)."""
    image = np.asarray(image)
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    found = []
    for channel in range(3):
        values = image[..., channel].astype(np.float64)
        labels = _components(values > THRESHOLD)
        for label in np.unique(labels[labels > 0]):
            where = labels == label
            bx, by = xx[where], yy[where]
            if bx.min() < EDGE or by.min() < EDGE or bx.max() > w - 1 - EDGE or by.max() > h - 1 - EDGE:
                continue
            weight = values[where] - BACKGROUND
            mass = weight.sum()
            found.append([channel, float((bx * weight).sum() / mass), float((by * weight).sum() / mass),
                          float(mass / (255 - BACKGROUND))])
    return sorted(found)


# ---------------------------------------------------------------- running Deforum


def _load_deforum(root: Path):
    """Import Deforum's animation module from a checkout, with the web UI's modules stubbed."""
    helpers = root / "scripts" / "deforum_helpers"
    if not (helpers / "animation.py").is_file():
        raise SystemExit(f"{root} is not a Deforum checkout (no scripts/deforum_helpers/animation.py)")
    modules = types.ModuleType("modules")
    shared = types.ModuleType("modules.shared")
    shared.opts = types.SimpleNamespace(data={})
    shared.state = types.SimpleNamespace(interrupted=False)
    scripts = types.ModuleType("modules.scripts")
    loader = types.ModuleType("modules.modelloader")  # general_utils imports a downloader the warp never calls
    loader.load_file_from_url = None
    modules.__path__ = []
    modules.shared, modules.scripts, modules.modelloader = shared, scripts, loader
    sys.modules.update({"modules": modules, "modules.shared": shared, "modules.scripts": scripts,
                        "modules.modelloader": loader})
    package = types.ModuleType("deforum_helpers")  # skip the package's own imports: load only what the warp needs
    package.__path__ = [str(helpers)]
    sys.modules["deforum_helpers"] = package
    sys.path.insert(0, str(helpers / "src"))
    import importlib

    return importlib.import_module("deforum_helpers.animation"), importlib.import_module(
        "deforum_helpers.animation_key_frames")


_SERIES = {"angle": "angle", "zoom": "zoom", "translation_x": "translation_x", "translation_y": "translation_y",
           "translation_z": "translation_z", "transform_center_x": "transform_center_x",
           "transform_center_y": "transform_center_y", "rotation_3d_x": "rotation_3d_x",
           "rotation_3d_y": "rotation_3d_y", "rotation_3d_z": "rotation_3d_z", "fov": "fov_schedule",
           "near": "near_schedule", "far": "far_schedule", "aspect_ratio": "aspect_ratio_schedule",
           "perspective_flip_theta": "perspective_flip_theta", "perspective_flip_phi": "perspective_flip_phi",
           "perspective_flip_gamma": "perspective_flip_gamma", "perspective_flip_fv": "perspective_flip_fv"}


def _run_case(animation, key_frames, name: str) -> dict[int, np.ndarray]:
    import torch

    settings = case_settings(name)
    anim_args = types.SimpleNamespace(**settings)
    args = types.SimpleNamespace(W=W, H=H)
    frames = key_frames.FrameInterpolater(max_frames=settings["max_frames"], seed=settings["seed"])
    keys = types.SimpleNamespace(**{f"{series}_series": frames.parse_inbetweens(settings[key], key)
                                    for series, key in _SERIES.items()})
    image = test_card()
    out = {0: image}
    depth = torch.from_numpy(depth_map())  # used by Deforum only when use_depth_warping is on
    for frame in range(1, FRAMES + 1):
        image, _ = animation.anim_frame_warp(image, args, anim_args, keys, frame, depth_model=None, depth=depth,
                                             device=torch.device("cpu"))
        if frame in CHECK_FRAMES:
            out[frame] = image
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deforum", type=Path, required=True, help="a checkout of deforum-art/sd-webui-deforum")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--commit", default="", help="the Deforum commit, recorded in the JSON")
    ns = parser.parse_args(argv)
    import warnings

    import cv2  # only for writing the PNGs
    import pandas
    import torch

    warnings.filterwarnings("ignore", category=FutureWarning)  # pandas about Deforum's keyframe parsing
    warnings.filterwarnings("ignore", category=UserWarning)  # torch about py3d_tools' tensor copies
    animation, key_frames = _load_deforum(ns.deforum)
    golden = {"deforum_commit": ns.commit, "made_with": {"torch": torch.__version__, "opencv": cv2.__version__,
                                                         "pandas": pandas.__version__, "numpy": np.__version__},
              "W": W, "H": H, "frames": list(CHECK_FRAMES), "cases": {}}
    cv2.imwrite(str(ns.out / "card.png"), test_card())
    for name in CASES:
        images = _run_case(animation, key_frames, name)
        golden["cases"][name] = {"settings": CASES[name],
                                 "dots": {str(f): [[round(v, 3) for v in d] for d in measure(images[f])]
                                          for f in CHECK_FRAMES}}
        if name in PNG_CASES:
            cv2.imwrite(str(ns.out / f"{name}_{FRAMES}.png"), images[FRAMES])
        counts = [len(golden["cases"][name]["dots"][str(f)]) for f in CHECK_FRAMES]
        print(f"{name}: dots measured at frames {CHECK_FRAMES}: {counts}")
    text = json.dumps(golden, indent=1)
    text = re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + re.sub(r"\s+", "", m.group(1)) + "]", text)  # a dot a line
    (ns.out / "warp_golden.json").write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
