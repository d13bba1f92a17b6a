"""Deforum's seed for every frame: `seed`, `seed_behavior`, `seed_iter_N`, `seed_schedule`.

Deforum advances its seed once per *diffused* frame (`next_seed` in its seed.py),
and with `diffusion_cadence` > 1 it diffuses only every cadence-th frame. A Wan
clip takes the seed Deforum would have used at the clip's first frame, so a user
who liked seed 1234 at frame 0 gets 1234 for the first clip.

Deforum draws fresh random seeds for `random` behaviour and for a seed of -1 in
`seed_schedule`. A plan must be repeatable (resume, re-render), so we draw those
from a generator seeded by the base seed and the frame: random-looking, but the
same every time for the same settings.
"""
from __future__ import annotations

import math
import random

from .schedules import parse_schedule
from .settings import DeforumSettings

SEED_MAX = 2**32 - 1
SEED_LIMIT = 2**63  # a torch generator takes a signed or unsigned 64-bit seed


class SeedError(ValueError):
    pass


def resolve_seed(seed: int, rng: random.Random | None = None) -> int:
    """Deforum's `get_fixed_seed`: -1 becomes a random seed, others stay."""
    if seed == -1:
        return (rng or random.Random()).randint(0, SEED_MAX)
    return seed


def _derived(base: int, frame: int) -> int:
    return random.Random(base * 1_000_003 + frame).randint(0, SEED_MAX)


def diffusion_cadence(settings: DeforumSettings) -> int:
    """Deforum's `diffusion_cadence`, at least 1; beyond max_frames it changes nothing."""
    value = settings.raw.get("diffusion_cadence", 1)
    try:
        number = float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or not number.is_integer():
        raise SeedError(f"diffusion_cadence: expected a whole number, got {value!r}")
    return min(max(int(number), 1), max(settings.max_frames, 1))


def frame_seeds(settings: DeforumSettings, seed: int | None = None) -> list[int]:
    """The seed Deforum would use at each frame, for all `max_frames` frames.

    `seed` is the resolved base seed (required when `settings.seed` is -1).
    """
    base = settings.seed if seed is None else seed
    if base == -1:
        raise SeedError("seed is -1 (random): resolve it with resolve_seed() before planning")
    n = settings.max_frames
    behavior = settings.seed_behavior
    cadence = diffusion_cadence(settings)
    if behavior == "schedule":
        # Deforum reads the schedule at each diffused frame; the frames between share its seed.
        values = parse_schedule(settings.seed_schedule, n, base, key="seed_schedule")
        out_of_range = (values < -SEED_LIMIT) | (values >= SEED_LIMIT)
        if out_of_range.any():
            frame = int(out_of_range.argmax())
            raise SeedError(f"seed_schedule: the seed at frame {frame} is {values[frame]:g}, "
                            f"beyond the 64-bit range a generator takes")
        seeds = [_derived(base, i) if int(v) == -1 else int(v) for i, v in enumerate(values)]
        return [seeds[i - i % cadence] for i in range(n)]

    seeds: list[int] = []
    current, internal = base, 0
    for frame in range(n):
        if frame % cadence == 0 and frame > 0:
            # Deforum calls next_seed after each diffused frame.
            if behavior == "iter":
                current += 1 if internal % settings.seed_iter_N == 0 else 0
                internal += 1
            elif behavior == "ladder":
                current += 2 if internal == 0 else -1
                internal = 1 if internal == 0 else 0
            elif behavior == "alternate":
                current += 1 if internal == 0 else -1
                internal = 1 if internal == 0 else 0
            elif behavior == "random":
                current = _derived(base, frame)
        seeds.append(current)
    return seeds
