"""Where a loaded model lives: device, dtype, weight storage and the offload profile.

A job picks one memory profile (everything resident, per-model CPU offload,
sequential offload, or group offload) from the free VRAM and the model's size on
disk, and applies it to each diffusers pipeline. `loading.py` applies it once at
load time; `pipelines.py` re-applies it when a job switches between two pipelines
that share modules. Kept apart from both so neither has to import the other for it.

When the GPU has little memory for the model, `choose_storage` picks fp8 weight
storage for the transformer(s): diffusers' layerwise casting keeps each layer's
weights in float8_e4m3fn and casts them to the compute dtype (bf16 on a GPU) for
that layer's forward only, halving the transformers' weight memory. It is applied
(`apply_storage`) before the memory profile, so weights move to the GPU as fp8.
torch and diffusers are imported inside the functions.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from .models import ModelInfo, folder_size

if TYPE_CHECKING:  # pragma: no cover
    import torch

MEMORY_PROFILES = ("auto", "none", "model", "sequential", "group", "experts")  # experts: placement.py
GIB = 1024**3
HEADROOM = 3 * GIB  # activations, VAE decode, CUDA context
FP8_STORAGE = "float8_e4m3fn"  # torch.float8_e4m3fn: weights stored in 1 byte, computed in the compute dtype
STORAGE_CHOICES = ("auto", "none", "fp8")


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str | torch.device) -> torch.dtype:
    """bf16 on CUDA (what Wan was trained in), fp32 on CPU (bf16 matmuls there are slow and lossy)."""
    import torch

    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


def _component_sizes(path: Path) -> dict[str, int]:
    return {sub.name: folder_size(sub) for sub in path.iterdir() if sub.is_dir()}


def _model_sizes(info: ModelInfo, extra: Iterable[ModelInfo] = ()) -> dict[str, int]:
    sizes = _component_sizes(info.path)
    for other in extra:
        sizes.update({f"{other.name}/{k}": v for k, v in _component_sizes(other.path).items()})
    return sizes


def _is_transformer(component: str) -> bool:
    return component.rsplit("/", 1)[-1].startswith("transformer")


def _stored_sizes(sizes: dict[str, int], storage: str | None) -> dict[str, int]:
    """Sizes in memory with `storage`: fp8 transformers take half their bf16 size (norms and embeddings are few)."""
    if storage != FP8_STORAGE:
        return sizes
    return {k: (v // 2 if _is_transformer(k) else v) for k, v in sizes.items()}


def _fits(free: int, size: int) -> bool:
    return free >= size * 1.1 + HEADROOM


def free_cuda_bytes(device: str) -> int:
    import torch

    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(free)


def choose_memory_profile(info: ModelInfo, device: str, extra: Iterable[ModelInfo] = (), *,
                          storage: str | None = None) -> str:
    """Pick an offload profile from free VRAM: everything resident, per-model offload, or group offload.

    Sizes on disk stand in for sizes in memory (the folders hold bf16 weights); with
    `storage` fp8 (see choose_storage) the transformers count half.
    """
    if not str(device).startswith("cuda"):
        return "none"
    free = free_cuda_bytes(device)
    sizes = _stored_sizes(_model_sizes(info, extra), storage)
    whole = sum(sizes.values())
    largest = max(sizes.values(), default=0)
    if _fits(free, whole):
        return "none"
    if _fits(free, largest):
        return "model"
    return "group"


def choose_storage(info: ModelInfo, device: str, free_bytes: int | None,
                   extra: Iterable[ModelInfo] = ()) -> str | None:
    """fp8 weight storage for the transformer(s) when the GPU has little memory for the model, else None.

    fp8 is chosen only when it changes where the weights live: when the bf16 model does
    not fit in `free_bytes` but the model with fp8 transformers does (everything resident
    instead of offloading), or when the largest bf16 component does not fit but its fp8
    form does (per-model offload instead of group offload). A model that fits in bf16
    keeps bf16 (fp8 storage costs some precision), and one too large either way is
    group-offloaded in bf16. Never on a CPU: it has no fp8 matmul either, and RAM is not
    what offloading saves. Only model folders are sized (a single-file model: None).
    """
    if not str(device).startswith("cuda") or free_bytes is None or not Path(info.path).is_dir():
        return None
    sizes = _model_sizes(info, extra)
    if not any(_is_transformer(k) for k in sizes) or _fits(free_bytes, sum(sizes.values())):
        return None
    fp8 = _stored_sizes(sizes, FP8_STORAGE)
    if _fits(free_bytes, sum(fp8.values())):
        return FP8_STORAGE
    if not _fits(free_bytes, max(sizes.values())) and _fits(free_bytes, max(fp8.values())):
        return FP8_STORAGE
    return None


def resolve_storage(choice: str | None, info: ModelInfo, device: str, extra: Iterable[ModelInfo] = ()) -> str | None:
    """A storage choice ("auto", "none", "fp8"; None is "auto") -> FP8_STORAGE or None."""
    key = (choice or "auto").strip().lower()
    if key in ("fp8", FP8_STORAGE):
        return FP8_STORAGE
    if key == "none":
        return None
    if key != "auto":
        raise ValueError(f"storage: unknown weight storage {choice!r}; choose one of {', '.join(STORAGE_CHOICES)}")
    free = free_cuda_bytes(device) if str(device).startswith("cuda") else None
    return choose_storage(info, device, free, extra)


def stored_in(module: Any) -> Any:
    """The storage dtype of a module under layerwise casting (torch.float8_e4m3fn), or None."""
    for sub in module.modules():
        registry = getattr(sub, "_diffusers_hook", None)
        hook = registry.get_hook("layerwise_casting") if registry is not None else None
        if hook is not None:
            return hook.storage_dtype
    return None


def apply_storage(pipe: Any, storage: str | None, compute_dtype: torch.dtype | None = None,
                  done: set[int] | None = None) -> list[Any]:
    """Store the pipeline's transformer(s) in `storage` (FP8_STORAGE or None) through diffusers' layerwise casting.

    Call it before apply_memory_profile. Each layer computes in `compute_dtype` (default: the
    transformer's dtype as loaded, bf16 on a GPU and float32 on a CPU); norms, embeddings and
    the patch embedding stay as they are (diffusers' skip patterns for Wan). Returns the
    transformers it cast; ones already cast (a transformer two pipelines share, listed in
    `done`) are skipped. Casting cannot be undone: reload the model for bf16 weights.
    """
    if storage in (None, "none"):
        return []
    if storage not in (FP8_STORAGE, "fp8"):
        raise ValueError(f"storage: unknown weight storage {storage!r}; choose {FP8_STORAGE} or None")
    import torch

    fp8 = getattr(torch, FP8_STORAGE, None)
    if fp8 is None:
        raise RuntimeError(f"fp8 storage needs torch.{FP8_STORAGE} (torch 2.1 or newer); this is torch {torch.__version__}")
    done = set() if done is None else done
    cast: list[Any] = []
    for key in ("transformer", "transformer_2"):
        module = getattr(pipe, key, None)
        if module is None or id(module) in done:
            continue
        done.add(id(module))
        if not hasattr(module, "enable_layerwise_casting"):
            raise RuntimeError("fp8 storage needs diffusers 0.33 or newer (ModelMixin.enable_layerwise_casting)")
        if stored_in(module) is not None:
            continue
        module.enable_layerwise_casting(storage_dtype=fp8, compute_dtype=compute_dtype or module.dtype)
        cast.append(module)
    return cast


def apply_memory_profile(pipe: Any, profile: str, device: str, done: set[int] | None = None) -> None:
    """Put one pipeline on the device according to profile (none / model / sequential / group)."""
    if profile == "none":
        pipe.to(device)
    elif profile == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif profile == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    elif profile == "group":
        import torch
        from diffusers.hooks import apply_group_offloading

        done = set() if done is None else done
        for name, module in pipe.components.items():
            if not isinstance(module, torch.nn.Module) or id(module) in done:
                continue
            done.add(id(module))
            if name == "vae":  # small, and offloading its many conv leaves is slow: keep it resident
                module.to(device)
                continue
            apply_group_offloading(
                module,
                onload_device=torch.device(device),
                offload_device=torch.device("cpu"),
                offload_type="leaf_level",
                use_stream=True,
            )
    else:
        raise ValueError(f"unknown memory profile {profile!r}; choose one of {', '.join(MEMORY_PROFILES)}")
