"""What a caller asks of the enhancer and what it gets back, and the error it raises.

The vocabulary every other enhance module shares: the options of a render job
(`EnhanceOptions`, validated once in `from_dict`), one model row
(`EnhanceRequest`: the clip's prompt and camera words with the video's shared
context; identical requests share a row and a cache entry), what became
of it (`EnhanceResult`) and `EnhanceError`, a user error whose message says what
to do. It lives apart so that the model finder, the prompt templates, the cache
and the rewrite can all use it without importing one another.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

LANGUAGES = ("en", "zh")
DEFAULT_MAX_NEW_TOKENS = 256
DEFAULT_TIMEOUT_SECONDS = 600.0


class EnhanceError(ValueError):
    """The enhancer cannot run as asked (no model, bad option); the message says what to do."""


@dataclass(frozen=True)
class EnhanceOptions:
    """What the caller may choose; `from_dict` takes the `enhance_options` dict of a RenderJob."""

    qwen: str | None = None  # model folder, or a name among the found models; None = auto-select
    style: str = ""
    style_strength: float = 0.5
    target_language: str = "en"
    models_dir: str | None = None  # the Wan models folder (<models>/wan); Qwen lives in its qwen/ or ../LLM/
    cache_dir: str | None = None
    timeout_seconds: float | None = DEFAULT_TIMEOUT_SECONDS
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    no_cache: bool = False
    device: str | None = None
    hub_cache: str | None = None  # Hugging Face hub cache to scan (default: HF_HUB_CACHE or ~/.cache/huggingface/hub)
    shared_context: bool = True  # give every rewrite the phrases the prompts share and the neighbouring scenes

    @classmethod
    def from_dict(cls, options: dict | None) -> "EnhanceOptions":
        """Validate a loose options dict (None values mean the default)."""
        data = {k: v for k, v in (options or {}).items() if v is not None}
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise EnhanceError(f"unknown enhance option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        opts = cls(**data)
        if opts.target_language not in LANGUAGES:
            raise EnhanceError(f"target_language: expected one of {', '.join(LANGUAGES)}, got {opts.target_language!r}")
        try:
            strength = float(opts.style_strength)
        except (TypeError, ValueError):
            raise EnhanceError(f"style_strength: expected a number from 0 to 1, got {opts.style_strength!r}") from None
        if not 0.0 <= strength <= 1.0:
            raise EnhanceError(f"style_strength: expected a number from 0 to 1, got {opts.style_strength!r}")
        timeout = opts.timeout_seconds
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
            raise EnhanceError(f"timeout_seconds: expected a positive number of seconds, got {timeout!r}")
        if not isinstance(opts.max_new_tokens, int) or not 16 <= opts.max_new_tokens <= 4096:
            raise EnhanceError(f"max_new_tokens: expected a whole number from 16 to 4096, got {opts.max_new_tokens!r}")
        qwen = opts.qwen if opts.qwen not in ("", "auto") else None
        return replace(opts, style=str(opts.style or "").strip(), style_strength=strength, qwen=qwen,
                       no_cache=bool(opts.no_cache), shared_context=_switch("shared_context", opts.shared_context))


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _switch(name: str, value: object) -> bool:
    """A yes/no option as JSON, a form or a command line may send it: a bool, 0/1, or true/false words."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise EnhanceError(f"{name}: expected true or false, got {value!r}")


@dataclass(frozen=True)
class EnhanceRequest:
    """One row for the model: identical requests share a row and a cache entry."""

    prompt: str
    movement: str = ""
    style: str = ""
    style_strength: float = 0.5
    language: str = "en"
    # The context of the whole video (context.py): the same for every clip of a job, and
    # the previous and next distinct prompts; "" when there is none or it is turned off.
    shared: str = ""
    previous: str = ""
    next: str = ""


@dataclass(frozen=True)
class EnhanceResult:
    """What became of one request: the text to render and where it came from."""

    request: EnhanceRequest
    text: str  # the enhanced prompt, or the original prompt when `reason` says why not
    enhanced: bool
    source: str  # "model" | "cache" | "none" (no model output: error or timeout)
    reason: str | None = None  # why the original prompt was kept
    notes: tuple[str, ...] = ()  # e.g. the camera words had to be appended
    raw: str | None = None
