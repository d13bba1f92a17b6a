"""Where a loaded model lives: device, dtype and the offload profile.

A job picks one memory profile (everything resident, per-model CPU offload,
sequential offload, or group offload) from the free VRAM and the model's size on
disk, and applies it to each diffusers pipeline. `loading.py` applies it once at
load time; `pipelines.py` re-applies it when a job switches between two pipelines
that share modules. Kept apart from both so neither has to import the other for it.
torch and diffusers are imported inside the functions.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from .models import ModelInfo, folder_size

if TYPE_CHECKING:  # pragma: no cover
    import torch

MEMORY_PROFILES = ("auto", "none", "model", "sequential", "group")
GIB = 1024**3


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str | torch.device) -> torch.dtype:
    """bf16 on CUDA (what Wan was trained in), fp32 on CPU (bf16 matmuls there are slow and lossy)."""
    import torch

    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


def _component_sizes(path: Path) -> dict[str, int]:
    return {sub.name: folder_size(sub) for sub in path.iterdir() if sub.is_dir()}


def choose_memory_profile(info: ModelInfo, device: str, extra: Iterable[ModelInfo] = ()) -> str:
    """Pick an offload profile from free VRAM: everything resident, per-model offload, or group offload.

    Sizes on disk stand in for sizes in memory (the folders hold bf16 weights).
    """
    if not str(device).startswith("cuda"):
        return "none"
    import torch

    free, _total = torch.cuda.mem_get_info(torch.device(device))
    headroom = 3 * GIB  # activations, VAE decode, CUDA context
    sizes = _component_sizes(info.path)
    for other in extra:
        sizes.update({f"{other.name}/{k}": v for k, v in _component_sizes(other.path).items()})
    whole = sum(sizes.values())
    largest = max(sizes.values(), default=0)
    if free >= whole * 1.1 + headroom:
        return "none"
    if free >= largest * 1.1 + headroom:
        return "model"
    return "group"


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
