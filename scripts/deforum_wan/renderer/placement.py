"""Wan 2.2 A14B's two experts on two GPUs: the `experts` memory profile.

An A14B model is two 14B transformers (the high-noise expert for the first steps,
the low-noise expert for the rest, handing over at the boundary ratio) sharing one
text encoder and VAE. In bf16 each expert is about 28 GB, so one 24-48 GB GPU has
to offload them; two GPUs can hold one expert each, resident, with no offloading
at all. `place_experts` decides where each module goes from the GPUs' free memory
(a pure function: tested on any machine); `apply_experts` moves them and puts
accelerate's AlignDevicesHook on each expert, so its inputs move to its GPU and its
output comes back to the pipeline's device, where the scheduler and VAE work.
The experts run one after the other (never at once), so this saves offloading time,
not compute. torch and accelerate are imported inside the functions.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .memory import FP8_STORAGE, GIB, _fits, _stored_sizes

EXPERTS = "experts"
EXPERT_KEYS = ("transformer", "transformer_2")


class PlacementError(ValueError):
    """The experts profile cannot be used here; the message says why and what to choose instead."""


@dataclass(frozen=True)
class ExpertPlacement:
    """Which device holds each part of an A14B pipeline."""

    transformer: str  # the high-noise expert
    transformer_2: str  # the low-noise expert
    others: str  # text encoder, VAE (and image encoder): where the pipeline itself runs

    def describe(self) -> str:
        def on(device: str) -> list[str]:
            return [name for name, where in (("high-noise expert", self.transformer),
                                             ("low-noise expert", self.transformer_2),
                                             ("text encoder and VAE", self.others)) if where == device]

        devices = dict.fromkeys((self.others, self.transformer, self.transformer_2))
        return "; ".join(f"{', '.join(on(d))} on {d}" for d in devices)

    def to_dict(self) -> dict[str, str]:
        return {"transformer": self.transformer, "transformer_2": self.transformer_2, "others": self.others}


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def place_experts(sizes: Mapping[str, int], free: Sequence[tuple[str, int]]) -> ExpertPlacement:
    """Put the two experts on the two GPUs with the most free memory, the rest beside whichever has room.

    `sizes`: bytes per component (`transformer`, `transformer_2`, the others by name), as they will
    sit in memory; `free`: (device, free bytes) for each GPU. Each GPU must hold its modules with the
    same margin the other profiles use (memory._fits: 10% plus 3 GiB for activations and the VAE).
    """
    if "transformer_2" not in sizes or "transformer" not in sizes:
        raise PlacementError("memory profile experts is for models with two experts (Wan 2.2 A14B T2V/I2V); "
                             "this model has one transformer: choose auto, none, model or group")
    gpus = sorted(((d, int(f)) for d, f in free if str(d).startswith("cuda")), key=lambda g: -g[1])
    if len(gpus) < 2:
        have = ", ".join(d for d, _ in gpus) or "none"
        raise PlacementError(f"memory profile experts puts the two A14B experts on two GPUs; this machine has "
                             f"{len(gpus)} CUDA GPU(s) ({have}): choose auto, model or group (offloading) instead")
    (a, free_a), (b, free_b) = gpus[0], gpus[1]
    high, low = int(sizes["transformer"]), int(sizes["transformer_2"])
    rest = sum(int(v) for k, v in sizes.items() if k not in EXPERT_KEYS)
    choices = (  # the others with the high-noise expert first: it runs first and the text encoder runs before it
        (ExpertPlacement(a, b, a), high + rest, low), (ExpertPlacement(b, a, a), low + rest, high),
        (ExpertPlacement(a, b, b), high, low + rest), (ExpertPlacement(b, a, b), low, high + rest),
    )
    for placement, on_a, on_b in choices:
        if _fits(free_a, on_a) and _fits(free_b, on_b):
            return placement
    raise PlacementError(
        f"memory profile experts: the experts ({_gib(high)} and {_gib(low)}) and the rest ({_gib(rest)}) do not fit "
        f"on {a} ({_gib(free_a)} free) and {b} ({_gib(free_b)} free) with room to run; try --weight-storage fp8 "
        "(halves the experts), or memory profile model or group")


def experts_note(info: Any, free: Sequence[tuple[str, int]], storage: str | None = None) -> str:
    """One line for `plan` and `doctor`: where the experts profile would put this A14B model, or why it cannot."""
    try:
        return "memory profile experts: " + place_experts(expert_sizes(info, storage), free).describe()
    except PlacementError as exc:
        return f"{exc}"


def expert_sizes(info: Any, storage: str | None = None) -> dict[str, int]:
    """Bytes per component of a model folder or single-file model, at their stored size (fp8 halves the experts)."""
    files = getattr(info, "files", None)
    if callable(files):  # a single-file model: fp8 files are upcast when loaded (loading._memory_profile)
        sizes = {role: f.size_bytes * (2 if f.dtype.startswith("fp8") else 1) for role, f in files().items()}
    else:
        sizes = {sub.name: _folder_bytes(sub) for sub in Path(info.path).iterdir() if sub.is_dir()}
    return _stored_sizes(sizes, FP8_STORAGE if storage == FP8_STORAGE else None)


def _folder_bytes(path: Path) -> int:
    from .models import folder_size

    return folder_size(path)


def cuda_free() -> list[tuple[str, int]]:
    """(device, free bytes) for every visible CUDA GPU; [] without CUDA (or without torch, for `plan`)."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    return [(f"cuda:{i}", int(torch.cuda.mem_get_info(i)[0])) for i in range(torch.cuda.device_count())]


def apply_experts(pipe: Any, placement: ExpertPlacement) -> None:
    """Move an A14B pipeline's modules to `placement`; each expert computes on its own device.

    accelerate's AlignDevicesHook (io_same_device) moves an expert's inputs to its device and its output
    back to the device its inputs came from, so the denoising loop never sees a second device.
    """
    import torch
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module

    for key in EXPERT_KEYS:
        if getattr(pipe, key, None) is None:
            raise PlacementError(f"memory profile experts: the pipeline has no {key}")
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module) and name not in EXPERT_KEYS:
            module.to(placement.others)
    for key in EXPERT_KEYS:
        device = getattr(placement, key)
        module = getattr(pipe, key).to(device)
        add_hook_to_module(module, AlignDevicesHook(execution_device=torch.device(device), io_same_device=True))
