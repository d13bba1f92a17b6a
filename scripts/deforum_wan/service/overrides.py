"""What each `options_overrides` key of a txt2vid request accepts: one checker per key.

Each checker returns the value or raises ValueError saying what is wrong; the
validator (validation.py) names the field. LoRAs and depth models come by name only, never as paths.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Iterable

MAX_SIDE = 4096  # W, H, width, height
MIN_SIDE = 16
MAX_STEPS = 200  # Wan denoising steps (options_overrides.steps, wan_steps)
MAX_LORAS = 16
_DEVICE = re.compile(r"^(cpu|mps|(cuda|xpu)(:\d{1,2})?)$")


def _int_option(value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"expected a whole number, got {value!r}")
    value = int(value)
    if not low <= value <= high:
        raise ValueError(f"must be between {low} and {high}, got {value}")
    return value


def _float_option(value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {value!r}")
    if isinstance(value, int) and not low <= value <= high:  # before float(): a huge int would overflow it
        digits = str(value)
        raise ValueError(f"must be between {low:g} and {high:g}, got {digits if len(digits) < 20 else digits[:12] + '…'}")
    value = float(value)
    if not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"must be between {low:g} and {high:g}, got {value!r}")
    return value


def _bool_option(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _choice(choices: Iterable[str]) -> Callable[[Any], str]:
    choices = tuple(choices)

    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    return check


def _text_option(limit: int) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected text, got {type(value).__name__}")
        if len(value) > limit:
            raise ValueError(f"at most {limit} characters")
        return value

    return check


def _cache_option(value: Any) -> str:
    from ..core.speed import parse_cache

    if not isinstance(value, str) or len(value) > 100:
        raise ValueError(f"expected NAME[:THRESHOLD] text, got {value!r}")
    parse_cache(value)  # its ValueError says what is wrong
    return value


def _loras_option(value: Any) -> list[str]:
    """LoRA names from the LoRA folders, each NAME[:WEIGHT[:WEIGHT_2]]: names only, never paths, over the API."""
    from ..renderer.loras import LoraError, parse_lora_arg

    if not isinstance(value, list) or len(value) > MAX_LORAS or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of at most {MAX_LORAS} LoRA names such as \"style:0.8\"")
    for text in value:
        if len(text) > 300 or any(c in text for c in "/\\\x00") or text.strip().startswith(("~", ".")):
            raise ValueError(f"{text!r}: give a LoRA by its name in the LoRA folders, not by a path")
        try:
            parse_lora_arg(text)
        except LoraError as exc:
            raise ValueError(str(exc)) from None
    return value


def _depth_model_option(value: Any) -> str:
    """A depth model by its folder name in the models folder's depth/ (as LoRAs: a name, never a path)."""
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        raise ValueError(f"expected the name of a folder in the models folder's depth/, got {value!r}")
    if any(c in value for c in "/\\\x00:") or value.strip().startswith(("~", ".")):
        raise ValueError(f"{value!r}: give a depth model by its folder name in the models folder's depth/, "
                         "not by a path")
    return value.strip()


def _device(value: Any) -> str:
    if not isinstance(value, str) or not _DEVICE.match(value):
        raise ValueError(f"expected cpu, cuda, cuda:N, mps or xpu, got {value!r}")
    return value


def _gpus_option(value: Any) -> list[int]:
    from ..renderer.parallel import ParallelError, parse_gpus

    try:
        return list(parse_gpus(value, "GPU list"))
    except ParallelError as exc:
        raise ValueError(str(exc)) from None


def parallel_problem(options: dict[str, Any]) -> str | None:
    """Why options that each pass cannot run together across GPUs (ring on CPU, a step cache), or None."""
    from ..renderer.parallel import ParallelError, check_request

    try:
        check_request(options.get("gpus") or (), options.get("device"), options.get("context_parallel") or "ulysses",
                      options.get("cache"), options.get("memory_profile"))
    except ParallelError as exc:
        return str(exc)
    return None


def override_checks() -> dict[str, Callable[[Any], Any]]:
    from ..renderer.loading import ATTENTION_CHOICES
    from ..renderer.memory import MEMORY_PROFILES, STORAGE_CHOICES
    from ..core.choices import MOTIONS, TIMINGS
    from ..core.speed import PRESETS
    from ..core.plan import CONTINUITY
    from ..renderer.parallel import CP_MODES

    return {
        "model": _text_option(1000),
        "i2v_model": _text_option(1000),
        "depth_model": _depth_model_option,
        "steps": lambda v: _int_option(v, 1, MAX_STEPS),
        "width": lambda v: _int_option(v, MIN_SIDE, MAX_SIDE),
        "height": lambda v: _int_option(v, MIN_SIDE, MAX_SIDE),
        "continuity": _choice(CONTINUITY),
        "overlap": lambda v: _int_option(v, 1, 117),
        "guidance": lambda v: _float_option(v, 0, 30),
        "guidance_2": lambda v: _float_option(v, 0, 30),
        "flow_shift": lambda v: _float_option(v, 0.01, 50),
        "exact_size": _bool_option,
        "max_clip_frames": lambda v: _int_option(v, 5, 121),
        "seed": lambda v: _int_option(v, -1, 2**32 - 1),
        "sensitivity": lambda v: _float_option(v, 0.01, 100),
        "language": _choice(("en", "zh")),
        "timing": _choice(TIMINGS),
        "motion": _choice(MOTIONS),
        "preset": _choice(PRESETS),
        "cache": _cache_option,
        "loras": _loras_option,
        "fps_tolerance": lambda v: _float_option(v, 0, 1),
        "min_clip_seconds": lambda v: _float_option(v, 0, 3600),
        "color_match": _bool_option,
        "device": _device,
        "memory_profile": _choice(MEMORY_PROFILES),
        "gpus": _gpus_option,
        "context_parallel": _choice(CP_MODES),
        "storage": _choice(STORAGE_CHOICES),
        "attention": _choice(ATTENTION_CHOICES),
        "compile": _bool_option,
        "vae_tiling": _bool_option,
        "make_video": _bool_option,
        "enhance": _bool_option,
        "enhance_style": _text_option(2000),
        "enhance_style_strength": lambda v: _float_option(v, 0, 1),
        "enhance_target_language": _choice(("en", "zh")),
    }
