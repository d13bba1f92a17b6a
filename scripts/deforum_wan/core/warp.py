"""Deforum's per-frame image warp along the camera path, in numpy.

Deforum moves the camera by warping the previous output frame with the current
frame's schedule values, then letting the diffusion model repaint it. This module
does that warp the way Deforum does it (``anim_frame_warp`` in Deforum's
``animation.py``), reimplemented from its semantics so it runs without torch or
OpenCV, for motion guides and motion previews:

* "2D": one 3x3 matrix per frame, ``rotate/zoom about the transform centre`` times
  ``translate by (translation_x, translation_y)`` pixels, applied like
  ``cv2.warpPerspective`` (the matrix maps source to destination; bilinear; the
  ``border`` setting picks replicate or wrap for what lies outside). With the
  perspective flip on, Deforum writes ``np.matmul(bM, rot_mat, trans_mat)``, whose
  third argument is numpy's *output* array: the product is ``bM @ rot_mat`` and the
  translation is dropped. We follow Deforum: with the flip on, 2D translation_x/y
  do not move the picture.
* "3D": Deforum's offset field. Every pixel is a world point ``(x, y, z)`` with x, y
  on ``linspace(-1, 1)`` and z = 1 (flat) or the given depth; the point is projected
  by a pytorch3d ``FoVPerspectiveCameras`` at rest and by one moved by
  ``R = Rx @ Ry @ Rz`` (rotation_3d_x/y/z, degrees) and
  ``T = (-translation_x, translation_y, -translation_z) / 200``; the difference of the
  two projections is subtracted from the identity sampling grid, which is then
  sampled like ``torch.nn.functional.grid_sample(align_corners=False)`` with
  Deforum's ``padding_mode`` (border, reflection, zeros) and ``sampling_mode``
  (bicubic, bilinear, nearest). With the perspective flip on, the flip is applied
  first, as Deforum does. A depth model's map, when given and ``use_depth_warping``
  is on, becomes z the way Deforum's ``depth_algorithm`` branch does (`depth_to_z`).
* other modes: Deforum does not warp; the frame is returned unchanged.

The mask returned with each frame marks pixels whose source lies outside the
picture (what the move reveals and Deforum fills from the border).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Iterator

import numpy as np

from .schedules import parse_schedule
from .settings import ANIMATION_MODES, DeforumSettings, SettingsError

#: Deforum's 3D translation scale (``TRANSLATION_SCALE`` in ``anim_frame_warp_3d``).
TRANSLATION_SCALE = 1.0 / 200.0
BORDERS = ("replicate", "wrap")
PADDING_MODES = ("border", "reflection", "zeros")
SAMPLING_MODES = ("bicubic", "bilinear", "nearest")
DEPTH_ALGORITHMS = ("Midas+AdaBins (old)", "Zoe+AdaBins (old)", "Midas-3-Hybrid", "Midas-3.1-BeitLarge", "AdaBins",
                    "Zoe", "Leres")
_LEGACY_DEPTH = ("midas+adabins (old)", "zoe+adabins (old)")  # transform_image_3d_legacy: raw depth, image + 1/512

# Deforum's defaults (deforum_helpers/args.py) for the keys DeforumSettings keeps only in `raw`.
_RAW_DEFAULTS: dict[str, Any] = {
    "near_schedule": "0: (200)",
    "far_schedule": "0: (10000)",
    "aspect_ratio_schedule": "0: (1)",
    "aspect_ratio_use_old_formula": False,
    "enable_perspective_flip": False,
    "perspective_flip_theta": "0: (0)",
    "perspective_flip_phi": "0: (0)",
    "perspective_flip_gamma": "0: (0)",
    "perspective_flip_fv": "0: (53)",
    "border": "replicate",
    "padding_mode": "border",
    "sampling_mode": "bicubic",
    "use_depth_warping": True,
    "depth_algorithm": "Midas-3-Hybrid",
}
_TYPED = ("angle", "zoom", "translation_x", "translation_y", "translation_z", "transform_center_x",
          "transform_center_y", "rotation_3d_x", "rotation_3d_y", "rotation_3d_z")
_RAW_SCHEDULES = {"fov": "fov_schedule", "near": "near_schedule", "far": "far_schedule",
                  "aspect_ratio": "aspect_ratio_schedule", "perspective_flip_theta": "perspective_flip_theta",
                  "perspective_flip_phi": "perspective_flip_phi", "perspective_flip_gamma": "perspective_flip_gamma",
                  "perspective_flip_fv": "perspective_flip_fv"}


@dataclass(frozen=True, eq=False)
class WarpPath:
    """Everything Deforum's warp reads, one value per frame (read-only arrays)."""

    animation_mode: str
    width: int
    height: int
    angle: np.ndarray
    zoom: np.ndarray
    translation_x: np.ndarray
    translation_y: np.ndarray
    translation_z: np.ndarray
    transform_center_x: np.ndarray
    transform_center_y: np.ndarray
    rotation_3d_x: np.ndarray
    rotation_3d_y: np.ndarray
    rotation_3d_z: np.ndarray
    fov: np.ndarray
    near: np.ndarray
    far: np.ndarray
    aspect_ratio: np.ndarray
    perspective_flip_theta: np.ndarray
    perspective_flip_phi: np.ndarray
    perspective_flip_gamma: np.ndarray
    perspective_flip_fv: np.ndarray
    perspective_flip: bool = False
    aspect_ratio_use_old_formula: bool = False
    border: str = "replicate"
    padding_mode: str = "border"
    sampling_mode: str = "bicubic"
    use_depth_warping: bool = True
    depth_algorithm: str = "Midas-3-Hybrid"

    def __post_init__(self) -> None:
        lengths = set()
        for name in _TYPED + tuple(_RAW_SCHEDULES):
            arr = np.array(getattr(self, name), dtype=np.float64).reshape(-1)
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
            lengths.add(arr.shape[0])
        if len(lengths) != 1 or lengths.pop() < 1:
            raise ValueError("every WarpPath schedule must cover the same number of frames (at least one)")
        for name, allowed in (("border", BORDERS), ("padding_mode", PADDING_MODES), ("sampling_mode", SAMPLING_MODES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.depth_algorithm not in DEPTH_ALGORITHMS and not _depth_anything(self.depth_algorithm):
            raise ValueError(f"depth_algorithm must be one of {DEPTH_ALGORITHMS}, got {self.depth_algorithm!r}")
        if int(self.width) < 1 or int(self.height) < 1:
            raise ValueError(f"the picture size must be positive, got {self.width}x{self.height}")

    @property
    def max_frames(self) -> int:
        return int(self.zoom.shape[0])


def _choice(settings: DeforumSettings, key: str, allowed: tuple[str, ...]) -> str:
    value = settings.raw.get(key, _RAW_DEFAULTS[key])
    if not isinstance(value, str) or value.strip().lower() not in allowed:
        raise SettingsError(key, f"expected one of {', '.join(allowed)}, got {value!r}")
    return value.strip().lower()


def _flag(settings: DeforumSettings, *keys: str) -> bool:
    for key in keys:
        value = settings.raw.get(key, _RAW_DEFAULTS.get(key))
        if isinstance(value, bool):
            if value:
                return True
        elif value is not None:
            raise SettingsError(key, f"expected true or false, got {value!r}")
    return False


def scaled_path(settings: DeforumSettings, width: int, height: int) -> WarpPath:
    """The settings' warp path for a picture of width x height: 2D translations are pixels, so they scale with it
    (zoom, angles, the transform centre and the 3D moves do not depend on the size)."""
    path = warp_path(settings)
    if (width, height) == (path.width, path.height):
        return path
    return replace(path, width=width, height=height, translation_x=path.translation_x * (width / path.width),
                   translation_y=path.translation_y * (height / path.height))


def warp_path(settings: DeforumSettings) -> WarpPath:
    """The per-frame warp values of `settings` (schedule errors name their key)."""
    mode = settings.animation_mode
    canonical = next((m for m in ANIMATION_MODES if isinstance(mode, str) and mode.strip().lower() == m.lower()), None)
    if canonical is None:
        raise SettingsError("animation_mode", f"expected one of {', '.join(ANIMATION_MODES)}, got {mode!r}")
    n, seed = settings.max_frames, settings.seed
    values: dict[str, Any] = {k: parse_schedule(getattr(settings, k), n, seed, key=k) for k in _TYPED}
    for name, key in _RAW_SCHEDULES.items():
        text = settings.fov_schedule if key == "fov_schedule" else settings.raw.get(key, _RAW_DEFAULTS[key])
        values[name] = parse_schedule(text, n, seed, key=key)
    if canonical != "2D":
        values["zoom"] = np.ones(n)  # only Deforum's 2D warp reads zoom (as plan.camera_path)
    elif (values["zoom"] <= 0).any():
        frame = int((values["zoom"] <= 0).argmax())
        raise SettingsError("zoom", f"the zoom factor at frame {frame} is {values['zoom'][frame]:g}; it must be "
                                    "above 0 (1.0 = no zoom, 1.02 = zoom in)")
    flip = _flag(settings, "enable_perspective_flip", "flip_2d_perspective")
    if canonical == "3D":
        bad = np.flatnonzero((values["fov"] <= 0) | (values["fov"] >= 180))
        if bad.size:
            raise SettingsError("fov_schedule", f"the field of view at frame {bad[0]} is {values['fov'][bad[0]]:g}; "
                                                "it must be between 0 and 180 degrees")
        bad = np.flatnonzero(values["aspect_ratio"] <= 0)
        if bad.size and not _flag(settings, "aspect_ratio_use_old_formula"):
            raise SettingsError("aspect_ratio_schedule", f"the aspect ratio at frame {bad[0]} is "
                                f"{values['aspect_ratio'][bad[0]]:g}; it must be above 0")
    if flip:
        bad = np.flatnonzero((values["perspective_flip_fv"] <= 0) | (values["perspective_flip_fv"] >= 180))
        if bad.size:
            raise SettingsError("perspective_flip_fv", f"the field of view at frame {bad[0]} is "
                                f"{values['perspective_flip_fv'][bad[0]]:g}; it must be between 0 and 180 degrees")
    return WarpPath(
        animation_mode=canonical, width=int(settings.W), height=int(settings.H), **values,
        perspective_flip=flip, aspect_ratio_use_old_formula=_flag(settings, "aspect_ratio_use_old_formula"),
        border=_choice(settings, "border", BORDERS),
        padding_mode=_choice(settings, "padding_mode", PADDING_MODES),
        sampling_mode=_choice(settings, "sampling_mode", SAMPLING_MODES),
        use_depth_warping=_flag(settings, "use_depth_warping"), depth_algorithm=_depth_algorithm(settings),
    )


def _depth_anything(name: str) -> bool:
    """The Forge fork's Depth-Anything-V2 models (Small/Base/Large): relative inverse depth, as MiDaS gives."""
    return name.strip().lower().startswith("depth-anything")


def _depth_algorithm(settings: DeforumSettings) -> str:
    value = settings.raw.get("depth_algorithm", _RAW_DEFAULTS["depth_algorithm"])
    for known in DEPTH_ALGORITHMS:
        if isinstance(value, str) and value.strip().lower() == known.lower():
            return known
    if isinstance(value, str) and _depth_anything(value):
        return value.strip()
    raise SettingsError("depth_algorithm", f"expected one of {', '.join(DEPTH_ALGORITHMS)}, got {value!r}")


def depth_to_z(depth: np.ndarray | None, algorithm: str = "Midas-3-Hybrid") -> np.ndarray | None:
    """The z of every pixel as Deforum's 3D warp derives it from a depth model's map (None: flat).

    The legacy algorithms use the map as it is. The others normalise it to 0..1, equalise
    its histogram (1024 bins) and map it to 1..2 (MiDaS: near is 1, as ``2 - d``; AdaBins,
    LeReS, Zoe: ``1 + d``); a map with NaN, inf or a single value gives flat depth.
    """
    if depth is None:
        return None
    d = np.asarray(depth, dtype=np.float32)
    algo = algorithm.lower()
    if algo in _LEGACY_DEPTH:
        return d
    if not np.isfinite(d).all() or d.min() == d.max():
        return None
    norm = (d - d.min()) / (d.max() - d.min())
    hist, edges = np.histogram(norm, bins=1024, range=(0, 1))
    cdf = hist.cumsum()
    equalised = np.interp(norm, edges[:-1], cdf / float(cdf[-1]))
    if algo.startswith("midas") or _depth_anything(algo):  # Depth-Anything: treated as MiDaS (not checked against
        return (2.0 - equalised).astype(np.float32)  # the fork's code); (d * 1 - 2) * -1
    if algo in ("adabins", "leres", "zoe"):
        return (equalised + 1.0).astype(np.float32)
    raise ValueError(f"unknown depth_algorithm {algorithm!r}")


# ---------------------------------------------------------------- matrices


def matrix_2d(path: WarpPath, frame: int) -> np.ndarray:
    """Deforum's 2D source-to-destination 3x3 matrix for `frame` (with its perspective-flip quirk)."""
    cx, cy = path.width * path.transform_center_x[frame], path.height * path.transform_center_y[frame]
    a = math.radians(path.angle[frame])
    alpha, beta = path.zoom[frame] * math.cos(a), path.zoom[frame] * math.sin(a)
    rotation = np.array([[alpha, beta, (1 - alpha) * cx - beta * cy],
                         [-beta, alpha, beta * cx + (1 - alpha) * cy],
                         [0.0, 0.0, 1.0]])
    if path.perspective_flip:
        return flip_matrix(path, frame) @ rotation  # Deforum drops the translation here (see the module notes)
    translation = np.array([[1.0, 0.0, path.translation_x[frame]], [0.0, 1.0, path.translation_y[frame]],
                            [0.0, 0.0, 1.0]])
    return rotation @ translation


def _homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 projective map taking 4 points `src` to `dst` (h33 = 1)."""
    a = np.zeros((8, 8))
    b = np.zeros(8)
    for i, ((x, y), (u, v)) in enumerate(zip(src, dst)):
        a[2 * i] = (x, y, 1, 0, 0, 0, -x * u, -y * u)
        a[2 * i + 1] = (0, 0, 0, x, y, 1, -x * v, -y * v)
        b[2 * i], b[2 * i + 1] = u, v
    return np.append(np.linalg.solve(a, b), 1.0).reshape(3, 3)


def flip_matrix(path: WarpPath, frame: int) -> np.ndarray:
    """Deforum's perspective-flip matrix: the picture as a card turned by theta/phi/gamma seen with `fv`.

    As in Deforum's ``warpMatrix``, the projection keeps 1 at [3, 3] (it starts from the
    identity), so even zero angles shrink the picture slightly (about 1 %); we keep that."""
    w, h = float(path.width), float(path.height)
    theta, phi, gamma = (math.radians(v[frame]) for v in
                         (path.perspective_flip_theta, path.perspective_flip_phi, path.perspective_flip_gamma))
    half = math.radians(path.perspective_flip_fv[frame] / 2.0)
    d = math.hypot(w, h)
    side = d / math.cos(half)
    dist = d / (2.0 * math.sin(half))
    near, far = dist - d / 2.0, dist + d / 2.0
    rx = np.array([[1, 0, 0, 0], [0, math.cos(phi), -math.sin(phi), 0], [0, math.sin(phi), math.cos(phi), 0],
                   [0, 0, 0, 1]])
    ry = np.array([[math.cos(gamma), 0, math.sin(gamma), 0], [0, 1, 0, 0], [-math.sin(gamma), 0, math.cos(gamma), 0],
                   [0, 0, 0, 1]])
    rz = np.array([[math.cos(theta), -math.sin(theta), 0, 0], [math.sin(theta), math.cos(theta), 0, 0],
                   [0, 0, 1, 0], [0, 0, 0, 1]])
    move = np.eye(4)
    move[2, 3] = -dist
    proj = np.eye(4)  # Deforum starts from the identity, so proj[3, 3] stays 1
    proj[0, 0] = proj[1, 1] = 1.0 / math.tan(half)
    proj[2, 2] = -(far + near) / (far - near)
    proj[2, 3] = -(2.0 * far * near) / (far - near)
    proj[3, 2] = -1.0
    full = proj @ move @ rx @ ry @ rz
    corners = np.array([[-w / 2, h / 2, 0, 1], [w / 2, h / 2, 0, 1], [w / 2, -h / 2, 0, 1], [-w / 2, -h / 2, 0, 1]])
    projected = corners @ full.T
    out = (projected[:, :2] / projected[:, 3:4] + 1.0) * (0.5 * side)
    m = _homography(corners[:, :2] + (w / 2, h / 2), out)
    post = np.array([[1.0, 0.0, (w - side) / 2], [0.0, 1.0, (h - side) / 2], [0.0, 0.0, 1.0]])
    return m @ post


def _rotation_xyz(rx: float, ry: float, rz: float) -> np.ndarray:
    """pytorch3d's ``euler_angles_to_matrix(..., "XYZ")``: Rx @ Ry @ Rz (radians)."""
    cx, sx, cy, sy, cz, sz = math.cos(rx), math.sin(rx), math.cos(ry), math.sin(ry), math.cos(rz), math.sin(rz)
    x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return x @ y @ z


def source_grid_3d(path: WarpPath, frame: int, depth: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Deforum's 3D sampling positions for `frame`, in source pixel coordinates (x, y), each HxW.

    `depth` is z per pixel (see `depth_to_z`); None is flat (z = 1)."""
    w, h = path.width, path.height
    aspect = w / h if path.aspect_ratio_use_old_formula else float(path.aspect_ratio[frame])
    tan_half = math.tan(math.radians(path.fov[frame]) / 2.0)
    kx, ky = np.float32(1.0 / (tan_half * aspect)), np.float32(1.0 / tan_half)
    rot = _rotation_xyz(*(math.radians(v[frame]) for v in (path.rotation_3d_x, path.rotation_3d_y, path.rotation_3d_z)))
    move = np.array([-path.translation_x[frame], path.translation_y[frame], -path.translation_z[frame]])
    move = move * TRANSLATION_SCALE
    rot, move = rot.astype(np.float32), move.astype(np.float32)  # float32 like Deforum's tensors
    x = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
    y = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
    if depth is None:
        z = np.ones((h, w), np.float32)
    else:
        z = np.asarray(depth, dtype=np.float32)
        if z.shape != (h, w):
            raise ValueError(f"the depth map must be {h}x{w}, got {z.shape}")
    # row vectors, pytorch3d's convention: X_cam = X_world @ R + T
    cam_x = x * rot[0, 0] + y * rot[1, 0] + z * rot[2, 0] + move[0]
    cam_y = x * rot[0, 1] + y * rot[1, 1] + z * rot[2, 1] + move[1]
    cam_z = x * rot[0, 2] + y * rot[1, 2] + z * rot[2, 2] + move[2]
    off_x = kx * cam_x / cam_z - kx * x / z
    off_y = ky * cam_y / cam_z - ky * y / z
    gx = ((2.0 * np.arange(w) + 1.0) / w - 1.0).astype(np.float32)  # affine_grid(identity, align_corners=False)
    gy = ((2.0 * np.arange(h) + 1.0) / h - 1.0).astype(np.float32)
    sx = gx[None, :] - off_x
    sy = gy[:, None] - off_y
    return ((sx + 1.0) * w - 1.0) / 2.0, ((sy + 1.0) * h - 1.0) / 2.0


def _apply_homography(m: np.ndarray, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Source positions of every destination pixel under a source-to-destination matrix."""
    inv = np.linalg.inv(m)
    x = np.arange(w, dtype=np.float64)[None, :]
    y = np.arange(h, dtype=np.float64)[:, None]
    den = inv[2, 0] * x + inv[2, 1] * y + inv[2, 2]
    den = np.where(den == 0, 1e-12, den)
    return (inv[0, 0] * x + inv[0, 1] * y + inv[0, 2]) / den, (inv[1, 0] * x + inv[1, 1] * y + inv[1, 2]) / den


# ---------------------------------------------------------------- sampling


def _outside(sx: np.ndarray, sy: np.ndarray, w: int, h: int) -> np.ndarray:
    return (sx < -0.5) | (sx > w - 0.5) | (sy < -0.5) | (sy > h - 0.5) | ~np.isfinite(sx) | ~np.isfinite(sy)


class _Source:
    """An image as C planes of float32 pixels, gathered and weighted by flat pixel index."""

    def __init__(self, image: np.ndarray):
        self.h, self.w, self.c = image.shape
        self.planes = np.ascontiguousarray(image.reshape(self.h * self.w, self.c).T, dtype=np.float32)
        self._tap = np.empty_like(self.planes)

    def add(self, out: np.ndarray, index: np.ndarray, weight: np.ndarray) -> None:
        """out += image[index] * weight, in place."""
        np.take(self.planes, index, axis=1, out=self._tap)
        np.multiply(self._tap, weight, out=self._tap)
        out += self._tap

    def result(self, out: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return np.ascontiguousarray(out.T).reshape(shape + (self.c,))


def _finite(coord: np.ndarray) -> np.ndarray:
    return np.nan_to_num(coord, nan=-1e6, posinf=1e6, neginf=-1e6).clip(-1e6, 1e6).reshape(-1)


def sample_cv2(image: np.ndarray, sx: np.ndarray, sy: np.ndarray, border: str) -> np.ndarray:
    """Bilinear sampling like OpenCV's remap: replicate clamps, wrap tiles (float32 HxWxC out)."""
    src = _Source(image)
    h, w = src.h, src.w
    shape = sx.shape
    sx, sy = _finite(sx), _finite(sy)
    x0, y0 = np.floor(sx), np.floor(sy)
    fx, fy = (sx - x0).astype(np.float32), (sy - y0).astype(np.float32)
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    if border == "wrap":
        xs, ys = (x0 % w, (x0 + 1) % w), (y0 % h, (y0 + 1) % h)
    else:
        xs, ys = (x0.clip(0, w - 1), (x0 + 1).clip(0, w - 1)), (y0.clip(0, h - 1), (y0 + 1).clip(0, h - 1))
    out = np.zeros_like(src.planes)
    for row, wy in ((ys[0] * w, 1 - fy), (ys[1] * w, fy)):
        src.add(out, row + xs[0], (1 - fx) * wy)
        src.add(out, row + xs[1], fx * wy)
    return src.result(out, shape)


def _reflect(coord: np.ndarray, size: int) -> np.ndarray:
    """torch's reflect_coordinates for align_corners=False: mirror about -0.5 and size-0.5."""
    span = float(size)
    shifted = np.abs(coord + 0.5)
    flips = np.floor(shifted / span)
    extra = shifted - flips * span
    return np.where(flips % 2 == 0, extra - 0.5, span - extra - 0.5)


def _pad(coord: np.ndarray, size: int, padding: str) -> np.ndarray:
    if padding == "reflection":
        coord = _reflect(coord, size)
    if padding in ("border", "reflection"):
        coord = coord.clip(0, size - 1)
    return coord


def _axis_taps(first: np.ndarray, count: int, size: int, padding: str,
               weights: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Integer taps first..first+count-1 along one axis with grid_sample's per-tap padding.

    Returns the in-range indices and the weights (zeroed for taps outside with zeros padding)."""
    indices, kept = [], []
    for k in range(count):
        tap = first + k
        if padding == "zeros":
            inside = (tap >= 0) & (tap < size)
            indices.append(tap.clip(0, size - 1))
            kept.append(weights[k] * inside)
        elif padding == "border":
            indices.append(tap.clip(0, size - 1))
            kept.append(weights[k])
        else:
            indices.append(_pad(tap.astype(np.float64), size, padding).astype(np.int64))
            kept.append(weights[k])
    return indices, kept


def _cubic_weights(t: np.ndarray) -> list[np.ndarray]:
    a = -0.75  # torch's cubic convolution coefficient

    def near(x: np.ndarray) -> np.ndarray:
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: np.ndarray) -> np.ndarray:
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def sample_torch(image: np.ndarray, sx: np.ndarray, sy: np.ndarray, mode: str, padding: str) -> np.ndarray:
    """``grid_sample(align_corners=False)`` at source pixel positions (float32 HxWxC out)."""
    src = _Source(image)
    h, w = src.h, src.w
    shape = sx.shape
    sx, sy = _finite(sx), _finite(sy)
    if mode == "nearest":
        px, py = np.rint(_pad(sx, w, padding)).astype(np.int64), np.rint(_pad(sy, h, padding)).astype(np.int64)
        (xs,), (wx,) = _axis_taps(px, 1, w, "zeros", [np.ones(px.shape, np.float32)])
        (ys,), (wy,) = _axis_taps(py, 1, h, "zeros", [np.ones(py.shape, np.float32)])
        out = np.zeros_like(src.planes)
        src.add(out, ys * w + xs, wx * wy)
        return src.result(out, shape)
    if mode == "bicubic":  # taps are padded one by one, the position itself is not
        x0, y0 = np.floor(sx), np.floor(sy)
        wx = _cubic_weights((sx - x0).astype(np.float32))
        wy = _cubic_weights((sy - y0).astype(np.float32))
        first_x, first_y, count = x0.astype(np.int64) - 1, y0.astype(np.int64) - 1, 4
        tap_padding = padding
    else:  # bilinear: the position is padded, then out-of-range taps count as zero
        px, py = _pad(sx, w, padding), _pad(sy, h, padding)
        x0, y0 = np.floor(px), np.floor(py)
        fx, fy = (px - x0).astype(np.float32), (py - y0).astype(np.float32)
        wx, wy = [1 - fx, fx], [1 - fy, fy]
        first_x, first_y, count, tap_padding = x0.astype(np.int64), y0.astype(np.int64), 2, "zeros"
    xs, wx = _axis_taps(first_x, count, w, tap_padding, wx)
    ys, wy = _axis_taps(first_y, count, h, tap_padding, wy)
    out = np.zeros_like(src.planes)
    for j in range(count):
        row = ys[j] * w
        for i in range(count):
            src.add(out, row + xs[i], wx[i] * wy[j])
    return src.result(out, shape)


# ---------------------------------------------------------------- the warp


def _check_frame(image: np.ndarray, frame: int, path: WarpPath) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim not in (2, 3) or image.shape[:2] != (path.height, path.width):
        raise ValueError(f"the image must be {path.height}x{path.width} (HxW[xC]), got {image.shape}")
    if not 0 <= int(frame) < path.max_frames:
        raise ValueError(f"frame {frame} is outside the schedules (0..{path.max_frames - 1})")
    return image


def _warp(channels: np.ndarray, frame: int, path: WarpPath, depth: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Warp float HxWxC `channels`; returns (float32 result, bool revealed mask)."""
    h, w = path.height, path.width
    if path.animation_mode == "2D":
        sx, sy = _apply_homography(matrix_2d(path, frame), w, h)
        return sample_cv2(channels, sx, sy, path.border), _outside(sx, sy, w, h)
    if path.animation_mode != "3D":
        return channels.astype(np.float32), np.zeros((h, w), bool)
    revealed_before = None
    if path.perspective_flip:
        fx, fy = _apply_homography(flip_matrix(path, frame), w, h)
        revealed_before = _outside(fx, fy, w, h)
        channels = sample_cv2(channels, fx, fy, path.border)
    if path.use_depth_warping and depth is not None:
        if np.shape(depth) != (h, w):
            raise ValueError(f"the depth map must be {h}x{w}, got {np.shape(depth)}")
        depth = depth_to_z(depth, path.depth_algorithm)
    else:
        depth = None  # Deforum drops the depth map when depth warping is off
    if path.depth_algorithm.lower() in _LEGACY_DEPTH:
        channels = channels + np.float32(1 / 512 - 0.0001)  # as transform_image_3d_legacy
    sx, sy = source_grid_3d(path, frame, depth)
    out = sample_torch(channels, sx, sy, path.sampling_mode, path.padding_mode)
    revealed = _outside(sx, sy, w, h)
    if revealed_before is not None:
        ix = np.rint(_pad(sx, w, "border")).astype(np.int64)
        iy = np.rint(_pad(sy, h, "border")).astype(np.int64)
        revealed |= revealed_before[iy, ix]
    return out, revealed


def _to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    if mode == "3D":  # Deforum: clamp(0, 255) then astype(uint8), which truncates
        return np.clip(values, 0, 255).astype(np.uint8)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)  # OpenCV rounds


def warp_frame(image: np.ndarray, frame: int, path: WarpPath,
               depth: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Deforum's warp of the previous output frame `image` into `frame` (that frame's schedule values).

    `image` is uint8 HxW or HxWxC at the path's size. `depth` (3D only) is a depth model's
    HxW map, the one Deforum would pass to its warp; it is turned into z the way Deforum
    does for the path's ``depth_algorithm`` (`depth_to_z`) and ignored when
    ``use_depth_warping`` is off. None is Deforum's flat depth (z = 1). Returns the warped
    uint8 image and a bool HxW mask of the pixels whose source lies outside the picture.
    """
    image = _check_frame(image, frame, path)
    channels = image.reshape(image.shape[:2] + (-1,)).astype(np.float32)
    out, revealed = _warp(channels, int(frame), path, depth)
    return _to_uint8(out, path.animation_mode).reshape(image.shape), revealed


def fly(image: np.ndarray, start: int, end: int, path: WarpPath,
        depth: np.ndarray | None = None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Warp `image` (the picture at frame `start`) into frames start+1 .. end, one after another.

    Each frame warps the previous warped frame, as Deforum's loop does (with the same
    `depth` map every frame, where Deforum predicts a new one). Yields
    ``(frame, uint8 image, bool mask)``, where the mask marks every pixel revealed at
    any step so far (the earlier masks travel with the picture).
    """
    image = _check_frame(image, start, path)
    if not start <= end < path.max_frames:
        raise ValueError(f"end {end} must be between start {start} and {path.max_frames - 1}")
    shape = image.shape
    current = image.reshape(shape[:2] + (-1,))
    mask = np.zeros(shape[:2], bool)
    for frame in range(start + 1, end + 1):
        stacked = np.concatenate([current.astype(np.float32), mask[..., None].astype(np.float32)], axis=2)
        out, revealed = _warp(stacked, frame, path, depth)
        current = _to_uint8(out[..., :-1], path.animation_mode)
        mask = (out[..., -1] > 0.5) | revealed
        yield frame, current.reshape(shape), mask
