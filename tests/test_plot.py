"""The camera plot: the 3D path Deforum's moves compose (core.trajectory) and a figure whose texts never overlap.

The path tests are pure numpy. The figure tests need matplotlib: they run here when
this venv has it, and always in the host envs (.venv-a1111, .venv-forge, whose
gradio ships matplotlib) by running this file as a script there:
`python tests/test_plot.py OUT.png [SETTINGS]` prints one JSON line with what it saw.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "deforum-settings"
FORGE = SHARED / "forge-deforum-default.txt"
if __name__ == "__main__":  # run as a script in a host env: the package is not installed there
    sys.path.insert(0, str(REPO / "scripts"))

from deforum_wan.core.movement import CameraPath  # noqa: E402
from deforum_wan.core.trajectory import camera_track, rotation_matrices  # noqa: E402

N = 61


def _track(n: int = N, mode: str = "3D", **schedules):
    arrays = {k: np.broadcast_to(np.asarray(v, dtype=float), (n,)) for k, v in schedules.items()}
    return camera_track(CameraPath.from_schedules(arrays, mode, max_frames=n))


# ---------------------------------------------------------------- the path


def test_a_straight_dolly_is_a_straight_line_along_z():
    track = _track(translation_z=1.75)
    np.testing.assert_allclose(track.z, np.arange(N) * 1.75)  # frame 0's value never moves the camera
    np.testing.assert_allclose(track.x, 0.0, atol=1e-12)
    np.testing.assert_allclose(track.y, 0.0, atol=1e-12)
    np.testing.assert_allclose(track.heading, 0.0, atol=1e-12)
    back = _track(translation_z=-2.0)
    assert back.z[-1] == pytest.approx(-2.0 * (N - 1)) and np.allclose(back.heading, 0.0)


def test_frame_zeros_values_never_move_the_camera():
    """render.py warps only `if prev_img is not None`, i.e. from frame 1, with that frame's values."""
    values = np.zeros(N)
    values[0] = 50.0
    track = _track(translation_x=values, translation_z=values, rotation_3d_y=values)
    assert np.allclose(track.position, 0.0) and np.allclose(track.heading, 0.0)
    assert camera_track(CameraPath.from_schedules({"translation_z": [3.0]}, "3D")).position.tolist() == [[0, 0, 0]]


def test_a_steady_pan_right_with_a_dolly_is_a_circle_turning_right():
    step, turn = 2.0, 5.0  # 72 frames of 5 degrees: one full turn
    track = _track(n=73, translation_z=step, rotation_3d_y=turn)
    np.testing.assert_allclose(track.heading, np.arange(73) * turn, atol=1e-9)
    radius = step / (2 * np.sin(np.radians(turn) / 2))  # each frame is a chord of the circle
    centre = track.position[:72].mean(axis=0)  # the vertices of a regular 72-gon
    assert centre[0] == pytest.approx(radius, rel=0.01)  # to the right: the turn is clockwise seen from above
    np.testing.assert_allclose(np.hypot(track.x - centre[0], track.z - centre[2]), radius, rtol=1e-9)
    assert track.x[1:36].min() > 0  # first half of the turn: right of the start
    np.testing.assert_allclose(track.position[-1], 0.0, atol=1e-9)  # a full turn comes back
    left = _track(n=73, translation_z=step, rotation_3d_y=-turn)
    np.testing.assert_allclose(left.x, -track.x, atol=1e-9)  # a pan left mirrors it


def test_heading_follows_rotation_3d_y_and_moves_follow_the_heading():
    ry = np.r_[0.0, np.linspace(-3, 7, N - 1)]
    track = _track(rotation_3d_y=ry)
    np.testing.assert_allclose(track.heading, np.cumsum(ry), atol=1e-9)
    assert np.allclose(track.position, 0.0)  # turning on the spot
    # Turn 90 degrees right at frame 1, then move: forward is +x, truck right is -z, truck left is +z.
    turn = np.zeros(4)
    turn[1] = 90.0
    ahead = _track(n=4, rotation_3d_y=turn, translation_z=np.r_[0, 0, 1, 1])
    np.testing.assert_allclose(ahead.position[-1], [2, 0, 0], atol=1e-12)
    right = _track(n=4, rotation_3d_y=turn, translation_x=np.r_[0, 0, 1, 1])
    np.testing.assert_allclose(right.position[-1], [0, 0, -2], atol=1e-12)


def test_truck_pedestal_tilt_and_roll_directions():
    assert _track(translation_x=1.0).x[-1] == pytest.approx(N - 1)  # truck right
    assert _track(translation_y=1.0).y[-1] == pytest.approx(N - 1)  # pedestal up
    tilt = _track(rotation_3d_x=1.0, translation_z=1.0)
    assert tilt.y[-1] > 10 and tilt.forward[-1, 1] > 0  # tilted up, the dolly climbs
    assert np.allclose(tilt.x, 0.0) and np.allclose(tilt.heading[:30], 0.0)
    roll = np.zeros(4)
    roll[1] = 90.0  # clockwise: the camera's right side turns down
    rolled = _track(n=4, rotation_3d_z=roll, translation_x=np.r_[0, 0, 1, 1])
    np.testing.assert_allclose(rolled.position[-1], [0, -2, 0], atol=1e-12)


def test_matches_composing_deforums_cameras_frame_by_frame():
    """The reference: each frame's camera is X_k = X_{k-1} R + T with Deforum's R and T (animation.py, py3d)."""
    rng = np.random.default_rng(3)
    n = 40
    values = {k: rng.normal(0, s, n) for k, s in (("translation_x", 2), ("translation_y", 2), ("translation_z", 3),
                                                   ("rotation_3d_x", 4), ("rotation_3d_y", 6), ("rotation_3d_z", 5))}
    track = camera_track(CameraPath.from_schedules(values, "3D"))
    a, b = np.eye(3), np.zeros(3)  # X_k = X_0 @ a + b
    for k in range(n):
        if k:
            r = rotation_matrices(*(values[f"rotation_3d_{c}"][k:k + 1] for c in "xyz"))[0]
            t = np.array([-values["translation_x"][k], values["translation_y"][k], -values["translation_z"][k]]) / 200
            a, b = a @ r, b @ r + t
        centre = -b @ a.T * 200  # Deforum units, y down
        np.testing.assert_allclose(track.position[k], centre * [1, -1, 1], atol=1e-9)
        np.testing.assert_allclose(track.forward[k], a[:, 2] * [1, -1, 1], atol=1e-12)


def test_rotation_matrices_are_pytorch3ds_xyz_euler():
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    np.testing.assert_allclose(rotation_matrices([0], [30], [0])[0], [[c, 0, s], [0, 1, 0], [-s, 0, c]])
    np.testing.assert_allclose(rotation_matrices([30], [0], [0])[0], [[1, 0, 0], [0, c, -s], [0, s, c]])
    rx, ry, rz = (rotation_matrices(*v)[0] for v in (([10], [0], [0]), ([0], [20], [0]), ([0], [0], [30])))
    np.testing.assert_allclose(rotation_matrices([10], [20], [30])[0], rx @ ry @ rz)


def test_other_modes_have_no_3d_path():
    track = _track(mode="2D", translation_x=3.0, rotation_3d_y=2.0)
    assert np.allclose(track.position, 0.0) and np.allclose(track.heading, 0.0)
    assert not track.position.flags.writeable


# ---------------------------------------------------------------- the figure


def _settings(path: Path, **changes):
    from deforum_wan.core.settings import load_settings

    data = json.loads(path.read_text(encoding="utf-8"))
    data.update({"seed": 7, **changes})
    return load_settings(data)


def _plan(settings):
    from deforum_wan.core.plan import PlanOptions, plan_clips
    from deforum_wan.core.specs import MODEL_SPECS

    # A clip per prompt (no merging): the most crowded plot.
    return plan_clips(settings, MODEL_SPECS["vace"], PlanOptions(width=64, height=64, min_clip_seconds=0))


def _drawn_texts(fig, renderer) -> list[tuple[str, tuple[float, float, float, float]]]:
    """Every non-empty text the figure draws, with its box in pixels: figure texts, titles, labels, ticks, legends."""
    texts = list(fig.texts)
    for ax in fig.axes:
        texts += [ax.title, ax._left_title, ax._right_title, *ax.texts]
        if ax.get_legend() is not None:
            texts += ax.get_legend().get_texts()
        for axis in (ax.xaxis, ax.yaxis):
            texts += [axis.label, axis.get_offset_text()]
            lo, hi = sorted(axis.get_view_interval())
            locs = axis.get_majorticklocs()
            for loc, tick in zip(locs, axis.get_major_ticks(len(locs))):
                if lo - 1e-9 * (hi - lo) <= loc <= hi + 1e-9 * (hi - lo):
                    texts.append(tick.label1)
    drawn = []
    for t in texts:
        if t.get_visible() and t.get_text().strip():
            box = t.get_window_extent(renderer)
            drawn.append((t.get_text(), (box.x0, box.y0, box.x1, box.y1)))
    return drawn


def _overlaps(drawn, tolerance: float = 0.5) -> list[tuple[str, str]]:
    found = []
    for i, (a, (ax0, ay0, ax1, ay1)) in enumerate(drawn):
        for b, (bx0, by0, bx1, by1) in drawn[i + 1:]:
            if min(ax1, bx1) - max(ax0, bx0) > tolerance and min(ay1, by1) - max(ay0, by0) > tolerance:
                found.append((a, b))
    return found


def figure_report(png: Path, settings_path: Path = FORGE, **changes) -> dict:
    """Build the plot for a settings file, save it as PNG (Agg), and say what it drew and how long it took."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from deforum_wan.webui import plot

    settings = _settings(settings_path, **changes)
    plan = _plan(settings)
    timings, cpu = [], []
    for _ in range(3):  # the first build pays matplotlib's imports and font cache; the tab redraws warm
        started, cpu_started = time.perf_counter(), time.process_time()
        fig = plot.camera_figure(settings, plan)
        built = time.perf_counter()
        fig.savefig(png, format="png")  # what gradio's Plot does with a Figure
        timings.append((built - started, time.perf_counter() - built))
        cpu.append(time.process_time() - cpu_started)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    drawn = _drawn_texts(fig, renderer)
    width, height = canvas.get_width_height()
    outside = [t for t, (x0, y0, x1, y1) in drawn if x0 < -0.5 or y0 < -0.5 or x1 > width + 0.5 or y1 > height + 0.5]
    numbers: dict[str, int] = {}
    for t in fig.texts:
        if t.get_text().isdigit():
            numbers[t.get_text()] = numbers.get(t.get_text(), 0) + 1
    return {
        "keyframes": len(plot.keyframe_legend(settings)),
        "clips": len(plan.clips),
        "texts": len(drawn),
        "overlaps": _overlaps(drawn),
        "outside": outside,
        "numbers": numbers,
        "legend_lines": sum(t.get_text().startswith("frame ") for t in fig.texts),
        "size": [width, height],
        "axes": len(fig.axes),
        "seconds_cold": sum(timings[0]),
        "seconds_warm": min(b + p for b, p in timings[1:]),
        "build_warm": min(b for b, _p in timings[1:]),
        "png_warm": min(p for _b, p in timings[1:]),
        "cpu_warm": min(cpu[1:]),  # what the check uses: wall time on a shared machine waits for the others
    }


def _check_forge_report(report: dict) -> None:
    assert report["keyframes"] == 18 and report["clips"] >= 18
    assert report["overlaps"] == [] and report["outside"] == []
    # Every keyframe number stands on the strip above the curves, beside the path, and in the legend.
    assert report["numbers"] == {str(i): 3 for i in range(1, 19)}, report["numbers"]
    assert report["legend_lines"] == 18 and report["axes"] == 3
    assert report["cpu_warm"] < 1.0, report  # about 0.3 s (build 0.1 s, PNG 0.2 s) on this 2-core machine


def test_forge_file_plot_has_no_overlapping_text(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "forge-camera-plot.png"
    report = figure_report(png)
    assert png.stat().st_size > 10_000
    _check_forge_report(report)


@pytest.mark.parametrize("changes", [
    {"rotation_3d_y": "0:(1.5), 120:(-1)", "translation_z": "0:(2)", "rotation_3d_x": "0:(0.1*sin(t/20))"},
    {"rotation_3d_y": "0:(3)", "translation_z": "0:(0)", "max_frames": 120},  # turning on the spot
    {"translation_z": "0:(0)"},  # a still camera: every keyframe at one spot
    {"animation_mode": "2D"},
    {"wan_prompts": {str(3 * i): f"prompt {i} costs $5, {'long ' * 20}" for i in range(40)}, "max_frames": 120},
])
def test_other_paths_and_keyframe_counts_stay_readable(tmp_path, changes):
    pytest.importorskip("matplotlib")
    report = figure_report(tmp_path / "plot.png", **changes)
    assert report["overlaps"] == [] and report["outside"] == []


@pytest.mark.parametrize("host", ["a1111", "forge"])
def test_figure_in_host_env(host, tmp_path):
    """The same checks with each host's own matplotlib, so they run even where this venv has none."""
    from conftest import host_python

    python = host_python(host)
    png = tmp_path / f"forge-camera-plot-{host}.png"
    result = subprocess.run([str(python), __file__, str(png)], capture_output=True, text=True, cwd=tmp_path,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    _check_forge_report(json.loads(result.stdout.strip().splitlines()[-1]))
    assert png.stat().st_size > 10_000


if __name__ == "__main__":
    print(json.dumps(figure_report(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else FORGE)))
