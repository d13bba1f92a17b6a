"""Output frames onto Wan frames: the frame arithmetic under the clip plan.

Deforum's timeline shows output frame i at i / fps seconds; Wan renders at its own
native rate, so output frame i shows Wan position i * native_fps / fps, counted from
the segment's first fresh Wan frame. A whole position is that Wan frame; a fractional
one lies between two neighbours, which the renderer interpolates (motion-compensated,
or a crossfade when asked), or it shows the nearest one. At the model's own rate
(timing native) every position is whole. A segment's Wan frames are cut into clips
of 4n+1 frames, each after the first repeating the last `overlap` frames of the one
before (dropped at the join), and every output frame is given to the clip that holds
the Wan frames it shows. Short prompt segments can be grouped first (`group_segments`).

This module owns that mapping and nothing else: no prompts, seeds or camera words
(those are `plan.py`'s), so it can be read and tested as arithmetic. Positions are
exact fractions walked with integers, so the work is linear in the segment's frames.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

MIN_CLIP_FRAMES = 5


class PlanError(ValueError):
    """The settings and options cannot be planned; the message says which one and why.

    Defined here, the lowest module that raises it; `plan.py` re-exports it.
    """


class ClipGapError(PlanError):
    """A chained clip would show no output frame: output frames lie further apart than the clip adds.

    Independent clips can skip such a clip; a chain needs it to carry the motion on. The
    plan names the option to change (it knows which one set the limit).
    """

    def __init__(self, segment_start: int, num_frames: int, repeated: int, rate: Fraction):
        self.segment_start, self.num_frames, self.repeated, self.rate = segment_start, num_frames, repeated, rate
        super().__init__(
            f"output frames are {float(rate):.3g} Wan frames apart, more than a {num_frames}-frame clip adds "
            f"after its {repeated} repeated frame(s), so a clip of the segment at frame {segment_start} would show none"
        )


def wan_rate(native_fps: int, fps: float) -> Fraction:
    """Wan frames per output frame, exact: `native_fps` over `fps` read as the nearest fraction
    with a denominator up to 1001 (so 29.97 stays 2997/100 and float noise does not grow the walk)."""
    return Fraction(native_fps) / Fraction(fps).limit_denominator(1001)


def _fit(fresh: int, repeated: int, min_frames: int, max_frames: int) -> int:
    """Smallest 4n+1 count that holds `repeated` + `fresh` frames, within the clip limits."""
    n = max(repeated + fresh, min_frames)
    return min(n + (-(n - 1)) % 4, max_frames)


def split_segment(needed: int, first_overlap: int, overlap: int, max_frames: int, min_frames: int = MIN_CLIP_FRAMES) -> list[int]:
    """Wan frame counts (4n+1) for a segment that needs `needed` fresh frames.

    The first clip repeats `first_overlap` frames of what came before, later ones
    `overlap`. Fresh frames are balanced across clips so none is needlessly tiny;
    only the 4n+1 rounding adds surplus.
    """
    if max_frames - max(first_overlap, overlap) < 4:
        raise PlanError(f"overlap {max(first_overlap, overlap)} leaves no room for new frames in a {max_frames}-frame clip")
    capacity_first, capacity = max_frames - first_overlap, max_frames - overlap
    total = 1 if needed <= capacity_first else 1 + math.ceil((needed - capacity_first) / capacity)
    counts: list[int] = []
    remaining = needed
    while remaining > 0:
        repeated = first_overlap if not counts else overlap
        share = math.ceil(remaining / max(total - len(counts), 1))
        n = _fit(share, repeated, min_frames, max_frames)
        counts.append(n)
        remaining -= n - repeated
    return counts


@dataclass(frozen=True)
class Segment:
    """Output frames `start`..`end`-1, rendered as one chain of Wan clips."""

    start: int
    end: int  # one past the last output frame
    rate: Fraction  # Wan frames per output frame (`wan_rate`)
    max_clip: int  # largest clip, a 4n+1 count
    first_overlap: int = 0  # frames the first clip repeats from before it (1 for I2V, K for VACE, 0 if none)
    overlap: int = 0  # frames every later clip repeats from the one before; 0: independent clips
    blend: bool = True  # in-between output frames keep their fraction between two Wan frames, else the nearest


@dataclass(frozen=True)
class ClipFrames:
    """One clip of a segment: its Wan frames and the output frames it supplies."""

    num_frames: int  # Wan frames generated, 4n+1
    overlap: int  # leading frames that repeat the previous clip
    output_start: int
    output_end: int  # one past the last
    # For each output frame: (Wan frame, next Wan frame, weight of the next one), in this clip's frames.
    sources: tuple[tuple[int, int, float], ...]
    # One past the last Wan frame the timeline uses: the next clip continues from the frames before it, so a
    # join follows the last frame the viewer saw, not the surplus that 4n+1 rounding adds at a segment's end.
    shown_end: int = 0


@dataclass(frozen=True)
class SegmentFrames:
    """A segment's clips, with the Wan frames the timeline needs and the surplus 4n+1 rounding adds."""

    clips: tuple[ClipFrames, ...]
    needed: int  # fresh Wan frames some output frame shows (or blends towards)
    surplus: int  # fresh Wan frames generated beyond `needed`, dropped


def _spans(counts: list[int], first_overlap: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(first fresh frame, one past its last, repeated frames, Wan frames) for each clip of `counts`."""
    spans = []
    at = 0
    for i, n in enumerate(counts):
        k = first_overlap if i == 0 else overlap
        spans.append((at, at + n - k, k, n))
        at += n - k
    return spans


def map_segment(segment: Segment) -> SegmentFrames:
    """Map every output frame of `segment` onto the Wan frame(s) it shows, and cut the clips that hold them.

    Output frame `start + i` sits at fresh Wan position i * rate; with blending, a fractional
    position shows (floor, floor + 1, fraction), else the nearest frame with weight 0. Fresh
    frames are numbered across the whole segment; inside a clip they follow its repeated
    frames, so a clip's local index is its overlap plus the fresh offset. A pair whose second
    frame opens the next clip is expressed in that clip (its repeated copy of the first
    frame blends into its first fresh frame); independent clips share no frame, so there
    the output frame shows the first frame alone. Each output frame lands in exactly one
    clip, in order.

    A clip that would show no output frame is dropped when clips are independent (it only
    held a blend partner they cannot share); in a chain it raises ClipGapError.
    """
    start, length = segment.start, segment.end - segment.start
    if length <= 0:
        raise ValueError(f"segment {start}..{segment.end}: no output frames")
    if segment.rate <= 0:
        raise ValueError(f"rate must be positive, got {segment.rate}")
    num, den, blend = segment.rate.numerator, segment.rate.denominator, segment.blend

    def source(offset: int) -> tuple[int, int]:
        """Fresh Wan frame at output `offset`, and the blend weight's numerator (over `den`)."""
        lo, rest = divmod(offset * num, den)
        if not blend:
            return (lo + 1, 0) if 2 * rest >= den else (lo, 0)
        return lo, rest

    last, rest = source(length - 1)
    needed = last + (2 if rest else 1)
    overlap = segment.overlap
    counts = split_segment(needed, segment.first_overlap, overlap, segment.max_clip, max(MIN_CLIP_FRAMES, overlap))
    spans = _spans(counts, segment.first_overlap, overlap)
    rows: list[list[tuple[int, int, float]]] = [[] for _ in counts]
    j = 0
    for offset in range(length):
        lo, rest = source(offset)
        while lo >= spans[j][1]:
            j += 1
        a, _, k, n = spans[j]
        local = k + lo - a
        target, nxt, weight = j, local + (1 if rest else 0), rest / den
        if nxt >= n:  # the next fresh frame opens the next clip: express the pair there
            nk = spans[j + 1][2]
            if nk >= 1:
                target, local, nxt = j + 1, nk - 1, nk
            else:
                nxt, weight = local, 0.0
        rows[target].append((local, nxt, round(weight, 6)))
    return _collect(segment, spans, rows, needed)


def _collect(segment: Segment, spans: list[tuple[int, int, int, int]], rows: list[list[tuple[int, int, float]]],
             needed: int) -> SegmentFrames:
    """The clips that show output frames (their frames are consecutive, in order), and the totals."""
    clips: list[ClipFrames] = []
    unshown = 0  # needed frames inside dropped clips: no output frame shows them
    out = segment.start
    for (a, b, k, n), sources in zip(spans, rows):
        if sources:
            shown_end = k + max(1, min(needed - a, n - k))
            clips.append(ClipFrames(n, k, out, out + len(sources), tuple(sources), shown_end))
            out += len(sources)
        elif segment.overlap == 0:
            unshown += max(0, min(b, needed) - a)
        else:
            raise ClipGapError(segment.start, n, k, segment.rate)
    needed -= unshown
    surplus = sum(c.num_frames - c.overlap for c in clips) - needed
    return SegmentFrames(tuple(clips), needed, surplus)


def group_segments(spans: list[tuple[int, int]], min_frames: int) -> list[tuple[int, ...]]:
    """Indices of consecutive prompt segments merged so that each group lasts at least `min_frames`.

    Short prompt segments become short clips, and every clip costs a join and its 4n+1
    rounding. Segments are gathered in order until the group is long enough; a short
    remainder joins the group before it. `min_frames` 0 keeps every segment alone.
    """
    groups: list[list[int]] = []
    current: list[int] = []
    length = 0
    for i, (start, end) in enumerate(spans):
        current.append(i)
        length += end - start
        if length >= min_frames:
            groups.append(current)
            current, length = [], 0
    if current:
        if groups:
            groups[-1].extend(current)
        else:
            groups.append(current)
    return [tuple(g) for g in groups]
