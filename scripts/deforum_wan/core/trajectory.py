"""The camera's 3D trajectory: Deforum's per-frame 3D moves composed into a pose per frame.

A Deforum user thinks in camera moves, so the tab draws the camera's path seen from
above. Deforum never stores that path: each frame warps the previous one by that
frame's schedule values, taken in the *previous camera's* frame. This module
composes those increments into a position and a view direction per frame. It is
pure numbers (numpy only); `webui/plot.py` draws the result.

Coordinates
-----------
Relative to the first frame's camera: x = right, y = up, z = forward (the
direction the first frame looks), in Deforum's translation units (the numbers
the schedules hold, before Deforum's 1/200 scale). A dolly of 1.0 per frame for
100 frames ends at z = 100. ``heading`` is the view direction's angle in the x/z
plane, in degrees, positive to the right (a pan right), unwrapped.

Sign conventions, read from Deforum (deforum-art/sd-webui-deforum at 3224268,
``scripts/deforum_helpers``)
-----------------------------------------------------------------------------
* ``animation.py`` L213-227, ``anim_frame_warp_3d``::

      translate_xyz = [-tx * 1/200, ty * 1/200, -tz * 1/200]
      rotate_xyz = [radians(rx), radians(ry), radians(rz)]
      rot_mat = p3d.euler_angles_to_matrix(torch.tensor(rotate_xyz), "XYZ")

* ``src/py3d_tools.py`` L1587-1598, ``get_world_to_view_transform``:
  ``X_cam = X_world R + T`` (row vectors); L1484-1540: ``R = R_X @ R_Y @ R_Z``
  with ``R_Y = [[c, 0, s], [0, 1, 0], [-s, 0, c]]`` (and R_X, R_Z alike).
* ``animation.py`` L326 and L359-370, ``transform_image_3d_new``: the scene
  points are ``(x, y, depth)`` with x, y from ``meshgrid(linspace(-1, 1))`` over
  the image (x right, y DOWN on screen), each pixel moves by
  ``project(new camera) - project(old camera)`` (``grid_sample`` at
  ``coords - offset``), so the new picture is what the camera ``(R, T)`` sees,
  given in the previous camera's coordinates.
* ``render.py`` L412-415: ``if prev_img is not None: anim_frame_warp(...,
  frame_idx)``: the warp runs from frame 1 on, so frame k's values move the
  camera from frame k-1 to frame k and frame 0's values never move it.

Working it through: camera k sees ``X_k = X_{k-1} R_k + T_k``. With ``A_k =
R_1 R_2 ... R_k`` (the world-to-camera rotation), its centre in the first
camera's coordinates is ``C_k = C_{k-1} - T_k A_k^T`` and its axes are A_k's
columns (right, down, forward). Hence, per frame (rotation first, then the move
along the *rotated* axes):

* translation_z > 0 moves the camera FORWARD (dolly in): ``-T_z = tz/200``
  along its view direction;
* translation_x > 0 moves it RIGHT (truck right): ``-T_x = tx/200`` along its x;
* translation_y > 0 moves it UP: ``-T_y = -ty/200`` along its y, which points down;
* rotation_3d_y > 0 turns the view RIGHT (pan right): forward becomes
  ``(sin ry, 0, cos ry)``; a steady pan with a steady dolly draws a circle,
  clockwise seen from above;
* rotation_3d_x > 0 tilts the view UP (forward gains -y, i.e. up);
* rotation_3d_z rolls about the view direction (moves x/y after it).

These agree with the camera words in `movement.py` (pan right, tilt up, dolly in,
truck right, pedestal up for positive values).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .movement import MODE_3D, CameraPath

__all__ = ["CameraTrack", "camera_track", "rotation_matrices"]


@dataclass(frozen=True, eq=False)
class CameraTrack:
    """Camera pose per frame: ``position`` (N, 3) and unit ``forward`` (N, 3), x right, y up, z forward."""

    position: np.ndarray
    forward: np.ndarray

    @property
    def x(self) -> np.ndarray:
        return self.position[:, 0]

    @property
    def y(self) -> np.ndarray:
        return self.position[:, 1]

    @property
    def z(self) -> np.ndarray:
        return self.position[:, 2]

    @property
    def heading(self) -> np.ndarray:
        """Degrees, the view direction in the x/z plane: 0 = the first frame's, > 0 = turned right; unwrapped."""
        return np.degrees(np.unwrap(np.arctan2(self.forward[:, 0], self.forward[:, 2])))


def rotation_matrices(rx: np.ndarray, ry: np.ndarray, rz: np.ndarray) -> np.ndarray:
    """(N, 3, 3) ``R_X @ R_Y @ R_Z`` for angles in degrees: pytorch3d's ``euler_angles_to_matrix(..., "XYZ")``."""
    n = len(rx)
    out = []
    for axis, deg in (("X", rx), ("Y", ry), ("Z", rz)):
        a = np.radians(np.asarray(deg, dtype=np.float64))
        c, s = np.cos(a), np.sin(a)
        m = np.zeros((n, 3, 3))
        if axis == "X":
            m[:, 0, 0], m[:, 1, 1], m[:, 1, 2], m[:, 2, 1], m[:, 2, 2] = 1, c, -s, s, c
        elif axis == "Y":
            m[:, 1, 1], m[:, 0, 0], m[:, 0, 2], m[:, 2, 0], m[:, 2, 2] = 1, c, s, -s, c
        else:
            m[:, 2, 2], m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = 1, c, -s, s, c
        out.append(m)
    return out[0] @ out[1] @ out[2]


def _prefix_products(mats: np.ndarray) -> np.ndarray:
    """``out[k] = mats[0] @ ... @ mats[k]``, in log2(N) batched steps (a Hillis-Steele scan)."""
    out = mats.copy()
    step = 1
    while step < len(out):
        out[step:] = out[:-step] @ out[step:]  # the right side is evaluated before the assignment
        step *= 2
    return out


def camera_track(path: CameraPath) -> CameraTrack:
    """Compose the 3D moves of `path` into a pose per frame (see the module docstring for the conventions).

    Only Deforum's 3D warp moves a camera in space; for any other animation mode the
    camera stays at the origin looking forward (2D moves are picture shifts, not a path).
    """
    n = path.max_frames
    if path.animation_mode != MODE_3D:
        return CameraTrack(_frozen(np.zeros((n, 3))), _frozen(np.tile([0.0, 0.0, 1.0], (n, 1))))
    zero_first = np.r_[0.0, np.ones(n - 1)]  # frame 0's values never move the camera
    rot = rotation_matrices(path.rotation_3d_x * zero_first, path.rotation_3d_y * zero_first,
                            path.rotation_3d_z * zero_first)
    world = _prefix_products(rot)  # A_k: columns are camera k's right, down, forward
    # -T_k in camera k's axes (x right, y down, z forward), in Deforum units (before the 1/200).
    local = np.stack([path.translation_x, -path.translation_y, path.translation_z], axis=1) * zero_first[:, None]
    steps = np.einsum("kij,kj->ki", world, local)
    position = np.cumsum(steps, axis=0)
    forward = world[:, :, 2].copy()
    position[:, 1] = 0.0 - position[:, 1]  # y down -> y up (0.0 - keeps +0.0 for no height)
    forward[:, 1] = 0.0 - forward[:, 1]
    return CameraTrack(_frozen(position), _frozen(forward))


def _frozen(arr: np.ndarray) -> np.ndarray:
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    arr.setflags(write=False)
    return arr
