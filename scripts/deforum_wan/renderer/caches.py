"""Step caches on the loaded Wan transformer(s), through diffusers' own hooks.

The render loop calls `apply_cache(transformers, spec, steps)` once after loading and
`remove_cache(transformers)` at the end. Every cache here is diffusers' own
(`transformer.enable_cache(config)` with a `diffusers.hooks` config); this module only
picks the config for each transformer: two-expert Wan2.2 A14B models get one cache per
expert (each counts its own steps), TaylorSeer runs in its low-memory "lite" mode, and
MagCache gets the magnitude ratios its authors calibrated for the model (diffusers ships
none for Wan). `core/speed.py` holds the names, defaults and which model kinds each
cache works on; asking for one that does not, or one the installed diffusers lacks,
raises CacheError saying why.

torch and diffusers are imported inside the functions.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Iterable

from ..core.speed import CACHES, CacheSpec, cache_support
from ..core.specs import AREA_480P, AREA_720P

log = logging.getLogger(__name__)

MAGCACHE = "https://github.com/Zehong-Ma/MagCache/blob/df81cb181776c2c61477c08e1d21f87fda1cd938"


class CacheError(RuntimeError):
    """A step cache cannot be used here: the installed diffusers lacks it, or the model kind does not allow it."""


# MagCache's calibrated magnitude ratios for Wan, one per step of the official sampler (50 steps; 40 for
# Wan2.1 I2V). MagCache's own Wan code lists them per transformer call with the conditional and unconditional
# passes interleaved, after a [1.0]*2 padding; these are every other value from the start (the conditional
# pass), as diffusers' docs advise for pipelines that run guidance as two calls
# (docs/source/en/optimization/cache.md, MagCache). diffusers interpolates them to the steps used.
# Each list's source is MAGCACHE (the URL above) + the file and line named beside it.
MAG_RATIOS: dict[str, tuple[float, ...]] = {
    # MagCache4Wan2.1/magcache_generate.py:910 ('T2V-14B')
    "wan2.1-t2v-14b": (
        1.0, 1.02504, 1.00025, 0.9985, 0.99779, 0.9966, 0.99482, 0.99467, 0.99664, 0.99434, 0.99533, 0.99468,
        0.99438, 0.99516, 0.99384, 0.99404, 0.99517, 0.99409, 0.99428, 0.99347, 0.99418, 0.99271, 0.99313,
        0.99215, 0.99218, 0.99216, 0.99163, 0.99138, 0.98982, 0.98996, 0.9887, 0.98772, 0.98767, 0.98573, 0.98501,
        0.9838, 0.98177, 0.98037, 0.97678, 0.97546, 0.97184, 0.96711, 0.96349, 0.95629, 0.94926, 0.93964, 0.92511,
        0.90693, 0.8796, 0.86111,
    ),
    # MagCache4Wan2.1/magcache_generate.py:912 ('T2V-1.3B')
    "wan2.1-t2v-1.3b": (
        1.0, 1.0124, 1.00166, 0.99791, 0.99682, 0.99634, 0.99567, 0.99416, 0.99578, 0.9957, 0.99511, 0.99535,
        0.99552, 0.99541, 0.9954, 0.99489, 0.99518, 0.99484, 0.99481, 0.99415, 0.99419, 0.99396, 0.99388, 0.99349,
        0.99309, 0.9927, 0.99228, 0.99171, 0.99137, 0.99068, 0.99005, 0.98944, 0.98849, 0.98758, 0.98644, 0.98504,
        0.9836, 0.98202, 0.97977, 0.97717, 0.9741, 0.97003, 0.96538, 0.9593, 0.95086, 0.94013, 0.92402, 0.90241,
        0.86821, 0.81838,
    ),
    # MagCache4Wan2.1/magcache_generate.py:1002 ('480P')
    "wan2.1-i2v-14b-480p": (
        1.0, 0.98783, 0.97559, 0.98311, 0.98202, 0.9888, 0.98762, 0.98957, 0.99052, 0.99383, 0.98857, 0.99065,
        0.98845, 0.99057, 0.98957, 0.98601, 0.98823, 0.98756, 0.98808, 0.98721, 0.98571, 0.98543, 0.98157,
        0.98411, 0.97952, 0.98149, 0.9774, 0.97825, 0.97355, 0.97085, 0.97056, 0.96588, 0.96113, 0.9567, 0.94961,
        0.93973, 0.93217, 0.91878, 0.90955, 0.92617,
    ),
    # MagCache4Wan2.1/magcache_generate.py:1004 ('720P')
    "wan2.1-i2v-14b-720p": (
        1.0, 0.99428, 0.98588, 0.98273, 0.99018, 0.98911, 0.98646, 0.99454, 0.9891, 0.99124, 0.99102, 0.99215,
        0.99515, 0.99576, 0.99068, 0.99097, 0.99166, 0.99041, 0.99201, 0.99101, 0.98599, 0.98845, 0.98848,
        0.98862, 0.98718, 0.98497, 0.98264, 0.98389, 0.97938, 0.97535, 0.97498, 0.973, 0.96827, 0.96261, 0.95335,
        0.94649, 0.93397, 0.91636, 0.89088, 0.8679,
    ),
    # MagCache4Wan2.2/magcache_generate.py:736 (ti2v, t2v)
    "wan2.2-ti2v-5b": (
        1.0, 0.99505, 0.99441, 0.99558, 0.99499, 0.99534, 0.99468, 0.99463, 0.9946, 0.99408, 0.9945, 0.99409,
        0.99403, 0.99382, 0.99349, 0.99377, 0.9933, 0.99303, 0.99217, 0.992, 0.99201, 0.99133, 0.99112, 0.99155,
        0.98958, 0.98959, 0.98838, 0.98826, 0.9883, 0.98711, 0.98562, 0.98511, 0.98414, 0.98284, 0.98104, 0.97981,
        0.97849, 0.97557, 0.97398, 0.97171, 0.96917, 0.96511, 0.96263, 0.95839, 0.95483, 0.94942, 0.9468, 0.94583,
        0.94843, 0.96949,
    ),
}


def diffusers_version() -> str:
    try:
        import diffusers
    except ImportError:  # pragma: no cover
        return "not installed"
    return str(getattr(diffusers, "__version__", "unknown"))


def transformers_of(*pipes: Any) -> list[Any]:
    """The distinct transformers of diffusers pipelines (transformer, then transformer_2), in order."""
    found: list[Any] = []
    for pipe in pipes:
        for key in ("transformer", "transformer_2"):
            module = getattr(pipe, key, None)
            if module is not None and all(module is not other for other in found):
                found.append(module)
    return found


def _distinct(transformers: Iterable[Any]) -> list[Any]:
    found: list[Any] = []
    for module in transformers:
        if module is not None and all(module is not other for other in found):
            found.append(module)
    return found


def _config(module: Any) -> Any:
    return getattr(module, "config", {}) or {}


def transformer_kind(transformer: Any, siblings: Iterable[Any] = ()) -> str:
    """The Wan model kind a transformer belongs to, from its class and config.

    A plain 16- or 36-channel transformer with a twin of the same shape among `siblings`
    is one expert of a Wan2.2 A14B model.
    """
    config = _config(transformer)
    if "VACE" in type(transformer).__name__:
        return "vace"
    channels = config.get("in_channels")
    if channels == 48 or config.get("out_channels") == 48:
        return "ti2v-5b"
    if config.get("image_dim") is not None:
        return "flf2v" if config.get("pos_embed_seq_len") else "i2v"
    twin = any(other is not transformer and type(other) is type(transformer)
               and _config(other).get("in_channels") == channels and _config(other).get("image_dim") is None
               for other in siblings)
    if channels == 16:
        return "a14b-t2v" if twin else "t2v"
    return "a14b-i2v"  # 36 channels and no CLIP image projection: a Wan2.2 A14B I2V expert


def mag_ratios_for(transformer: Any, kind: str, area: int | None = None) -> tuple[str, tuple[float, ...]]:
    """(calibration name, ratios) for MagCache on `transformer`; CacheError if none is published for `kind`."""
    if kind == "t2v":
        config = _config(transformer)
        width = (config.get("num_attention_heads") or 0) * (config.get("attention_head_dim") or 0)
        key = "wan2.1-t2v-1.3b" if width == 1536 else "wan2.1-t2v-14b"
    elif kind == "i2v":
        nearer_720p = bool(area) and area > 0 and abs(math.log(area / AREA_720P)) < abs(math.log(area / AREA_480P))
        key = "wan2.1-i2v-14b-720p" if nearer_720p else "wan2.1-i2v-14b-480p"
    elif kind == "ti2v-5b":
        key = "wan2.2-ti2v-5b"
    else:
        reason = cache_support("magcache", kind) or "no calibration"
        raise CacheError(f"MagCache has no magnitude ratios for {kind} models: {reason}")
    return key, MAG_RATIOS[key]


def _config_class(spec: CacheSpec) -> type:
    info = spec.info
    try:
        import diffusers.hooks as hooks
    except ImportError as exc:  # pragma: no cover
        raise CacheError(f"{info.label} needs diffusers {info.min_diffusers} or newer: {exc}") from exc
    cls = getattr(hooks, info.config, None)
    if cls is None:
        raise CacheError(f"{info.label} ({info.name}) needs diffusers {info.min_diffusers} or newer "
                         f"(diffusers.hooks.{info.config}); this environment has diffusers {diffusers_version()}")
    return cls


def cache_config(spec: CacheSpec, transformer: Any, kind: str, steps: int, area: int | None = None) -> Any:
    """The diffusers config of `spec` for one transformer of a `kind` model sampled in `steps` steps."""
    cls = _config_class(spec)
    if spec.name == "fbcache":
        return cls(threshold=float(spec.threshold))
    if spec.name == "taylorseer":
        # Lite mode: the blocks are skipped on predicted steps and only proj_out's output is extrapolated.
        # The default (every attention output cached) matches none of Wan's layers (attn1/attn2), and
        # caching them would hold two video-sized tensors per layer and pass.
        return cls(cache_interval=int(spec.threshold), disable_cache_before_step=3, max_order=1,
                   taylor_factors_dtype=getattr(transformer, "dtype", None), use_lite_mode=True)
    if spec.name == "magcache":
        _key, ratios = mag_ratios_for(transformer, kind, area)
        return cls(threshold=float(spec.threshold), num_inference_steps=int(steps), mag_ratios=list(ratios))
    if spec.name == "seacache":
        return cls(threshold=float(spec.threshold))
    raise CacheError(f"unknown cache {spec.name!r}")  # pragma: no cover - CacheSpec comes from parse_cache


def apply_cache(transformers: Iterable[Any], spec: CacheSpec | None, steps: int, *, kind: str | None = None,
                area: int | None = None) -> None:
    """Enable `spec` on every transformer (both experts of a two-expert model); None removes any cache.

    `steps` is the number of steps the clips are sampled with (MagCache maps its ratios onto
    them; call again if it changes). `kind` is the model kind when the caller knows it
    (otherwise read from each transformer), `area` the render's width x height (MagCache on
    Wan2.1 I2V uses the calibration of the nearer of 480p and 720p; 480p without it). A cache
    already enabled is replaced. CacheError if the cache does not work on a model kind or
    the installed diffusers lacks it; then nothing is changed.
    """
    targets = _distinct(transformers)
    if spec is None:
        remove_cache(targets)
        return
    if spec.name not in CACHES:
        raise CacheError(f"unknown cache {spec.name!r}; choose one of {', '.join(CACHES)}")
    if int(steps) < 1:
        raise ValueError(f"steps must be 1 or more, got {steps}")
    info = spec.info
    _config_class(spec)  # the version check first: it is the clearer message
    kinds = [kind or transformer_kind(t, targets) for t in targets]
    for module, module_kind in zip(targets, kinds):
        reason = cache_support(spec.name, module_kind)
        if reason is not None:
            raise CacheError(f"{info.label} ({spec.name}) does not work on {module_kind} models: {reason}")
        if not hasattr(module, "enable_cache"):
            raise CacheError(f"{type(module).__name__} has no enable_cache(); {info.label} needs diffusers "
                             f"{info.min_diffusers} or newer (this environment has {diffusers_version()})")
    configs = [cache_config(spec, module, module_kind, int(steps), area) for module, module_kind in zip(targets, kinds)]
    enabled: list[Any] = []
    try:
        for module, config in zip(targets, configs):
            if getattr(module, "is_cache_enabled", False):
                module.disable_cache()
            module.enable_cache(config)
            enabled.append(module)
    except Exception:
        remove_cache(enabled)
        raise
    log.info("step cache: %s (%s) on %s", info.label, spec, ", ".join(kinds))


def remove_cache(transformers: Iterable[Any]) -> None:
    """Disable whatever step cache the transformers have (a no-op for those without one)."""
    for module in _distinct(transformers):
        if getattr(module, "is_cache_enabled", False):
            module.disable_cache()


def active_cache(transformer: Any) -> str | None:
    """The diffusers config class of the cache enabled on `transformer`, or None."""
    config = getattr(transformer, "_cache_config", None)
    return type(config).__name__ if config is not None else None
