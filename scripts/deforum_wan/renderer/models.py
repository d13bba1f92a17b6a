"""Find Wan model folders on disk, tell which kind each is, and load them.

Users download the Wan-AI "-Diffusers" repositories into `<models>/wan/`. Each is
a diffusers folder (model_index.json + one subfolder per component); its kind
(see specs.MODEL_SPECS) follows from the pipeline class in model_index.json and
the transformer's config, so classification reads only small JSON files and never
imports torch. Loading goes through `from_pretrained(folder, local_files_only=True)`,
exactly as for the tiny test models.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from ..core.specs import MODEL_SPECS, ModelSpec, default_models_dir

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .pipelines import Pipelines

log = logging.getLogger(__name__)

PIPELINE_CLASSES = ("WanPipeline", "WanImageToVideoPipeline", "WanVACEPipeline")
MEMORY_PROFILES = ("auto", "none", "model", "sequential", "group")
ATTENTION_CHOICES = ("auto", "native", "flash")
_MODEL_COMPONENTS = ("text_encoder", "transformer", "transformer_2", "vae", "image_encoder")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
GIB = 1024**3


class ModelError(Exception):
    """A folder is not a usable Wan diffusers model; the message says which folder and why."""


@dataclass(frozen=True)
class ModelInfo:
    """One Wan model folder on disk and what it can do."""

    path: Path
    kind: str
    spec: ModelSpec
    size_bytes: int
    name: str

    @property
    def label(self) -> str:
        return self.spec.label


# ---------------------------------------------------------------------------
# Discovery and classification (pure JSON, no torch)


def _read_json(path: Path, folder: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{folder}: missing {path.relative_to(folder)}") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"{folder}: cannot read {path.relative_to(folder)}: {exc}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{folder}: {path.relative_to(folder)} is not a JSON object")
    return data


def _component_present(value: Any) -> bool:
    """model_index.json lists absent optional components as [null, null]."""
    return isinstance(value, (list, tuple)) and len(value) == 2 and value[0] is not None and value[1] is not None


def _has_weights(sub: Path) -> bool:
    return any(p.name.endswith(_WEIGHT_SUFFIXES) for p in sub.iterdir() if p.is_file())


def folder_size(path: Path) -> int:
    """Bytes on disk under path, following symlinks (the Hugging Face cache links files to blobs)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path, followlinks=True):
        for name in files:
            try:
                total += (Path(dirpath) / name).stat().st_size
            except OSError:
                continue
    return total


def classify_model(path: str | Path) -> ModelInfo:
    """Read one diffusers folder and decide its kind; raise ModelError saying what is wrong."""
    folder = Path(path)
    if not folder.is_dir():
        raise ModelError(f"{folder}: not a folder")
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise ModelError(f"{folder}: no model_index.json (not a diffusers model folder)")
    index = _read_json(index_path, folder)
    cls = index.get("_class_name")
    if cls not in PIPELINE_CLASSES:
        raise ModelError(
            f"{folder}: unknown pipeline class {cls!r} in model_index.json; expected one of {', '.join(PIPELINE_CLASSES)}"
        )

    present = {key for key, value in index.items() if not key.startswith("_") and _component_present(value)}
    required = {"tokenizer", "text_encoder", "vae", "scheduler"}
    missing_keys = sorted(required - present)
    if "transformer" not in present and "transformer_2" not in present:
        missing_keys.append("transformer")
    if missing_keys:
        raise ModelError(f"{folder}: model_index.json lists no {', '.join(missing_keys)}")
    for key in sorted(present):
        sub = folder / key
        if not sub.is_dir():
            raise ModelError(f"{folder}: missing subfolder {key}/ (listed in model_index.json)")
        if key in _MODEL_COMPONENTS:
            if not (sub / "config.json").is_file():
                raise ModelError(f"{folder}: missing {key}/config.json")
            if not _has_weights(sub):
                raise ModelError(f"{folder}: no weights in {key}/ (expected *.safetensors or *.bin)")

    transformer_key = "transformer" if "transformer" in present else "transformer_2"
    tconfig = _read_json(folder / transformer_key / "config.json", folder)
    vconfig = _read_json(folder / "vae" / "config.json", folder)
    kind = _kind_from_configs(folder, cls, index, present, tconfig, vconfig)
    return ModelInfo(path=folder, kind=kind, spec=MODEL_SPECS[kind], size_bytes=folder_size(folder), name=folder.name)


def _kind_from_configs(
    folder: Path, cls: str, index: dict, present: set[str], tconfig: dict, vconfig: dict
) -> str:
    two_experts = "transformer_2" in present or index.get("boundary_ratio") is not None
    wan22_vae = vconfig.get("z_dim") == 48 or tconfig.get("in_channels") == 48
    if cls == "WanVACEPipeline":
        if not tconfig.get("vace_layers"):
            raise ModelError(f"{folder}: WanVACEPipeline but transformer/config.json has no vace_layers")
        return "vace"
    if bool(index.get("expand_timesteps")) or wan22_vae:
        return "ti2v-5b"
    if cls == "WanPipeline":
        if tconfig.get("in_channels", 16) != 16:
            raise ModelError(
                f"{folder}: WanPipeline with a {tconfig.get('in_channels')}-channel transformer "
                "(an image-to-video transformer needs WanImageToVideoPipeline)"
            )
        return "a14b-t2v" if two_experts else "t2v"
    # WanImageToVideoPipeline
    if two_experts:
        return "a14b-i2v"
    if tconfig.get("image_dim") is None or "image_encoder" not in present:
        raise ModelError(f"{folder}: Wan2.1 image-to-video model without an image_encoder/ (CLIP) component")
    if tconfig.get("pos_embed_seq_len"):
        return "flf2v"
    return "i2v"


def scan_models(root: str | Path) -> tuple[list[ModelInfo], list[ModelError]]:
    """Classify every folder with model_index.json at root, directly under it, or one level deeper.

    Returns (models sorted by name, problems); a broken download shows up as a problem
    instead of hiding the good models.
    """
    root = Path(root)
    if not root.is_dir():
        return [], []
    candidates: list[Path] = []
    if (root / "model_index.json").is_file():
        candidates.append(root)
    else:
        for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if (child / "model_index.json").is_file():
                candidates.append(child)
                continue
            for grandchild in sorted(p for p in child.iterdir() if p.is_dir() and not p.name.startswith(".")):
                if (grandchild / "model_index.json").is_file():
                    candidates.append(grandchild)
    infos: list[ModelInfo] = []
    problems: list[ModelError] = []
    for folder in candidates:
        try:
            infos.append(classify_model(folder))
        except ModelError as exc:
            problems.append(exc)
    infos.sort(key=lambda info: info.name.lower())
    return infos, problems


def discover_models(root: str | Path) -> list[ModelInfo]:
    """Usable Wan models under root (see scan_models); broken folders are logged and skipped."""
    infos, problems = scan_models(root)
    for problem in problems:
        log.warning("skipping model folder: %s", problem)
    return infos


def find_model(name_or_path: str | Path, root: str | Path | None = None) -> ModelInfo:
    """A model by folder path, or by folder name / kind among the models under root."""
    candidate = Path(name_or_path)
    if candidate.is_dir():
        return classify_model(candidate)
    root = Path(root) if root is not None else default_models_dir()
    infos = discover_models(root)
    for info in infos:
        if info.name == str(name_or_path):
            return info
    for info in infos:
        if info.kind == str(name_or_path):
            return info
    known = ", ".join(info.name for info in infos) or "none"
    raise ModelError(f"{name_or_path}: no such model folder, and no model of that name or kind in {root} (found: {known})")


def human_size(num_bytes: int) -> str:
    """1536 -> '1.5 KiB'."""
    size = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover


def format_models_table(infos: Iterable[ModelInfo]) -> str:
    """A plain-text table for `deforum-wan models`: name, kind, label, fps, max frames, size."""
    rows = [("NAME", "KIND", "MODEL", "FPS", "MAX FRAMES", "SIZE")]
    for info in infos:
        rows.append(
            (info.name, info.kind, info.label, str(info.spec.native_fps), str(info.spec.max_frames), human_size(info.size_bytes))
        )
    if len(rows) == 1:
        return "no Wan models found"
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {3, 4, 5}
    lines = []
    for row in rows:
        cells = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Device, dtype, memory


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

    from .pipelines import Pipelines, patch_prompt_cleaning

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
