"""Pure numpy work on rendered clips: onto the output timeline, and colour continuity.

Kept apart from `render.py` so it is tested without models: given the same Wan
frames, these functions give the same output frames.

Colour continuity comes in two forms. `match_colors` matches each chained clip
to the clip before it, so its errors compound over a long render. A
`ColorReference` built once (from the first frames, or an image) and
`match_to_reference` anchor every clip to the same fixed colours, as Deforum's
`color_coherence` does with its `color_match_sample`: drift cannot accumulate.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import wraps
from typing import Callable, Sequence

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

    This chains: each clip is matched to the previous one, never to the start, so
    any error left after the overlap is inherited and added to by the next clip.
    Over many clips the colours walk away (a long render can end saturated blue).
    `match_to_reference` anchors to a fixed reference instead.
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


# ---------------------------------------------------------------------------
# Colour spaces. All work in float32 on arrays of any shape ending in 3 channels.
# RGB is 0..255; HSV is hue, saturation, value each in 0..1 (hue is a turn, so
# 0 and 1 are the same red); LAB is CIE L*a*b* (D65), L* 0..100, a* b* about +-128.
# ---------------------------------------------------------------------------

SPACES = ("RGB", "HSV", "LAB")

# sRGB (D65) to CIE XYZ. Dividing each row by its sum puts the white point in the
# matrix, so sRGB white is exactly L* = 100, a* = b* = 0.
_SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                         [0.2126729, 0.7151522, 0.0721750],
                         [0.0193339, 0.1191920, 0.9503041]])
_RGB_TO_XYZN = _SRGB_TO_XYZ / _SRGB_TO_XYZ.sum(axis=1, keepdims=True)
_XYZN_TO_RGB = np.linalg.inv(_RGB_TO_XYZN).astype(np.float32)
_RGB_TO_XYZN = _RGB_TO_XYZN.astype(np.float32)
_DELTA = 6.0 / 29.0  # where CIE's f(t) switches from a cube root to a line


def _srgb_decode(c: np.ndarray) -> np.ndarray:
    """sRGB companded 0..1 -> linear light 0..1."""
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


_LINEAR = _srgb_decode(np.arange(256) / 255.0).astype(np.float32)  # the 256 uint8 levels, looked up


def _linear(channel: np.ndarray) -> np.ndarray:
    if channel.dtype == np.uint8:
        return _LINEAR[channel]
    return _srgb_decode(np.clip(np.asarray(channel, np.float32) / 255.0, 0.0, 1.0)).astype(np.float32)


def _srgb_encode(linear: np.ndarray) -> np.ndarray:
    """Linear light -> sRGB 0..255 (float32), out-of-gamut values clipped; in place."""
    c = np.clip(linear, 0.0, 1.0, out=linear)
    dark = c <= 0.0031308
    low = c[dark] * (12.92 * 255.0)
    np.power(c, 1 / 2.4, out=c)
    c *= 1.055 * 255.0
    c -= 0.055 * 255.0
    c[dark] = low
    return c


def _mix(matrix: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> list[np.ndarray]:
    """A 3x3 matrix times per-channel arrays, channel by channel (far faster than matmul on (N, 3))."""
    out = []
    for row in matrix:
        x = a * row[0]
        x += b * row[1]
        x += c * row[2]
        out.append(x)
    return out


def _split(values: np.ndarray, dtype=np.float32) -> list[np.ndarray]:
    values = np.asarray(values).reshape(-1, 3)
    if dtype is None:
        return [values[:, i] for i in range(3)]
    return [np.array(values[:, i], dtype) for i in range(3)]  # copies: callers work in place


def _per_pixel(convert: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """Let a conversion written for (N, 3) take any shape (..., 3), a single colour included."""
    def wrapper(values: np.ndarray) -> np.ndarray:
        values = np.asarray(values)
        if values.shape[-1:] != (3,):
            raise ValueError(f"expected colours (..., 3), got shape {values.shape}")
        return convert(values).reshape(values.shape)
    return wraps(convert)(wrapper)


@_per_pixel
def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """RGB 0..255 (uint8 or float) -> CIE L*a*b*, float32."""
    fx, fy, fz = _mix(_RGB_TO_XYZN, *(_linear(c) for c in _split(rgb, None)))
    for t in (fx, fy, fz):  # CIE f(t): a cube root, a line near black
        dark = t <= _DELTA ** 3
        low = t[dark] / (3 * _DELTA ** 2) + 4.0 / 29.0
        np.cbrt(t, out=t)
        t[dark] = low
    lightness = fy * 116.0 - 16.0
    fx -= fy
    fx *= 500.0
    fy -= fz
    fy *= 200.0
    return np.stack([lightness, fx, fy], axis=-1)


@_per_pixel
def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIE L*a*b* -> RGB 0..255, float32 (not rounded; out-of-gamut colours clipped)."""
    lightness, a, b = _split(lab)
    fy = (lightness + 16.0) / 116.0
    ts = [fy + a / 500.0, fy, fy - b / 200.0]
    for t in ts:
        dark = t <= _DELTA
        low = (t[dark] - 4.0 / 29.0) * (3 * _DELTA ** 2)
        t **= 3
        t[dark] = low
    return np.stack([_srgb_encode(c) for c in _mix(_XYZN_TO_RGB, *ts)], axis=-1)


@_per_pixel
def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """RGB 0..255 -> hue, saturation, value in 0..1, float32. Greys get hue 0."""
    r, g, b = _split(rgb)
    v = np.maximum(np.maximum(r, g), b)
    chroma = v - np.minimum(np.minimum(r, g), b)
    grey = chroma <= 0
    c = np.where(grey, 1.0, chroma).astype(np.float32)
    h = np.where(v == r, (g - b) / c, np.where(v == g, (b - r) / c + 2.0, (r - g) / c + 4.0))
    h /= 6.0
    np.add(h, 1.0, out=h, where=h < 0)
    h[grey | (h >= 1.0)] = 0.0  # greys; and float32 rounding of a tiny negative hue to 1
    s = chroma / np.where(v > 0, v, 1.0).astype(np.float32)
    return np.stack([h, s, v / 255.0], axis=-1)


@_per_pixel
def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Hue (any real: it wraps), saturation, value 0..1 -> RGB 0..255, float32 (not rounded)."""
    h, s, v = _split(hsv)
    h -= np.floor(h)  # wrap to 0..1 (np.floor is far faster than %)
    h *= 6.0
    v = np.clip(v, 0.0, 1.0, out=v)
    v *= 255.0
    vs = v * np.clip(s, 0.0, 1.0, out=s)
    out = []
    for n in (5.0, 3.0, 1.0):
        k = h + n
        np.subtract(k, 6.0, out=k, where=k >= 6.0)
        ramp = np.minimum(k, 4.0 - k, out=k)
        np.clip(ramp, 0.0, 1.0, out=ramp)
        ramp *= vs
        out.append(np.subtract(v, ramp, out=ramp))
    return np.stack(out, axis=-1)


def to_space(rgb: np.ndarray, space: str) -> np.ndarray:
    """RGB 0..255 -> `space` ("RGB", "HSV" or "LAB"), float32."""
    if space == "RGB":
        return np.array(rgb, np.float32)
    convert = {"HSV": rgb_to_hsv, "LAB": rgb_to_lab}[_space(space)]
    rgb = np.asarray(rgb)
    if rgb.ndim != 2 or len(rgb) <= _BLOCK:
        return convert(rgb)
    out = np.empty(rgb.shape, np.float32)
    for i in range(0, len(rgb), _BLOCK):  # blocks that stay in cache
        out[i:i + _BLOCK] = convert(rgb[i:i + _BLOCK])
    return out


def from_space(values: np.ndarray, space: str) -> np.ndarray:
    """`space` values -> uint8 RGB, rounded and clipped."""
    rgb = {"RGB": np.asarray, "HSV": hsv_to_rgb, "LAB": lab_to_rgb}[_space(space)](values)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _space(space: str) -> str:
    if space not in SPACES:
        raise ValueError(f"colour space {space!r} is not one of {', '.join(SPACES)}")
    return space


# Deforum's color_coherence values (current, and the older "Match Frame 0 ..." ones)
# -> the space they match in. "Image" and "Video Input" only change where the
# reference comes from; Deforum's maintain_colors matches those in LAB.
_COHERENCE = {"none": None, "rgb": "RGB", "hsv": "HSV", "lab": "LAB",
              "match frame 0 rgb": "RGB", "match frame 0 hsv": "HSV", "match frame 0 lab": "LAB",
              "image": "LAB", "video input": "LAB"}


def color_space(color_coherence: str | None) -> str | None:
    """The colour space a Deforum `color_coherence` value matches in, or None when it is off.

    Case and spacing are forgiven; a missing value (None) is off, like "None".
    """
    if color_coherence is None:
        return None
    key = " ".join(color_coherence.split()).lower() if isinstance(color_coherence, str) else None
    if key not in _COHERENCE:
        raise ValueError(f"color_coherence {color_coherence!r} is not one of None, RGB, HSV, LAB, Image, "
                         "Video Input (or the older Match Frame 0 RGB/HSV/LAB)")
    return _COHERENCE[key]


# ---------------------------------------------------------------------------
# Anchored colour matching: histogram matching to a fixed reference.
# ---------------------------------------------------------------------------

# Histogram bins per space and channel: (low, high, bins). RGB and V have 256
# levels, so their bins are centred on them. Hue (HSV channel 0) is circular.
_BINS = {
    "RGB": ((-0.5, 255.5, 256),) * 3,
    "HSV": ((0.0, 1.0, 1024), (0.0, 1.0, 1024), (-0.5 / 255, 255.5 / 255, 256)),
    "LAB": ((0.0, 100.0, 1024), (-128.0, 128.0, 1024), (-128.0, 128.0, 1024)),
}
_HUE_CUTS = 256  # candidate places to cut the hue circle open when matching hue
_TABLE_FROM = 1 << 20  # from this many pixels on, convert each distinct colour once, not each pixel
_BLOCK = 1 << 16  # colours converted at a time: blocks that stay in cache run about twice as fast
_RGBX = np.dtype({"names": ["rgb"], "formats": ["V3"], "offsets": [0], "itemsize": 4})  # a colour in 4 bytes
_RGBX8 = np.dtype({"names": ["rgb"], "formats": ["V3"], "offsets": [0], "itemsize": 8})  # ... in 8


def _as_uint8(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim < 1 or frames.shape[-1] != 3:
        raise ValueError(f"expected RGB frames (..., 3), got shape {frames.shape}")
    if frames.dtype != np.uint8:
        frames = np.clip(np.rint(frames), 0, 255).astype(np.uint8)
    return frames


def _colour_table(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """The distinct colours of `frames`, how often each occurs, and a function that
    paints new colours (one per distinct colour) back onto the frames.

    A clip of 81 832x480 frames has 32M pixels but typically a few million distinct
    colours (at most 16.7M), so converting colours, not pixels, does the expensive
    colour-space work once per colour; pixels only see a 24-bit table look-up.
    Small inputs skip the table: every pixel is its own colour. Working memory for a
    large clip is about 15 bytes a pixel plus 134 MB of counts (some 600 MB at 32M).
    """
    pixels = np.ascontiguousarray(frames).reshape(-1, 3)
    if len(pixels) < _TABLE_FROM:
        return pixels, np.ones(len(pixels)), lambda new: new.reshape(frames.shape)
    packed = np.zeros(len(pixels), "<i8")  # r | g << 8 | b << 16, whatever the machine's byte order
    packed.view(_RGBX8)["rgb"] = pixels.view("V3").reshape(-1)
    packed = packed.astype(np.intp, copy=False)  # a copy only where "<i8" is not native
    counts = np.bincount(packed, minlength=1 << 24)
    codes = np.flatnonzero(counts)
    colours = np.stack([codes & 255, (codes >> 8) & 255, codes >> 16], axis=-1).astype(np.uint8)

    def paint(new: np.ndarray) -> np.ndarray:
        table = np.empty(1 << 24, "<u4")  # only the entries of colours present are ever read
        new = new.astype(np.uint32)
        table[codes] = new[:, 0] | (new[:, 1] << 8) | (new[:, 2] << 16)
        out = np.empty(frames.shape, np.uint8)
        out.reshape(-1).view("V3")[...] = np.take(table, packed).view(_RGBX)["rgb"]
        return out

    return colours, counts[codes].astype(np.float64), paint


def _weights(values: np.ndarray, counts: np.ndarray, space: str) -> list[np.ndarray]:
    """Per channel, how much each colour counts. Hue is weighted by chroma (S x V):
    the hue of a near-grey pixel is noise and must not steer the hue mapping."""
    if space == "HSV":
        return [counts * values[:, 1] * values[:, 2], counts, counts]
    return [counts] * 3


def _histogram(x: np.ndarray, weights: np.ndarray, low: float, high: float, bins: int) -> np.ndarray:
    index = ((x - low) * (bins / (high - low))).astype(np.intp)
    np.clip(index, 0, bins - 1, out=index)
    return np.bincount(index, weights=weights, minlength=bins)


def _quantile_knots(hist: np.ndarray, low: float, high: float) -> np.ndarray | None:
    """The inverse CDF of a histogram as knots (2, K): cumulative share 0..1 and value,
    linear inside each bin, trimmed to the bins that hold anything. None if empty."""
    nonzero = np.flatnonzero(hist)
    if len(nonzero) == 0 or hist.sum() <= 0:
        return None
    first, last = nonzero[0], nonzero[-1] + 1
    cdf = np.concatenate([[0.0], np.cumsum(hist[first:last])])
    edges = low + (high - low) / len(hist) * np.arange(first, last + 1)
    knots = np.stack([cdf / cdf[-1], edges])
    knots.setflags(write=False)
    return knots


@dataclass(frozen=True, eq=False)
class ColorReference:
    """The colours a render is anchored to: per channel of `space`, the reference's
    distribution as inverse-CDF knots (`quantiles[c]`: row 0 cumulative share 0..1,
    row 1 the value at it). Build it once, with `from_frames`, from the first frames
    or an image; `match_to_reference` then maps any clip onto it. A grey reference
    has no hue (None): hue is then left alone.
    """
    space: str
    quantiles: tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]

    @classmethod
    def from_frames(cls, frames: np.ndarray, space: str) -> "ColorReference":
        """From an RGB image (H, W, 3) or frames (N, H, W, 3), uint8 (floats are rounded)."""
        space = _space(space)
        frames = _as_uint8(frames)
        if frames.size == 0:
            raise ValueError("a colour reference needs at least one pixel")
        colours, counts, _ = _colour_table(frames)
        values = to_space(colours, space)
        weights = _weights(values, counts, space)
        return cls(space, tuple(_quantile_knots(_histogram(values[:, c], weights[c], *spec), spec[0], spec[1])
                                for c, spec in enumerate(_BINS[space])))


def _lookup(x: np.ndarray, low: float, high: float, table: np.ndarray) -> np.ndarray:
    """Linear interpolation in `table`, sampled evenly from low to high (clamped outside)."""
    pos = (x - low) * ((len(table) - 1) / (high - low))
    np.clip(pos, 0, len(table) - 1, out=pos)
    index = pos.astype(np.intp)
    np.minimum(index, len(table) - 2, out=index)
    pos -= index
    below = table[index]
    return below + pos * (table[index + 1] - below)


def _channel_map(hist: np.ndarray, knots: np.ndarray, low: float, high: float) -> np.ndarray:
    """Histogram matching of one channel: each value goes to the reference value at
    the same cumulative share. The map is worked out at the centres of the bins that
    hold values (their middle share) and at the ends, linear in between; returned
    sampled every half bin from low to high (all those points lie on that grid)."""
    bins = len(hist)
    width = (high - low) / bins
    nonzero = np.flatnonzero(hist)
    mass = hist[nonzero]
    share = (np.cumsum(mass) - mass / 2) / mass.sum()
    at = np.concatenate([[nonzero[0]], nonzero + 0.5, [nonzero[-1] + 1]]) * width + low
    to = np.interp(np.concatenate([[0.0], share, [1.0]]), knots[0], knots[1])
    return np.interp(low + width / 2 * np.arange(2 * bins + 1), at, to).astype(np.float32)


def _hue_map(hist: np.ndarray, knots: np.ndarray) -> tuple[float, np.ndarray]:
    """Histogram matching on the hue circle: where the clip's hue circle is cut open
    (a hue), and the map from hue past that cut (0..1) to the reference's hue, sampled
    every half bin.

    A circle has no first value, so a CDF needs a cut. The reference is cut at hue 0;
    the clip is tried cut at `_HUE_CUTS` places round the circle and the cut whose
    map moves the clip's hues least (weighted) is kept. Matching hue on a line, as
    Deforum does (skimage on OpenCV's 0..180 hue), treats reds either side of 0 as
    opposite ends of the scale and can send them round the colour wheel.
    """
    bins = len(hist)
    nonzero = np.flatnonzero(hist)
    mass = hist[nonzero]
    total = mass.sum()
    before_bin = np.cumsum(hist) - hist  # mass before each bin, counting from hue 0
    cuts = np.arange(0, bins, max(1, bins // _HUE_CUTS))
    wrapped = nonzero[None, :] < cuts[:, None]  # bins before the cut come after it, round the circle
    before = before_bin[nonzero][None, :] - before_bin[cuts][:, None] + total * wrapped
    centres = (nonzero + 0.5) / bins
    to = np.interp((before + mass / 2) / total, knots[0], knots[1])  # (cuts, bins held)
    moves = (to - centres + 0.5) % 1.0 - 0.5
    best = int(np.argmin((np.abs(moves) * mass).sum(axis=1)))
    cut = cuts[best] / bins
    at = (centres - cut) % 1.0
    order = np.argsort(at)
    return cut, np.interp(np.arange(2 * bins + 1) / (2 * bins), at[order], to[best, order]).astype(np.float32)


def _wrap(x: np.ndarray) -> np.ndarray:
    """x mod 1, in place (np.floor is far faster than %)."""
    x -= np.floor(x)
    return x


def match_to_reference(frames: np.ndarray, reference: ColorReference, strength: float = 1.0) -> np.ndarray:
    """Match a clip's colours to a fixed reference, per channel in the reference's space.

    One mapping per channel is computed from the whole clip's pixels and applied to
    every frame. Deforum matches each frame on its own, which suits its one image
    per step; matching a clip frame by frame would give every frame a slightly
    different map and flicker, while one map per clip keeps its frames consistent
    with each other (a pixel's colour is mapped the same way in every frame), and
    its statistics come from far more pixels. As in Deforum, colours that drift
    away from the reference's palette, a new prompt's included, are pulled back
    to it; `strength` < 1 lets some of them through. Because the reference is
    fixed, a clip's residual error is never inherited by the next clip, as it is
    with `match_colors`.

    Hue (HSV) is matched on the circle (see `_hue_map`), weighted by chroma.
    `strength` blends each channel between original (0) and matched (1) in the
    reference's space; hue is blended the short way round. Returns uint8 RGB of the
    same shape; strength 0 (or an empty clip) returns `frames` itself.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be between 0 and 1, got {strength!r}")
    frames = np.asarray(frames)
    if strength == 0.0 or frames.size == 0:
        return frames
    frames = _as_uint8(frames)
    space = reference.space
    colours, counts, paint = _colour_table(frames)
    values = to_space(colours, space)
    weights = _weights(values, counts, space)
    maps: list[tuple[int, float, float, np.ndarray, bool]] = []  # channel, low, high, table, is hue
    for c, (low, high, bins) in enumerate(_BINS[space]):
        knots = reference.quantiles[c]
        hist = _histogram(values[:, c], weights[c], low, high, bins)
        if knots is None or hist.sum() <= 0:
            continue  # nothing to match to (a grey reference's hue), or nothing to match
        if space == "HSV" and c == 0:
            cut, table = _hue_map(hist, knots)
            maps.append((c, cut, cut + 1.0, table, True))
        else:
            maps.append((c, low, high, _channel_map(hist, knots, low, high), False))
    new = np.empty_like(colours)
    for i in range(0, len(values), _BLOCK):  # blocks that stay in cache
        block = values[i:i + _BLOCK]
        for c, low, high, table, hue in maps:
            x = block[:, c]
            if hue:  # the short way round, from the cut-open circle back to hue
                change = _wrap(_lookup(_wrap(x - low), 0.0, 1.0, table) - x + 0.5) - 0.5
                x[...] = _wrap(x + strength * change)
            else:
                x += strength * (_lookup(x, low, high, table) - x)
        new[i:i + _BLOCK] = from_space(block, space)
    return paint(new)
