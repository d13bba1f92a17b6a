"""Qwen models on this machine: finding, inspecting, choosing and downloading them.

The enhancer needs a local chat causal LM. This module looks for one in the
models folders (<models>/wan/qwen, <models>/LLM) and in the Hugging Face hub
cache, checks each folder from its JSON files alone (architecture, tokenizer,
chat template, complete weights), estimates its parameters and memory from
config.json, and picks the largest that fits in free memory. It reads no
weights and imports no torch unless asked for free CUDA memory.

Nothing is downloaded unless the user calls `download_qwen` with an exact repo id.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..core.specs import default_models_dir
from .options import EnhanceError

log = logging.getLogger(__name__)

QWEN_REPOS = (
    "Qwen/Qwen2.5-0.5B-Instruct",
    "Qwen/Qwen2.5-1.5B-Instruct",
    "Qwen/Qwen2.5-3B-Instruct",
    "Qwen/Qwen2.5-7B-Instruct",
)
GIB = 1024**3


@dataclass(frozen=True)
class QwenModel:
    """A local causal-LM folder with a chat template, and what it needs in memory."""

    path: Path
    name: str
    params: int
    weight_bytes: int
    kv_per_token: int  # cached key/value elements per token
    source: str  # "folder" | "hf-cache"

    def memory_bytes(self, device: str = "cpu", rows: int = 32, tokens: int = 768) -> int:
        """Rough peak for one batched generate: weights in the load dtype, KV cache, some slack."""
        per_value = 4 if not str(device).startswith("cuda") else 2
        kv = rows * tokens * self.kv_per_token * per_value
        return int(self.params * per_value * 1.1 + kv + GIB // 2)

    @property
    def label(self) -> str:
        size = f"{self.params / 1e9:.2f}B" if self.params >= 1e8 else f"{self.params / 1e6:.2f}M"
        return f"{self.name} ({size} parameters)"


_WEIGHTS = (".safetensors", ".bin")


def _read_json(path: Path) -> dict:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def estimate_params(config: dict) -> int | None:
    """Parameter count of a Llama/Qwen-style decoder from config.json, or None if fields are missing."""
    try:
        hidden = int(config["hidden_size"])
        layers = int(config["num_hidden_layers"])
        heads = int(config["num_attention_heads"])
        inter = int(config["intermediate_size"])
        vocab = int(config["vocab_size"])
    except (KeyError, TypeError, ValueError):
        return None
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    attn = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2 + (heads + 2 * kv_heads) * head_dim
    per_layer = attn + 3 * hidden * inter + 2 * hidden
    embed = vocab * hidden * (1 if config.get("tie_word_embeddings", False) else 2)
    return embed + layers * per_layer + hidden


def _weight_files(folder: Path) -> list[Path]:
    """Weight files, or [] when a sharded download is incomplete."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            try:
                shards = set(_read_json(index).get("weight_map", {}).values())
            except (OSError, ValueError):
                return []
            files = [folder / s for s in sorted(shards)]
            return files if files and all(f.is_file() for f in files) else []
    return [p for p in sorted(folder.iterdir()) if p.suffix in _WEIGHTS and p.is_file() and not p.name.startswith(".")]


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    try:
        return bool(_read_json(folder / "tokenizer_config.json").get("chat_template"))
    except (OSError, ValueError):
        return False


def inspect_qwen_folder(path: str | Path, source: str = "folder", name: str | None = None) -> QwenModel:
    """Check one folder is a usable chat causal LM; raise EnhanceError saying what is missing."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise EnhanceError(f"{folder}: not a folder")
    try:
        config = _read_json(folder / "config.json")
    except FileNotFoundError:
        raise EnhanceError(f"{folder}: no config.json (not a transformers model folder)") from None
    except (OSError, ValueError) as exc:
        raise EnhanceError(f"{folder}: cannot read config.json: {exc}") from None
    archs = config.get("architectures") or []
    if not any(str(a).endswith("ForCausalLM") for a in archs):
        raise EnhanceError(f"{folder}: config.json names no causal language model (architectures: {archs})")
    if not any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        raise EnhanceError(f"{folder}: no tokenizer files")
    if not _has_chat_template(folder):
        raise EnhanceError(f"{folder}: the tokenizer has no chat template (use an -Instruct model)")
    weights = _weight_files(folder)
    if not weights:
        raise EnhanceError(f"{folder}: no weights, or an incomplete download (missing shards)")
    weight_bytes = sum(f.stat().st_size for f in weights)
    params = estimate_params(config)
    if params is None:  # unknown layout: weights on disk, at the precision they were saved in
        stored = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
        params = weight_bytes // (4 if "32" in stored else 2)
    hidden = int(config.get("hidden_size") or 0)
    heads = int(config.get("num_attention_heads") or 1)
    head_dim = int(config.get("head_dim") or (hidden // heads if hidden else 0))
    kv_heads = int(config.get("num_key_value_heads") or heads)
    kv = 2 * int(config.get("num_hidden_layers") or 0) * kv_heads * head_dim
    return QwenModel(path=folder, name=name or folder.name, params=int(params), weight_bytes=weight_bytes,
                     kv_per_token=kv, source=source)


def default_hub_cache() -> Path:
    """The Hugging Face hub cache, as huggingface_hub resolves it (without importing it)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def qwen_search_dirs(models_dir: str | Path | None = None) -> list[Path]:
    """Folders that hold Qwen model folders: <models>/wan/qwen and <models>/LLM."""
    wan = Path(models_dir).expanduser() if models_dir else default_models_dir()
    return [wan / "qwen", wan.parent / "LLM", wan / "LLM"]


def _candidates(root: Path) -> list[Path]:
    if (root / "config.json").is_file():
        return [root]
    if not root.is_dir():
        return []
    found = []
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (child / "config.json").is_file():
            found.append(child)
        else:  # one more level: LLM/Qwen/Qwen2.5-3B-Instruct
            found += [g for g in sorted(child.iterdir()) if g.is_dir() and (g / "config.json").is_file()]
    return found


def scan_hub_cache(hub_cache: str | Path | None = None) -> list[QwenModel]:
    """Qwen2.5 instruct models already in the Hugging Face cache (newest complete snapshot of each)."""
    root = Path(hub_cache).expanduser() if hub_cache else default_hub_cache()
    found: list[QwenModel] = []
    if not root.is_dir():
        return found
    for repo in sorted(root.glob("models--Qwen--Qwen2.5-*-Instruct")):
        repo_id = repo.name[len("models--"):].replace("--", "/", 1)
        snapshots = sorted((repo / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime, reverse=True)
        for snap in snapshots:
            try:
                found.append(inspect_qwen_folder(snap, source="hf-cache", name=repo_id))
                break
            except (EnhanceError, OSError) as exc:
                log.debug("skipping %s: %s", snap, exc)
    return found


def find_qwen_models(models_dir: str | Path | None = None, hub_cache: str | Path | None = None,
                     include_hub_cache: bool = True) -> list[QwenModel]:
    """Every usable model in the models folders and the hub cache, largest first; broken ones are logged."""
    found: dict[Path, QwenModel] = {}
    for root in qwen_search_dirs(models_dir):
        for folder in _candidates(root):
            try:
                model = inspect_qwen_folder(folder)
            except (EnhanceError, OSError) as exc:
                log.info("skipping %s", exc)
                continue
            found.setdefault(folder.resolve(), model)
    if include_hub_cache:
        for model in scan_hub_cache(hub_cache):
            found.setdefault(model.path.resolve(), model)
    return sorted(found.values(), key=lambda m: (-m.params, m.name))


def select_qwen(models: Sequence[QwenModel], free_bytes: int | None, device: str = "cpu") -> QwenModel | None:
    """The largest model whose estimated peak fits in free memory; None if none fits.

    With free memory unknown, the smallest: a slow small model beats an out-of-memory kill.
    """
    if not models:
        return None
    if free_bytes is None:
        return min(models, key=lambda m: m.params)
    fitting = [m for m in models if m.memory_bytes(device) <= free_bytes]
    return max(fitting, key=lambda m: m.params) if fitting else None


def free_memory_bytes(device: str) -> int | None:
    """Free VRAM on a CUDA device, available RAM otherwise (None if it cannot be told)."""
    if str(device).startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def resolve_qwen(choice: str | None, models_dir: str | Path | None, device: str,
                 hub_cache: str | Path | None = None) -> QwenModel:
    """The model to use: an explicit folder, a name among the found models, or the largest that fits."""
    if choice and Path(choice).expanduser().is_dir():
        return inspect_qwen_folder(choice)
    models = find_qwen_models(models_dir, hub_cache)
    where = ", ".join(str(d) for d in qwen_search_dirs(models_dir)[:2]) + f", {Path(hub_cache or default_hub_cache())}"
    if choice:
        for model in models:
            if choice.lower() in (model.name.lower(), model.path.name.lower()):
                return model
        matches = [m for m in models if choice.lower() in m.name.lower()]
        if len(matches) == 1:
            return matches[0]
        found = ", ".join(m.name for m in models) or "none"
        raise EnhanceError(f"--qwen {choice!r}: not a folder, and no single found model matches it (found: {found})")
    if not models:
        raise EnhanceError(
            f"no Qwen instruct model found (looked in {where}); put one there, e.g. with "
            f"`deforum-wan qwen download {QWEN_REPOS[0]}`, or pass --qwen FOLDER"
        )
    free = free_memory_bytes(device)
    chosen = select_qwen(models, free, device)
    if chosen is None:
        smallest = min(models, key=lambda m: m.params)
        raise EnhanceError(
            f"no Qwen model fits in {free / GIB:.1f} GiB free on {device} (smallest: {smallest.label} needs about "
            f"{smallest.memory_bytes(device) / GIB:.1f} GiB); pass --qwen to force one"
        )
    return chosen


def model_identity(model: QwenModel) -> str:
    """Resolved path + hash of config.json: a re-download or a different model gets new cache entries."""
    config = (model.path / "config.json").read_bytes()
    return f"{model.path.resolve()}#{hashlib.sha256(config).hexdigest()[:16]}"


def download_qwen(repo_id: str, target: str | Path | None = None) -> Path:
    """Download `repo_id` (exactly, e.g. Qwen/Qwen2.5-3B-Instruct) into target/<name>; the only download here.

    target defaults to <models>/wan/qwen. Returns the model folder.
    """
    if not isinstance(repo_id, str) or not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", repo_id):
        raise EnhanceError(f"give the exact Hugging Face repo id, such as {QWEN_REPOS[2]} "
                           f"(known: {', '.join(QWEN_REPOS)}); got {repo_id!r}")
    root = Path(target).expanduser() if target else default_models_dir() / "qwen"
    dest = root / repo_id.split("/", 1)[1]
    from huggingface_hub import snapshot_download

    snapshot_download(repo_id=repo_id, local_dir=str(dest),
                      allow_patterns=["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model", "*.tiktoken"])
    inspect_qwen_folder(dest)
    return dest
