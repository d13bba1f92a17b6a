"""Load a Wan model into diffusers pipelines for a whole job.

A model folder loads through `from_pretrained(folder, local_files_only=True)`,
exactly as the tiny test models do. A single-file model (`models.SingleFileModel`:
ComfyUI's transformer, text encoder, VAE and CLIP vision files) loads component by
component through `single_file` (diffusers' `from_single_file` with the configs
shipped in the package, GGUF transformers quantized) and is assembled into the
same pipeline class the folder would give. Then both place the pipelines with a
memory profile (`memory.py`), pick the attention backend and optionally compile
the transformers. The result is a `pipelines.Pipelines`, which renders the clips.
torch and diffusers are imported inside the functions.
"""
from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import single_file
from .memory import (
    GIB, MEMORY_PROFILES, STORAGE_CHOICES, apply_memory_profile, apply_storage, choose_memory_profile, default_device,
    default_dtype, resolve_storage,
)
from .models import IncompleteModel, ModelError, ModelInfo, SingleFileModel, folder_size
from .pipelines import Pipelines, patch_prompt_cleaning

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

ATTENTION_CHOICES = ("auto", "native", "flash")
# Where a Wan2.2 A14B pipeline hands over from the high- to the low-noise expert: wan/configs/wan_{t2v,i2v}_A14B.py
# `boundary` (the Wan-AI diffusers folders' model_index.json boundary_ratio)
BOUNDARY_RATIOS = {"a14b-t2v": 0.875, "a14b-i2v": 0.9}


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


def _single_file_pipeline(info: SingleFileModel, dtype: Any, shared: dict[str, Any] | None = None) -> Any:
    """The diffusers pipeline of a single-file model, its components loaded file by file (`single_file`)."""
    from diffusers import WanImageToVideoPipeline, WanPipeline, WanVACEPipeline

    if info.missing or info.text_encoder is None or info.vae is None:
        raise IncompleteModel(info)
    source = single_file.config_source()  # None: the configs shipped in the package
    parts = dict(shared or {})
    current: Any = info.transformer
    try:
        for transformer in (info.transformer, info.transformer_2):
            if transformer is not None:
                single_file.require_config(transformer, source)
        if "tokenizer" not in parts:
            current = info.text_encoder
            parts["tokenizer"] = single_file.load_tokenizer(info.text_encoder, info.tokenizer, source)
        if "text_encoder" not in parts:
            current = info.text_encoder
            parts["text_encoder"] = single_file.load_text_encoder(info.text_encoder, dtype, source)
        if "vae" not in parts:
            current = info.vae
            parts["vae"] = single_file.load_vae(info.vae, source)
        current = info.transformer
        parts["transformer"] = single_file.load_transformer(info.transformer, dtype, source)
        if info.transformer_2 is not None:
            current = info.transformer_2
            parts["transformer_2"] = single_file.load_transformer(info.transformer_2, dtype, source, "transformer_2")
        if info.image_encoder is not None:
            current = info.image_encoder
            parts["image_encoder"], parts["image_processor"] = single_file.load_image_encoder(info.image_encoder, source)
        parts["scheduler"] = single_file.load_scheduler(info.kind, source)
    except single_file.SingleFileError as exc:
        raise ModelError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - a file that is not what its header says: name it, no deep traceback
        path = getattr(current, "path", info.path)
        what = current.describe() if hasattr(current, "describe") else info.name
        raise ModelError(f"{path}: could not load {what}: {type(exc).__name__}: {exc}") from None
    if info.kind in BOUNDARY_RATIOS:
        parts["boundary_ratio"] = BOUNDARY_RATIOS[info.kind]
    if info.kind == "vace":
        return WanVACEPipeline(**parts)
    if info.kind in ("i2v", "flf2v", "a14b-i2v"):
        parts.setdefault("image_encoder", None)
        parts.setdefault("image_processor", None)
        return WanImageToVideoPipeline(**parts)
    return WanPipeline(**parts, expand_timesteps=info.kind == "ti2v-5b")


def _load(info: ModelInfo | SingleFileModel, dtype: Any, load_kwargs: dict[str, Any],
          shared: dict[str, Any] | None = None) -> Any:
    """One model's pipeline: from_pretrained on a folder, or assembled from single files."""
    if isinstance(info, SingleFileModel):
        return _single_file_pipeline(info, dtype, shared)
    from diffusers import DiffusionPipeline

    try:
        return DiffusionPipeline.from_pretrained(str(info.path), **(shared or {}), **load_kwargs)
    except Exception as exc:
        raise ModelError(f"{info.path}: could not load: {exc}") from exc


def _shareable(info: ModelInfo | SingleFileModel, other: ModelInfo | SingleFileModel, key: str) -> bool:
    """Whether `other` can use `info`'s text encoder or VAE (the same architecture, or the same file)."""
    if isinstance(info, SingleFileModel) and isinstance(other, SingleFileModel):
        mine, theirs = getattr(info, key), getattr(other, key)
        return mine is not None and theirs is not None and mine.path == theirs.path
    if isinstance(info, SingleFileModel) or isinstance(other, SingleFileModel):
        return False
    return _same_config(info.path / key, other.path / key)


def _memory_profile(info: ModelInfo | SingleFileModel, device: str, extra: list[Any], storage: str | None = None) -> str:
    """memory.choose_memory_profile, with single files counted file by file (fp8 ones upcast: twice their size)."""
    models = [info, *extra]
    if not any(isinstance(m, SingleFileModel) for m in models):
        return choose_memory_profile(info, device, extra, storage=storage)
    if not str(device).startswith("cuda"):
        return "none"
    import torch

    free, _total = torch.cuda.mem_get_info(torch.device(device))
    sizes = []
    for model in models:
        if isinstance(model, SingleFileModel):
            sizes += [f.size_bytes * (2 if f.dtype.startswith("fp8") else 1) for f in model.files().values()]
        else:
            sizes += [folder_size(sub) for sub in model.path.iterdir() if sub.is_dir()]
    headroom = 3 * GIB
    if free >= sum(sizes) * 1.1 + headroom:
        return "none"
    return "model" if free >= max(sizes, default=0) * 1.1 + headroom else "group"


def load_pipelines(
    info: ModelInfo | SingleFileModel,
    *,
    device: str | None = None,
    dtype: torch.dtype | None = None,
    memory_profile: str = "auto",
    attention: str = "auto",
    compile: bool = False,
    i2v_info: ModelInfo | SingleFileModel | None = None,
    vae_tiling: bool = False,
    storage: str = "auto",
) -> Pipelines:
    """Load a model (folder or single files) once for a whole job.

    With i2v_info (an I2V model used for a T2V/VACE model's i2v clips) the second
    pipeline reuses the first one's text encoder, tokenizer and VAE where they are
    the same architecture, so they are in memory once. TI2V-5B gets its I2V
    pipeline over its own components.
    """
    import torch
    from diffusers import WanImageToVideoPipeline

    if memory_profile not in MEMORY_PROFILES:
        raise ValueError(f"unknown memory profile {memory_profile!r}; choose one of {', '.join(MEMORY_PROFILES)}")
    if attention not in ATTENTION_CHOICES:
        raise ValueError(f"unknown attention {attention!r}; choose one of {', '.join(ATTENTION_CHOICES)}")
    if storage not in STORAGE_CHOICES:
        raise ValueError(f"unknown weight storage {storage!r}; choose one of {', '.join(STORAGE_CHOICES)}")
    patch_prompt_cleaning()
    device = str(device or default_device())
    dtype = dtype or default_dtype(device)
    # The Wan VAE and CLIP image encoder stay in fp32, as Wan's own examples load them.
    dtypes = {"default": dtype, "vae": torch.float32, "image_encoder": torch.float32}
    load_kwargs = {single_file.dtype_kwarg(): dtypes, "local_files_only": True}

    main = _load(info, dtype, load_kwargs)

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
            if _shareable(info, i2v_info, key):
                shared[key] = getattr(main, key)
            else:
                log.info("%s of %s differs from %s; loading it separately", key, i2v_info.name, info.name)
        image = _load(i2v_info, dtype, load_kwargs, shared)
        image_info = i2v_info
    elif i2v_info is not None:
        log.info("%s renders i2v clips itself; not loading %s", info.name, i2v_info.name)

    pipes = [p for p in (main, image) if p is not None]
    for pipe in pipes:
        pipe.set_progress_bar_config(disable=True)

    extra = [i2v_info] if i2v_info is not None and image is not None else []
    # fp8 weight storage first (memory.choose_storage: only when it keeps the weights resident or per-model
    # offloaded), so the profile counts the transformers at their stored size.
    stored = None if isinstance(info, SingleFileModel) else resolve_storage(storage, info, device, extra)
    cast: set[int] = set()
    for pipe in pipes:
        apply_storage(pipe, stored, done=cast)
    resolved = memory_profile
    if resolved == "experts":  # the two A14B experts on two GPUs, nothing offloaded (placement.py)
        from .placement import PlacementError, apply_experts, cuda_free, expert_sizes, place_experts

        if image is not None:
            raise PlacementError("memory profile experts places one A14B model's experts; it cannot also hold "
                                 f"{image_info.name if image_info else 'a second pipeline'}")
        placement = place_experts(expert_sizes(info, stored), cuda_free())
        apply_experts(main, placement)
        device = placement.others
        log.info("memory profile experts: %s", placement.describe())
    if resolved == "auto":
        resolved = _memory_profile(info, device, extra, stored)
    if resolved not in ("none", "experts") and not device.startswith("cuda"):
        log.info("memory profile %r needs a GPU; on %s everything stays resident", resolved, device)
        resolved = "none"
    done: set[int] = set()
    if resolved != "experts":
        apply_memory_profile(main, resolved, device, done)
    if image is not None and resolved in ("none", "group"):
        apply_memory_profile(image, resolved, device, done)
    log.info("memory profile: %s on %s (%s%s)", resolved, device, str(dtype).replace("torch.", ""),
             ", transformers stored in fp8" if stored else "")

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
