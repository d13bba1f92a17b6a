"""The tab's camera plot: per-axis curves over time and the camera's path seen from above.

A Deforum user thinks in camera moves, so beside the per-frame schedules the plot
shows where the camera goes: the 3D path composed by `core.trajectory` drawn in
x/z (forward up the page), arrows for the direction of view, height as colour,
start and end, clip boundaries and prompt keyframes. It lives apart from
`tab_data.py` because it is the only part of the tab that needs matplotlib and
the only one where layout is the point.

Readable at any keyframe count: every text is placed in pixels by this module
(fixed axes, no tight_layout) and checked against the texts already placed, so
nothing overlaps. Prompt keyframes are numbered 1..N; the numbers stand above the
curves (staggered in rows) and beside the path (tried around each marker), and a
legend below gives each number its frame and (elided) prompt. A label with no
free spot is left out rather than drawn over another; the legend always lists it.

Built on `matplotlib.figure.Figure`, never pyplot, so no GUI backend is chosen and
nothing global changes in the host; both hosts' gradio ship matplotlib. The plot
is redrawn on every plan update, so it avoids anything that needs an extra draw.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from ..core.plan import ClipPlan
    from ..core.settings import DeforumSettings

DPI = 90
WIDTH_PX = 900
FONT = 7.0  # points
KEYFRAME_COLOUR = "tab:red"
CLIP_COLOUR = "0.55"
STRIP_ROWS = 3  # rows of keyframe numbers above the curves
LEGEND_MAX_ROWS = 8
ARROWS = 12  # view-direction arrows along the path

# Fixed layout, in pixels from the figure's left and top.
_LEFT, _LEFT_W = 62, 450  # the two time axes
_MAP_LEFT, _MAP_W = 610, 270  # the top-down axes
_TITLE_H, _TOP_H, _GAP, _BOTTOM_H, _XLABEL_H = 24, 140, 8, 118, 40
_ROW_H = 11  # keyframe-number rows above the curves
_LEGEND_ROW_H = 12


# ---------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class CameraSeries:
    """One camera schedule: its per-frame increments and the integrated position."""

    key: str
    per_frame: "np.ndarray"
    path: "np.ndarray"
    unit: str


_AXES_2D = ("translation_x", "translation_y", "angle", "zoom")
_AXES_3D = ("translation_x", "translation_y", "translation_z", "rotation_3d_x", "rotation_3d_y", "rotation_3d_z")
_UNITS = {"translation_x": "px", "translation_y": "px", "translation_z": "units", "angle": "deg",
          "rotation_3d_x": "deg", "rotation_3d_y": "deg", "rotation_3d_z": "deg", "zoom": "scale"}


def camera_series(settings: "DeforumSettings", *, only_moving: bool = True) -> list[CameraSeries]:
    """The schedules Deforum's warp reads in this animation mode, per frame and integrated.

    Deforum applies each value as a per-frame increment (zoom as a factor), so the
    camera's path is the running sum (running product for zoom). Schedules that
    never move the camera are left out unless `only_moving` is False.
    """
    import numpy as np

    from ..core.plan import camera_path

    path = camera_path(settings)
    keys = _AXES_3D if path.animation_mode == "3D" else _AXES_2D if path.animation_mode == "2D" else ()
    series = []
    for key in keys:
        values = np.asarray(getattr(path, key), dtype=float)
        integrated = np.cumprod(values) if key == "zoom" else np.cumsum(values)
        if only_moving and (np.allclose(values, 1.0) if key == "zoom" else np.allclose(values, 0.0)):
            continue
        series.append(CameraSeries(key, values, integrated, _UNITS[key]))
    return series


def plot_marks(plan: "ClipPlan | None", settings: "DeforumSettings") -> tuple[list[int], list[tuple[int, str]]]:
    """Clip starts (after the first) and prompt keyframes (frame, key) to mark on the plot."""
    from ..core.prompts import prompt_keyframes

    clips = [c.output_start for c in plan.clips[1:]] if plan is not None else []
    keys = [(kf.frame, kf.key) for kf in prompt_keyframes(settings)]
    return clips, keys


def keyframe_legend(settings: "DeforumSettings") -> list[tuple[int, int, str]]:
    """(number, frame, positive prompt) per prompt keyframe, numbered from 1 as on the plot."""
    from ..core.prompts import prompt_keyframes, split_negative

    return [(i, kf.frame, split_negative(kf.text).positive) for i, kf in enumerate(prompt_keyframes(settings), 1)]


# ---------------------------------------------------------------------------
# Placing text without overlaps


class _Layout:
    """The figure's pixel geometry and every text box placed so far (pixels, origin bottom-left)."""

    def __init__(self, fig: Any, height: int):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.font_manager import FontProperties

        self.fig, self.height = fig, height
        self.renderer = FigureCanvasAgg(fig).get_renderer()
        self.boxes: list[tuple[float, float, float, float]] = []
        self._props: dict[tuple[float, str], Any] = {}
        self._sizes: dict[tuple[str, float, str], tuple[float, float]] = {}
        self._lp: dict[tuple[float, str], tuple[float, float, float]] = {}
        self._font = FontProperties

    def size(self, text: str, fontsize: float = FONT, weight: str = "normal") -> tuple[float, float]:
        """Width and height in pixels, as the Agg renderer will draw it (measured once per text)."""
        key = (text, fontsize, weight)
        if key not in self._sizes:
            if (fontsize, weight) not in self._props:
                self._props[fontsize, weight] = self._font(size=fontsize, weight=weight)
                self._lp[fontsize, weight] = self.renderer.get_text_width_height_descent(
                    "lp", self._props[fontsize, weight], ismath=False)
            w, h, d = self.renderer.get_text_width_height_descent(text, self._props[fontsize, weight], ismath=False)
            _w, lp_h, lp_d = self._lp[fontsize, weight]
            self._sizes[key] = (w, max(h - d, lp_h - lp_d) + max(d, lp_d))  # Text's own box: at least "lp" high
        return self._sizes[key]

    def axes(self, left: float, top: float, width: float, height: float) -> Any:
        """Axes at a pixel rectangle given from the figure's top-left."""
        return self.fig.add_axes((left / WIDTH_PX, (self.height - top - height) / self.height,
                                  width / WIDTH_PX, height / self.height))

    def free(self, box: tuple[float, float, float, float], inside: tuple[float, float, float, float] | None) -> bool:
        x0, y0, x1, y1 = box
        if inside is not None and (x0 < inside[0] or y0 < inside[1] or x1 > inside[2] or y1 > inside[3]):
            return False
        return all(x1 <= b[0] or x0 >= b[2] or y1 <= b[1] or y0 >= b[3] for b in self.boxes)

    def text(self, x: float, y: float, text: str, *, ha: str = "center", va: str = "center",
             fontsize: float = FONT, weight: str = "normal", color: str = "black", pad: float = 1.0,
             inside: tuple[float, float, float, float] | None = None, force: bool = False) -> bool:
        """Draw `text` at pixel (x, y) if its box is free (or `force`); False when it was left out."""
        w, h = self.size(text, fontsize, weight)
        x0 = x - w / 2 if ha == "center" else x - w if ha == "right" else x
        y0 = y - h / 2 if va == "center" else y - h if va == "top" else y
        box = (x0 - pad, y0 - pad, x0 + w + pad, y0 + h + pad)
        if not force and not self.free(box, inside):
            return False
        self.boxes.append(box)
        self.fig.text(x / WIDTH_PX, y / self.height, _plain(text), ha=ha, va=va, fontsize=fontsize,
                      fontweight=weight, color=color)
        return True

    def elide(self, text: str, width: float, fontsize: float = FONT) -> str:
        """`text` cut with an ellipsis to at most `width` pixels.

        The cut comes from per-character widths (each character measured once), then
        the result is measured whole, as drawn, and shortened while kerning makes it wider.
        """
        if len(text) <= 12 and self.size(text, fontsize)[0] <= width:
            return text
        room = width - self.size("…", fontsize)[0]
        total, n = 0.0, 0
        for n, char in enumerate(text):
            total += self.size(char, fontsize)[0] if char != " " else self.size("a b", fontsize)[0] - \
                self.size("ab", fontsize)[0]
            if total > room:
                break
        else:
            if self.size(text, fontsize)[0] <= width:
                return text
            n = len(text)
        while n > 0:
            candidate = text[:n].rstrip() + "…"
            if self.size(candidate, fontsize)[0] <= width:
                return candidate
            n -= 1
        return "…"


def _plain(text: str) -> str:
    """Text matplotlib shows as typed: a `$` would otherwise start mathtext."""
    return text.replace("$", r"\$")


def _strip_rows(layout: _Layout, xs: list[float], labels: list[str]) -> list[int | None]:
    """A row (0 = lowest) per label so that no two labels in a row overlap; None = no room in STRIP_ROWS."""
    ends = [-1e9] * STRIP_ROWS
    rows: list[int | None] = []
    for x, label in zip(xs, labels):
        half = layout.size(label, FONT, "bold")[0] / 2 + 2
        row = next((r for r in range(STRIP_ROWS) if ends[r] <= x - half), None)
        if row is not None:
            ends[row] = x + half
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------
# The figure


def camera_figure(settings: "DeforumSettings", plan: "ClipPlan | None" = None) -> Any:
    """The camera plot: per-axis paths (top left), per-frame values (bottom left), the path from above (right).

    Clip boundaries are dotted, prompt keyframes dashed and numbered; the numbers
    are explained in the legend at the bottom.
    """
    from matplotlib.figure import Figure

    series = camera_series(settings)
    clip_starts, _keys = plot_marks(plan, settings)
    legend = keyframe_legend(settings)
    last = max(settings.max_frames - 1, 1)

    ncol = 1 if len(legend) <= 4 else 2 if len(legend) <= 10 else 3
    legend_rows = min(-(-len(legend) // ncol), LEGEND_MAX_ROWS)
    plot_top = _TITLE_H + STRIP_ROWS * _ROW_H + 4
    legend_top = plot_top + _TOP_H + _GAP + _BOTTOM_H + _XLABEL_H
    height = legend_top + legend_rows * _LEGEND_ROW_H + 8
    fig = Figure(figsize=(WIDTH_PX / DPI, height / DPI), dpi=DPI)
    layout = _Layout(fig, height)

    layout.text(8, height - 6, f"{settings.animation_mode} camera over {settings.max_frames} frames: "
                "dotted = clip boundaries, dashed and numbered = prompt keyframes", ha="left", va="top",
                fontsize=8.5, force=True)
    top = layout.axes(_LEFT, plot_top, _LEFT_W, _TOP_H)
    bottom = layout.axes(_LEFT, plot_top + _TOP_H + _GAP, _LEFT_W, _BOTTOM_H)
    _time_axes(top, bottom, settings, series, clip_starts, legend, last)
    xs = [_LEFT + f / last * _LEFT_W for _n, f, _t in legend]
    rows = _strip_rows(layout, xs, [str(n) for n, _f, _t in legend])
    for x, row, (number, _f, _t) in zip(xs, rows, legend):
        if row is not None:
            layout.text(x, height - plot_top + 2 + row * _ROW_H, str(number), va="bottom", weight="bold",
                        color=KEYFRAME_COLOUR, pad=0.5, force=True)

    map_height = _TOP_H + _GAP + _BOTTOM_H
    ax = layout.axes(_MAP_LEFT, plot_top, _MAP_W, map_height)
    _top_down(layout, ax, settings, clip_starts, legend,
              (_MAP_LEFT, height - plot_top - map_height, _MAP_W, map_height))
    _legend(layout, legend, ncol, legend_rows, height - legend_top)
    return fig


def _time_axes(top: Any, bottom: Any, settings: "DeforumSettings", series: list[CameraSeries],
               clip_starts: list[int], legend: list[tuple[int, int, str]], last: int) -> None:
    frames = range(settings.max_frames)
    if not series:
        top.text(0.5, 0.5, f"static camera ({settings.animation_mode} mode)", ha="center", va="center",
                 transform=top.transAxes, fontsize=8)
    for s in series:
        label = f"{s.key} ({s.unit})"
        path = s.path - 1.0 if s.key == "zoom" else s.path
        top.plot(frames, path, label=label + (" -1" if s.key == "zoom" else ""), linewidth=1.2)
        bottom.plot(frames, s.per_frame - (1.0 if s.key == "zoom" else 0.0), label=label, linewidth=1.2)
    top.set_ylabel("camera path", fontsize=FONT)
    bottom.set_ylabel("per frame", fontsize=FONT)
    bottom.set_xlabel("frame", fontsize=FONT)
    top.tick_params(labelbottom=False)
    for ax in (top, bottom):
        marks = ax.get_xaxis_transform()  # x in frames, y in axes fraction: one collection per kind
        if clip_starts:
            ax.vlines(clip_starts, 0, 1, transform=marks, color=CLIP_COLOUR, linestyle=":", linewidth=1)
        ax.vlines([f for _n, f, _t in legend], 0, 1, transform=marks, color=KEYFRAME_COLOUR, linestyle="--",
                  linewidth=0.8, alpha=0.6)
        ax.grid(alpha=0.25)
        ax.set_xlim(0, last)
        ax.tick_params(labelsize=FONT)
        ax.yaxis.get_major_locator().set_params(nbins=5)
        ax.ticklabel_format(axis="y", style="plain", useOffset=False)  # no offset text above the axes
    if series:
        top.legend(fontsize=6.5, loc="upper left", framealpha=0.8, handlelength=1.5)


def _top_down(layout: _Layout, ax: Any, settings: "DeforumSettings", clip_starts: list[int],
              legend: list[tuple[int, int, str]], rect: tuple[float, float, float, float]) -> None:
    """The path in x/z (forward up the page) with view arrows, height colour, start/end, clips and keyframes."""
    import numpy as np

    from ..core.plan import camera_path
    from ..core.trajectory import camera_track

    if settings.animation_mode != "3D":
        ax.set_title("seen from above", fontsize=FONT + 0.5, pad=4)
        why = "2D mode moves the picture,\nnot a camera in space" if settings.animation_mode == "2D" else \
            f"{settings.animation_mode} mode: static camera"
        ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, fontsize=8, color="0.35")
        ax.set_xticks([])
        ax.set_yticks([])
        return
    ax.set_title("seen from above (arrows: view direction)", fontsize=FONT + 0.5, pad=4)
    ax.set_xlabel("x, right (units)", fontsize=FONT)
    ax.set_ylabel("z, forward (units)", fontsize=FONT)
    ax.tick_params(labelsize=FONT)
    track = camera_track(camera_path(settings))
    x, z, y = track.x, track.z, track.y
    n = len(x)
    flat = np.hypot(track.forward[:, 0], track.forward[:, 2])
    span = max(float(np.ptp(x)), float(np.ptp(z)))
    arrow = 0.08 * span if span > 1e-9 else 1.0
    tips_x, tips_z = x + _unit(track.forward[:, 0], flat) * arrow, z + _unit(track.forward[:, 2], flat) * arrow
    lo_x, hi_x = min(x.min(), tips_x.min()), max(x.max(), tips_x.max())
    lo_z, hi_z = min(z.min(), tips_z.min()), max(z.max(), tips_z.max())
    left, bottom_px, width, height = rect
    scale = max((hi_x - lo_x) / width, (hi_z - lo_z) / height, 1e-12) * 1.25  # units per pixel, equal in x and z
    cx, cz = (lo_x + hi_x) / 2, (lo_z + hi_z) / 2
    ax.set_xlim(cx - scale * width / 2, cx + scale * width / 2)
    ax.set_ylim(cz - scale * height / 2, cz + scale * height / 2)
    for axis in (ax.xaxis, ax.yaxis):
        axis.get_major_locator().set_params(nbins=4)
    ax.ticklabel_format(style="plain", useOffset=False)
    ax.grid(alpha=0.25)

    lifted = float(np.ptp(y)) > 1e-6 * max(span, 1.0)
    if lifted:
        from matplotlib.collections import LineCollection

        points = np.stack([x, z], axis=1)
        line = LineCollection(np.stack([points[:-1], points[1:]], axis=1), cmap="viridis", linewidths=1.8)
        line.set_array((y[:-1] + y[1:]) / 2)
        ax.add_collection(line)
        ax.set_title(f"seen from above (arrows: view direction)\ncolour = height y: {y.min():.3g} (dark) to "
                     f"{y.max():.3g} (light)", fontsize=FONT + 0.5, pad=4)
    else:
        ax.plot(x, z, color="tab:blue", linewidth=1.6)
    every = sorted({int(round(v)) for v in np.linspace(0, n - 1, min(n, ARROWS))})
    show = [i for i in every if flat[i] > 1e-6]
    if show:
        ax.quiver(x[show], z[show], _unit(track.forward[show, 0], flat[show]) * arrow,
                  _unit(track.forward[show, 2], flat[show]) * arrow, angles="xy", scale_units="xy", scale=1,
                  width=0.006, color="0.3", zorder=3)
    if clip_starts:
        _clip_ticks(ax, x, z, track.forward, clip_starts, 4 * scale)

    def pixel(i: int) -> tuple[float, float]:
        return left + (x[i] - (cx - scale * width / 2)) / scale, bottom_px + (z[i] - (cz - scale * height / 2)) / scale

    inside = (left + 2, bottom_px + 2, left + width - 2, bottom_px + height - 2)
    frames = [f for _n, f, _t in legend]
    for i, r in [(0, 4.0), (n - 1, 4.0)] + [(f, 2.5) for f in frames]:  # markers are obstacles for every label
        px, pz = pixel(i)
        layout.boxes.append((px - r, pz - r, px + r, pz + r))
    ax.plot([x[0]], [z[0]], marker="o", color="tab:green", markersize=7, zorder=5)
    ax.plot([x[-1]], [z[-1]], marker="s", color="black", markersize=6, zorder=5)
    still = np.hypot(*np.subtract(pixel(0), pixel(n - 1))) < 3
    _label_near(layout, *pixel(0), "start = end" if still else "start", inside, color="tab:green", near=7.0)
    if not still:
        _label_near(layout, *pixel(n - 1), "end", inside, near=7.0)
    ax.plot(x[frames], z[frames], linestyle="none", marker="o", markersize=4, color=KEYFRAME_COLOUR, zorder=4)
    groups: list[tuple[list[int], tuple[float, float]]] = []  # keyframes in a row at one spot share a label
    for number, frame, _t in legend:
        spot = pixel(frame)
        if groups and np.hypot(*np.subtract(spot, groups[-1][1])) < 3:
            groups[-1][0].append(number)
        else:
            groups.append(([number], spot))
    for numbers, spot in groups:
        label = str(numbers[0]) if len(numbers) == 1 else f"{numbers[0]}-{numbers[-1]}"
        _label_near(layout, *spot, label, inside, color=KEYFRAME_COLOUR, weight="bold")


def _unit(component: "np.ndarray", norm: "np.ndarray") -> "np.ndarray":
    import numpy as np

    return np.divide(component, norm, out=np.zeros_like(component), where=norm > 1e-12)


def _clip_ticks(ax: Any, x: "np.ndarray", z: "np.ndarray", forward: "np.ndarray", frames: list[int],
                half: float) -> None:
    """Short grey bars across the path where a clip starts (across the motion, else across the view)."""
    import numpy as np
    from matplotlib.collections import LineCollection

    segments = []
    for f in frames:
        a, b = max(f - 1, 0), min(f + 1, len(x) - 1)
        dx, dz = x[b] - x[a], z[b] - z[a]
        if np.hypot(dx, dz) < 1e-12:
            dx, dz = forward[f, 0], forward[f, 2]
        norm = np.hypot(dx, dz)
        if norm < 1e-12:
            continue
        nx, nz = -dz / norm * half, dx / norm * half
        segments.append([(x[f] - nx, z[f] - nz), (x[f] + nx, z[f] + nz)])
    ax.add_collection(LineCollection(segments, colors=CLIP_COLOUR, linewidths=1.4, zorder=3))


def _label_near(layout: _Layout, px: float, pz: float, text: str, inside: tuple[float, float, float, float],
                color: str = "black", weight: str = "normal", near: float = 5.0) -> bool:
    """Put `text` beside the point (px, pz): right, left, above, below, then the diagonals, then farther out."""
    w, h = layout.size(text, FONT, weight)
    for reach in (near, near + 6.0, near + 13.0):
        dx, dz = reach + w / 2, reach * 0.6 + h / 2
        for ox, oz in ((dx, 0), (-dx, 0), (0, dz), (0, -dz), (dx, dz), (-dx, dz), (dx, -dz), (-dx, -dz)):
            if layout.text(px + ox, pz + oz, text, color=color, weight=weight, inside=inside, pad=0.5):
                return True
    return False


def _legend(layout: _Layout, legend: list[tuple[int, int, str]], ncol: int, rows: int, top: float) -> None:
    """Number, frame and prompt per keyframe, column by column; more than fits ends with a count."""
    if not legend:
        return
    shown = legend if len(legend) <= ncol * rows else legend[: ncol * rows - 1]
    col_w = (WIDTH_PX - 16) / ncol
    number_w = layout.size(str(len(legend)), FONT, "bold")[0]
    for k, (number, frame, prompt) in enumerate(shown):
        col, row = divmod(k, rows)
        x, y = 8 + col * col_w, top - row * _LEGEND_ROW_H
        layout.text(x + number_w, y, str(number), ha="right", va="top", weight="bold", color=KEYFRAME_COLOUR,
                    force=True, pad=0)
        text = layout.elide(f"frame {frame}: {prompt}", col_w - number_w - 14)
        layout.text(x + number_w + 4, y, text, ha="left", va="top", force=True, pad=0)
    if len(shown) < len(legend):
        col, row = divmod(len(shown), rows)
        layout.text(8 + col * col_w, top - row * _LEGEND_ROW_H, f"… {len(legend) - len(shown)} more keyframes "
                    "(see the plan table)", ha="left", va="top", color="0.35", force=True, pad=0)
