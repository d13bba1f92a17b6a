"""Find Wan model folders on disk and tell which kind each is.

Users download the Wan-AI "-Diffusers" repositories into `<models>/wan/`. Each is
a diffusers folder (model_index.json + one subfolder per component); its kind
(see specs.MODEL_SPECS) follows from the pipeline class in model_index.json and
the transformer's config, so classification reads only small JSON files and never
imports torch. That keeps this module light enough for the web UI, the service
and the CLI's `models` command; putting a model in memory is `loading.py`'s job,
and the offload profiles are `memory.py`'s.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..core.specs import ModelSpec, default_models_dir, spec_for_transformer

log = logging.getLogger(__name__)

PIPELINE_CLASSES = ("WanPipeline", "WanImageToVideoPipeline", "WanVACEPipeline")
_MODEL_COMPONENTS = ("text_encoder", "transformer", "transformer_2", "vae", "image_encoder")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


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
    heads, head_dim = tconfig.get("num_attention_heads"), tconfig.get("attention_head_dim")
    width = heads * head_dim if isinstance(heads, int) and isinstance(head_dim, int) else None
    spec = spec_for_transformer(kind, width)  # a 1.3B model's 480p sizes; none for an unofficial transformer
    return ModelInfo(path=folder, kind=kind, spec=spec, size_bytes=folder_size(folder), name=folder.name)


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
