"""Load a Wan model folder into diffusers pipelines for a whole job.

Loading goes through `from_pretrained(folder, local_files_only=True)`, exactly as
for the tiny test models, then places the pipelines with a memory profile
(`memory.py`), picks the attention backend and optionally compiles the
transformers. The result is a `pipelines.Pipelines`, which renders the clips.
torch and diffusers are imported inside the functions.
"""
from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .memory import MEMORY_PROFILES, apply_memory_profile, choose_memory_profile, default_device, default_dtype
from .models import ModelError, ModelInfo
from .pipelines import Pipelines, patch_prompt_cleaning

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

ATTENTION_CHOICES = ("auto", "native", "flash")


def _setup_attention(transformers: list[Any], attention: str, device: str) -> str:
    """Use flash-attn through diffusers' dispatcher when asked/available; else PyTorch SDPA ("native")."""
    if attention not in ATTENTION_CHOICES:
        raise ValueError(f"unknown attention {attention!r}; choose one of {', '.join(ATTENTION_CHOICES)}")
    if attention == "native":
        return "native"
    on_cuda = str(device).startswith("cuda")
    try:
        import flash_attn  # noqa: F401

        has_flash = True
    except ImportError:
        has_flash = False
    settable = all(hasattr(t, "set_attention_backend") for t in transformers)
    if not (on_cuda and has_flash and settable):
        if attention == "flash":
            why = "no CUDA" if not on_cuda else "flash_attn is not installed" if not has_flash else "diffusers too old"
            log.warning("flash attention requested but unavailable (%s); using native SDPA", why)
        return "native"
    try:
        for transformer in transformers:
            transformer.set_attention_backend("flash")
    except Exception as exc:  # an unsupported GPU or flash_attn build
        log.warning("could not enable flash attention (%s); using native SDPA", exc)
        for transformer in transformers:
            with contextlib.suppress(Exception):
                transformer.reset_attention_backend()
        return "native"
    return "flash"


def _dtype_kwarg() -> str:
    """diffusers 0.42 renamed from_pretrained's torch_dtype to dtype (the old name warns)."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return "torch_dtype"
    return "dtype"


def _same_config(a: Path, b: Path) -> bool:
    """Whether two component folders hold the same architecture (so one can serve both pipelines)."""
    def load(p: Path) -> dict:
        try:
            data = json.loads((p / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return {
            k: v for k, v in data.items()
            if not k.startswith("_") and k not in ("transformers_version", "torch_dtype", "dtype", "architectures")
        }

    ca, cb = load(a), load(b)
    return bool(ca) and ca == cb


def load_pipelines(
    info: ModelInfo,
    *,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    memory_profile: str = "auto",
    attention: str = "auto",
    compile: bool = False,
    i2v_info: ModelInfo | None = None,
    vae_tiling: bool = False,
) -> Pipelines:
    """Load a model folder once for a whole job.

    With i2v_info (an I2V model used for a T2V/VACE model's i2v clips) the second
    pipeline reuses the first one's text encoder, tokenizer and VAE where they are
    the same architecture, so they are in memory once. TI2V-5B gets its I2V
    pipeline over its own components.
    """
    import torch
    from diffusers import DiffusionPipeline, WanImageToVideoPipeline

    if memory_profile not in MEMORY_PROFILES:
        raise ValueError(f"unknown memory profile {memory_profile!r}; choose one of {', '.join(MEMORY_PROFILES)}")
    if attention not in ATTENTION_CHOICES:
        raise ValueError(f"unknown attention {attention!r}; choose one of {', '.join(ATTENTION_CHOICES)}")
    patch_prompt_cleaning()
    device = str(device or default_device())
    dtype = dtype or default_dtype(device)
    # The Wan VAE and CLIP image encoder stay in fp32, as Wan's own examples load them.
    dtypes = {"default": dtype, "vae": torch.float32, "image_encoder": torch.float32}
    load_kwargs = {_dtype_kwarg(): dtypes, "local_files_only": True}

    try:
        main = DiffusionPipeline.from_pretrained(str(info.path), **load_kwargs)
    except Exception as exc:
        raise ModelError(f"{info.path}: could not load: {exc}") from exc

    image = None
    image_info = None
    if info.kind == "ti2v-5b" and type(main).__name__ == "WanPipeline":
        image = WanImageToVideoPipeline(
            tokenizer=main.tokenizer,
            text_encoder=main.text_encoder,
            vae=main.vae,
            scheduler=main.scheduler,
            transformer=main.transformer,
            transformer_2=None,
            image_encoder=None,
            image_processor=None,
            boundary_ratio=None,
            expand_timesteps=True,
        )
        image_info = info
    elif i2v_info is not None and "i2v" not in info.spec.modes:
        if "i2v" not in i2v_info.spec.modes:
            raise ModelError(f"{i2v_info.path}: a {i2v_info.label} model cannot render i2v clips")
        shared: dict[str, Any] = {"tokenizer": main.tokenizer}
        for key in ("text_encoder", "vae"):
            if _same_config(info.path / key, i2v_info.path / key):
                shared[key] = getattr(main, key)
            else:
                log.info("%s of %s differs from %s; loading it separately", key, i2v_info.name, info.name)
        try:
            image = DiffusionPipeline.from_pretrained(str(i2v_info.path), **shared, **load_kwargs)
        except Exception as exc:
            raise ModelError(f"{i2v_info.path}: could not load: {exc}") from exc
        image_info = i2v_info
    elif i2v_info is not None:
        log.info("%s renders i2v clips itself; not loading %s", info.name, i2v_info.name)

    pipes = [p for p in (main, image) if p is not None]
    for pipe in pipes:
        pipe.set_progress_bar_config(disable=True)

    resolved = memory_profile
    if resolved == "auto":
        resolved = choose_memory_profile(info, device, [i2v_info] if i2v_info is not None and image is not None else [])
    if resolved != "none" and not device.startswith("cuda"):
        log.info("memory profile %r needs a GPU; on %s everything stays resident", resolved, device)
        resolved = "none"
    done: set[int] = set()
    apply_memory_profile(main, resolved, device, done)
    if image is not None and resolved in ("none", "group"):
        apply_memory_profile(image, resolved, device, done)
    log.info("memory profile: %s on %s (%s)", resolved, device, str(dtype).replace("torch.", ""))

    if vae_tiling:
        for pipe in pipes:
            pipe.vae.enable_tiling()

    transformers = []
    for pipe in pipes:
        for key in ("transformer", "transformer_2"):
            module = getattr(pipe, key, None)
            if module is not None and all(module is not t for t in transformers):
                transformers.append(module)
    attention_used = _setup_attention(transformers, attention, device)
    log.info("attention: %s", attention_used)

    compiled = False
    if compile:
        for transformer in transformers:
            try:
                if getattr(transformer, "_repeated_blocks", None) and hasattr(transformer, "compile_repeated_blocks"):
                    transformer.compile_repeated_blocks(fullgraph=True)
                else:
                    transformer.compile()
                compiled = True
            except Exception as exc:
                log.warning("torch.compile of %s failed (%s); running uncompiled", type(transformer).__name__, exc)

    # Wan pads every prompt to 512 tokens; a tokenizer declaring a shorter limit (the
    # tiny test models do) gets that, which keeps tiny renders fast.
    declared = getattr(main.tokenizer, "model_max_length", None) or 512
    max_sequence_length = max(1, min(512, int(declared)))

    return Pipelines(
        info=info,
        main=main,
        image=image,
        image_info=image_info,
        device=device,
        dtype=dtype,
        memory_profile=resolved,
        attention=attention_used,
        compiled=compiled,
        vae_tiling=vae_tiling,
        max_sequence_length=max_sequence_length,
        _active=main,
    )
