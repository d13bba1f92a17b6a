"""Prompt enhancement: a local Qwen instruct model rewrites each clip's prompt for Wan.

Wan was trained on long, concrete captions; short Deforum prompts render flatter.
A small local instruct model expands them, but it must never get in the way of a
render: it runs once per job, before the video model loads, with every clip in one
batched greedy `generate` call, and is freed right after. Its output is cleaned
(preambles, quotes, think blocks, markdown, length) and checked (the camera words
must survive; empty or garbage text falls back to the original prompt). Raw outputs
are cached on disk, keyed by model, system prompt version, language and inputs,
so a re-render makes no model call at all. Any failure leaves the original
prompts in place and says why.

Nothing is downloaded unless the user calls `download_qwen` with an exact repo id.
This module imports no torch/transformers at import time: the web UI loads it.
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
import time
import unicodedata
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from ..core.plan import ClipPlan
    from ..core.settings import DeforumSettings

log = logging.getLogger(__name__)

EventCallback = Callable[[dict], None]

# Bump when a system prompt or the user-message layout changes: it is part of the cache key.
SYSTEM_PROMPT_VERSION = "1"
LANGUAGES = ("en", "zh")
QWEN_REPOS = (
    "Qwen/Qwen2.5-0.5B-Instruct",
    "Qwen/Qwen2.5-1.5B-Instruct",
    "Qwen/Qwen2.5-3B-Instruct",
    "Qwen/Qwen2.5-7B-Instruct",
)
MAX_WORDS = 100  # length cap; a CJK character counts as 2/3 of a word (150 characters ~ 100 words)
MIN_WORDS = 8  # fewer is not an enhancement, whatever it is
DEFAULT_MAX_NEW_TOKENS = 256
DEFAULT_TIMEOUT_SECONDS = 600.0
GIB = 1024**3

SYSTEM_PROMPTS = {
    "en": (
        "You write prompts for a text-to-video model. Rewrite the user's scene into one vivid video prompt.\n"
        "Rules:\n"
        "1. Keep the main subject and everything the user asks for. Copy any text in quotes exactly, quotes included.\n"
        "2. Add concrete visual detail: appearance, setting, colours, lighting, atmosphere and visual style.\n"
        "3. Describe motion in the scene with simple verbs.\n"
        "4. The user gives a camera movement. Include it word for word, unchanged.\n"
        "5. If a style is given, apply it as strongly as asked.\n"
        "6. Write 60 to 100 words of English in one paragraph of plain sentences.\n"
        "7. Output only the prompt: no title, no preamble, no quotes around it, no notes."
    ),
    "zh": (
        "你为文生视频模型撰写提示词。把用户描述的画面改写成一段生动的视频提示词。\n"
        "规则：\n"
        "1. 保留主体和用户要求的一切内容。引号中的文字必须原样照抄，包括引号。\n"
        "2. 补充具体的视觉细节：外观、场景、色彩、光线、氛围和画面风格。\n"
        "3. 用简单的动词描述画面中的动作。\n"
        "4. 用户会给出镜头运动，必须一字不差地原样写入。\n"
        "5. 如果给出风格，按要求的强度融入。\n"
        "6. 用中文写一段 90 到 150 字的连贯文字。\n"
        "7. 只输出提示词本身：不要标题、不要开场白、不要给整段加引号、不要任何说明。"
    ),
}


class EnhanceError(ValueError):
    """The enhancer cannot run as asked (no model, bad option); the message says what to do."""


# ---------------------------------------------------------------- options and records


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
                       no_cache=bool(opts.no_cache))


@dataclass(frozen=True)
class EnhanceRequest:
    """One row for the model: identical requests share a row and a cache entry."""

    prompt: str
    movement: str = ""
    style: str = ""
    style_strength: float = 0.5
    language: str = "en"


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


# ---------------------------------------------------------------- finding models (JSON only, no torch)

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
    from ..core.specs import default_models_dir

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
            f"`python -m deforum_wan.enhance.enhance download {QWEN_REPOS[0]}`, or pass --qwen FOLDER"
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


# ---------------------------------------------------------------- prompts


def _strength_words(strength: float, language: str) -> str:
    en = ("lightly", "clearly", "strongly")
    zh = ("轻微地", "明显地", "强烈地")
    words = zh if language == "zh" else en
    return words[0] if strength < 0.34 else words[1] if strength < 0.67 else words[2]


def system_prompt(language: str = "en") -> str:
    """Our system prompt for the target language (versioned by SYSTEM_PROMPT_VERSION)."""
    if language not in SYSTEM_PROMPTS:
        raise EnhanceError(f"target language: expected one of {', '.join(LANGUAGES)}, got {language!r}")
    return SYSTEM_PROMPTS[language]


def user_message(request: EnhanceRequest) -> str:
    """The per-clip message: scene, camera words to keep verbatim, optional style."""
    zh = request.language == "zh"
    lines = [("画面：" if zh else "Scene: ") + request.prompt.strip()]
    if request.movement:
        lines.append(("镜头运动（原样保留）：" if zh else "Camera movement (include word for word): ") + request.movement)
    if request.style and request.style_strength > 0:
        how = _strength_words(request.style_strength, request.language)
        lines.append((f"风格（{how}融入）：" if zh else f"Style (apply {how}): ") + request.style)
    return "\n".join(lines)


def chat_messages(request: EnhanceRequest) -> list[dict[str, str]]:
    return [{"role": "system", "content": system_prompt(request.language)},
            {"role": "user", "content": user_message(request)}]


# ---------------------------------------------------------------- cleaning

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_UNIT = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\s\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_PREAMBLE = re.compile(
    r"^\s*(?:(?:sure|certainly|of course|okay|ok|absolutely|alright|here you go)(?:\s+thing)?\s*[.!:,]\s*"
    r"|here(?:'s| is| are)\b[^:\n]{0,80}[:：]\s*"
    r"|(?:below is|this is)\b[^:\n]{0,80}[:：]\s*"
    r"|(?:the\s+)?(?:enhanced|rewritten|improved|revised|final|new|expanded|video)?\s*prompt\s*(?:is)?\s*[:：]\s*"
    r"|(?:scene|output|answer|result)\s*[:：]\s*"
    r"|(?:好的|当然|没问题)[^。：:\n]*[。，,：:!！]\s*"
    r"|(?:以下是|下面是|这是)[^：:\n]{0,40}[：:]\s*"
    r"|(?:改写后的|优化后的|增强后的|扩写后的)?(?:视频)?提示词\s*[：:]\s*)",
    re.I,
)
_TRAILER = re.compile(
    r"(?:^|(?<=[.!?。！？)]))\s*[(（]?\s*(?:note\s*[:：]|notes\s*[:：]|i hope\b|let me know\b|this prompt\b|"
    r"word count\b|\(?\d+\s+words\)?\s*$|注[：:]|说明[：:]|希望)",
    re.I | re.M,
)
_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’", "「": "」", "『": "』", "«": "»"}
_QUOTED = re.compile(r"\"([^\"]+)\"|“([^”]+)”|「([^」]+)」|『([^』]+)』|(?<!\w)'([^']+)'(?!\w)")
_REPEAT = re.compile(r"(.{2,30}?)\1{3,}", re.S)
_SENTENCE_END = re.compile(r"[.!?](?=[\s\"'”’)]|$)|[。！？]")


def _units(text: str) -> float:
    return sum(2 / 3 if _CJK.fullmatch(u) else 1 for u in _UNIT.findall(text))


def _norm(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(re.sub(r"[\W_]+", " ", text).split())


def _strip_think(text: str) -> str:
    text = re.sub(r"<think>.*?</think>", " ", text, flags=re.S | re.I)
    text = re.split(r"</think>", text, flags=re.I)[-1]  # the opening tag was part of the template
    return re.split(r"<think>", text, flags=re.I)[0]  # never closed: no answer came


def _strip_markdown(text: str) -> str:
    lines = []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("```") or re.fullmatch(r"[-*_=]{3,}", s):
            continue
        if s.startswith("#"):  # a heading is a title, not prompt text
            continue
        s = re.sub(r"^(?:[-*•+]|\d+[.)])\s+", "", s)
        s = re.sub(r"^>\s*", "", s)
        lines.append(s)
    text = "\n".join(lines)
    text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"(\*\*|__)(.+?)\1", r"\2", text)
    text = re.sub(r"(?<![\w*])\*(?!\s)([^*\n]+?)\*(?!\w)", r"\1", text)
    return text.replace("`", "")


def _strip_wrapping_quotes(text: str) -> str:
    text = text.strip()
    while len(text) >= 2 and text[0] in _QUOTES:
        close = _QUOTES[text[0]]
        body = text.rstrip(".。")
        if body.endswith(close) and len(body) >= 2:
            inner = body[1:-1]
            if text[0] == close and text[0] in inner:  # 'a' ... 'b': inner quotes, not a wrapper
                break
            if text[0] != close and (text[0] in inner or close in inner):
                break
            text = (inner + text[len(body):]).strip()
        else:
            break
    return text


def _strip_preambles(text: str) -> str:
    for _ in range(4):
        stripped = _PREAMBLE.sub("", text, count=1).lstrip()
        stripped = _strip_wrapping_quotes(stripped)
        if stripped == text:
            break
        text = stripped
    return text


def _truncate(text: str, max_units: float = MAX_WORDS) -> str:
    if _units(text) <= max_units:
        return text
    total, end = 0.0, 0
    for m in _UNIT.finditer(text):
        total += 2 / 3 if _CJK.fullmatch(m.group()) else 1
        if total > max_units:
            break
        end = m.end()
    prefix = text[:end]
    ends = [m.end() for m in _SENTENCE_END.finditer(prefix)]
    if ends and ends[-1] >= len(prefix) * 0.4:
        return prefix[: ends[-1]].strip()
    commas = [m.start() for m in re.finditer(r"[,;，；、]", prefix)]
    cut = prefix[: commas[-1]] if commas and commas[-1] >= len(prefix) * 0.4 else prefix
    return cut.rstrip(" ,;，；、") + ("。" if _CJK.search(cut[-1:] or "") else ".")


def _garbage(text: str) -> str | None:
    """Why `text` is not a prompt, or None."""
    if not text.strip():
        return "empty output"
    chars = [c for c in text if not c.isspace()]
    letters = sum(c.isalpha() for c in chars)
    if letters == 0:
        return "no letters in the output"
    if letters / len(chars) < 0.6:
        return "output is mostly not text"
    if _REPEAT.search(text):
        return "output repeats itself"
    words = _norm(text).split()
    if len(words) >= 20 and len(set(words)) / len(words) < 0.35:
        return "output repeats itself"
    if _units(text) < MIN_WORDS:
        return "output too short"
    return None


def _quoted_texts(text: str) -> list[str]:
    return [next(g for g in m.groups() if g) for m in _QUOTED.finditer(text)]


def _append_movement(text: str, movement: str) -> str:
    text = text.rstrip()
    if _CJK.search(text[-1:] or "") or text.endswith(("。", "！", "？")):
        return f"{text.rstrip('。！？，,')}，{movement}。"
    return f"{text.rstrip(' .!?,;')}, {movement}."


def clean_text(text: str, movement: str, original: str) -> tuple[str, str | None, tuple[str, ...]]:
    """clean_output plus notes on what was repaired (e.g. camera words appended)."""
    notes: list[str] = []
    cleaned = _strip_think(text or "")
    cleaned = cleaned.replace("<|im_end|>", " ").replace("<|endoftext|>", " ")
    cleaned = _strip_markdown(cleaned)
    cleaned = _strip_preambles(cleaned.strip())
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", cleaned) if p.strip()]
    # A label on its own line ("Prompt:") was taken by the preamble pass; a second paragraph is
    # usually commentary, unless the first is too short to be the prompt.
    if len(paragraphs) > 1 and _units(paragraphs[0]) >= MIN_WORDS * 3:
        cleaned = paragraphs[0]
    cleaned = " ".join(cleaned.split())
    trailer = _TRAILER.search(cleaned)
    if trailer and trailer.start() > 0:
        cleaned = cleaned[: trailer.start()].strip()
    cleaned = _strip_wrapping_quotes(cleaned)
    reason = _garbage(cleaned)
    if reason:
        return original, reason, ()
    for quoted in _quoted_texts(original):
        if _norm(quoted) and _norm(quoted) not in _norm(cleaned):
            return original, f"output dropped the quoted text {quoted!r}", ()
    cleaned = _truncate(cleaned)
    if movement and _norm(movement) not in _norm(cleaned):
        cleaned = _append_movement(cleaned, movement)
        notes.append("camera words appended")
    return cleaned, None, tuple(notes)


def clean_output(text: str, movement: str, original: str) -> tuple[str, str | None]:
    """Model output -> (prompt, None), or (original, reason) when the output is unusable.

    Drops think blocks, markdown, preambles, wrapping quotes and trailing notes; caps the
    length at a sentence boundary; appends the camera words if the model lost them.
    """
    cleaned, reason, _notes = clean_text(text, movement, original)
    return cleaned, reason


# ---------------------------------------------------------------- disk cache


def default_cache_dir() -> Path:
    """$DEFORUM_WAN_CACHE/enhance, else $XDG_CACHE_HOME or ~/.cache, /deforum-wan/enhance."""
    env = os.environ.get("DEFORUM_WAN_CACHE")
    if env:
        return Path(env).expanduser() / "enhance"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "deforum-wan" / "enhance"


class EnhanceCache:
    """Raw model outputs, one small JSON file per input; cleaning runs again on every read."""

    def __init__(self, folder: str | Path | None = None):
        self.folder = Path(folder).expanduser() if folder else default_cache_dir()

    @staticmethod
    def key(model_id: str, request: EnhanceRequest, max_new_tokens: int) -> str:
        data = {"model": model_id, "system_prompt": SYSTEM_PROMPT_VERSION, "language": request.language,
                "prompt": request.prompt, "movement": request.movement, "style": request.style,
                "style_strength": round(request.style_strength, 3) if request.style else None,
                "max_new_tokens": max_new_tokens}
        return hashlib.sha256(json.dumps(data, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        try:
            data = json.loads(self._path(key).read_text(encoding="utf-8"))
            raw = data["raw"]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # missing or damaged: regenerate
        return raw if isinstance(raw, str) else None

    def put(self, key: str, raw: str, meta: dict | None = None) -> None:
        """Atomic: a temp file in the same folder, then os.replace."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({**(meta or {}), "raw": raw, "created": time.time()}, ensure_ascii=False, indent=1)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(payload)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


# ---------------------------------------------------------------- the model


class EnhanceTimeout(RuntimeError):
    pass


def _dtype_kwarg() -> str:
    """transformers 4.56 renamed from_pretrained's torch_dtype to dtype."""
    import transformers

    try:
        major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    except ValueError:
        return "dtype"
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


class QwenEnhancer:
    """Loads a chat model once; `enhance_batch` rewrites many prompts in one generate call; `close` frees it."""

    def __init__(self, model: QwenModel | str | Path, device: str | None = None,
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, timeout_seconds: float | None = DEFAULT_TIMEOUT_SECONDS):
        self.info = model if isinstance(model, QwenModel) else inspect_qwen_folder(model)
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.timeout_seconds = timeout_seconds
        self.model: Any = None
        self.tokenizer: Any = None
        self.generate_calls = 0

    def __enter__(self) -> "QwenEnhancer":
        self.load()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def load(self) -> None:
        if self.model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.device is None:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        on_cuda = str(self.device).startswith("cuda")
        dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if on_cuda else torch.float32
        path = str(self.info.path)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        tokenizer.padding_side = "left"  # generation continues at the right edge of every row
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, **{_dtype_kwarg(): dtype})
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer

    def _deadline(self) -> Any:
        import torch
        from transformers import StoppingCriteria

        timeout = self.timeout_seconds

        class Deadline(StoppingCriteria):
            """Stops every row once wall time runs out, and remembers that it did."""

            def __init__(self) -> None:
                self.start = time.monotonic()
                self.fired = False

            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                self.fired = self.fired or (timeout is not None and time.monotonic() - self.start > timeout)
                return torch.full((input_ids.shape[0],), self.fired, dtype=torch.bool, device=input_ids.device)

        return Deadline()

    def generate(self, requests: Sequence[EnhanceRequest]) -> list[str]:
        """Raw completions for `requests`, in order, from ONE batched greedy generate call."""
        if not requests:
            return []
        import torch
        from transformers import StoppingCriteriaList

        self.load()
        tok = self.tokenizer
        texts = []
        for request in requests:
            messages = chat_messages(request)
            try:  # Qwen3-style templates think unless told not to; others ignore the flag
                texts.append(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                     enable_thinking=False))
            except TypeError:
                texts.append(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        deadline = self._deadline()
        self.generate_calls += 1
        with torch.inference_mode():
            out = self.model.generate(
                **batch, max_new_tokens=self.max_new_tokens, do_sample=False, temperature=None, top_p=None,
                top_k=None, pad_token_id=tok.pad_token_id, stopping_criteria=StoppingCriteriaList([deadline]),
            )
        if deadline.fired:
            raise EnhanceTimeout(f"timed out after {self.timeout_seconds:g} s")
        new = out[:, batch["input_ids"].shape[1]:]
        return [str(t) for t in tok.batch_decode(new, skip_special_tokens=True)]

    def enhance_batch(self, requests: Sequence[EnhanceRequest]) -> list[EnhanceResult]:
        """Generate and clean; errors propagate (the callers that must not fail catch them)."""
        raws = self.generate(requests)
        return [_result(r, raw, "model") for r, raw in zip(requests, raws)]

    def close(self) -> None:
        """Free the weights now, so the video model has the memory."""
        had_model = self.model is not None
        self.model = None
        self.tokenizer = None
        gc.collect()
        if had_model:
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except Exception as exc:  # pragma: no cover - freeing must never fail a render
                log.debug("could not empty the CUDA cache: %s", exc)


def _result(request: EnhanceRequest, raw: str, source: str) -> EnhanceResult:
    text, reason, notes = clean_text(raw, request.movement, request.prompt)
    return EnhanceResult(request=request, text=text, enhanced=reason is None, source=source, reason=reason,
                         notes=notes, raw=raw)


# ---------------------------------------------------------------- orchestration


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def enhance_requests(requests: Sequence[EnhanceRequest], options: EnhanceOptions,
                     on_event: EventCallback | None = None) -> tuple[list[EnhanceResult], QwenModel]:
    """Results for `requests` in order: cache first, then one generate call for the unique rest.

    Raises EnhanceError only when no model can be chosen; a model that fails or times out
    gives fallback results (source "none") and a warning event.
    """
    emit = on_event or (lambda event: None)

    def status(message: str) -> None:
        emit({"type": "status", "phase": "enhancing", "message": message})

    device = options.device or _default_device()
    model = resolve_qwen(options.qwen, options.models_dir, device, options.hub_cache)
    model_id = model_identity(model)
    cache = None if options.no_cache else EnhanceCache(options.cache_dir)
    unique = list(dict.fromkeys(requests))
    raws: dict[EnhanceRequest, tuple[str, str]] = {}  # request -> (raw, source)
    keys = {r: EnhanceCache.key(model_id, r, options.max_new_tokens) for r in unique}
    if cache is not None:
        for r in unique:
            raw = cache.get(keys[r])
            if raw is not None:
                raws[r] = (raw, "cache")
    missing = [r for r in unique if r not in raws]
    failure: str | None = None
    status(f"{len(requests)} prompts, {len(unique)} unique, {len(unique) - len(missing)} from cache"
           + (f"; rewriting {len(missing)} with {model.label} on {device}" if missing else ""))
    if missing:
        enhancer = QwenEnhancer(model, device=device, max_new_tokens=options.max_new_tokens,
                                timeout_seconds=options.timeout_seconds)
        started = time.perf_counter()
        try:
            outputs = enhancer.generate(missing)
        except EnhanceTimeout as exc:
            failure = str(exc)
        except Exception as exc:  # a broken model must not stop the render
            log.debug("enhancer failed", exc_info=True)
            failure = f"the model failed: {type(exc).__name__}: {exc}"
        else:
            for r, raw in zip(missing, outputs):
                raws[r] = (raw, "model")
                if cache is not None:
                    try:
                        cache.put(keys[r], raw, {"model": model_id, "request": asdict(r),
                                                 "system_prompt_version": SYSTEM_PROMPT_VERSION})
                    except OSError as exc:
                        log.warning("cannot write the prompt cache in %s: %s", cache.folder, exc)
        finally:
            enhancer.close()
        if failure:
            emit({"type": "warning", "message": f"prompt enhancer: {failure}; original prompts kept"})
        else:
            status(f"rewrote {len(missing)} prompts in {time.perf_counter() - started:.1f} s; model freed")
    results = []
    for r in requests:
        if r in raws:
            raw, source = raws[r]
            results.append(_result(r, raw, source))
        else:
            results.append(EnhanceResult(request=r, text=r.prompt, enhanced=False, source="none", reason=failure))
    return results, model


def _requests_for(clips: Sequence[Any], opts: EnhanceOptions) -> list[EnhanceRequest]:
    return [EnhanceRequest(prompt=c.prompt, movement=c.movement, style=opts.style,
                           style_strength=opts.style_strength if opts.style else 0.0,
                           language=opts.target_language) for c in clips]


def enhance_plan(plan: ClipPlan, settings: DeforumSettings, options: dict, on_event: EventCallback) -> ClipPlan:
    """The plan with enhanced prompts for the clips the model rewrote well; never raises.

    Called before the video model loads. On any failure it emits warning events and
    returns the plan unchanged (clips keep their prompt + camera words).
    """
    emit = on_event or (lambda event: None)
    try:
        opts = EnhanceOptions.from_dict(options)
        clips = [c for c in plan.clips if c.prompt.strip()]
        if not clips:
            return plan
        results, _model = enhance_requests(_requests_for(clips, opts), opts, emit)
        prompts = {c.index: r.text for c, r in zip(clips, results) if r.enhanced}
        by_reason: dict[str, list[int]] = {}
        for c, r in zip(clips, results):
            if not r.enhanced and r.source != "none" and r.reason:
                by_reason.setdefault(r.reason, []).append(c.index)
        for reason, indices in by_reason.items():
            which = ", ".join(str(i) for i in indices)
            emit({"type": "warning", "message": f"prompt enhancer: {reason} for clip(s) {which}; original prompt kept"})
        cached = sum(r.source == "cache" for r in results)
        emit({"type": "status", "phase": "enhancing",
              "message": f"enhanced {len(prompts)} of {len(plan.clips)} clip prompts ({cached} from cache)"})
        return plan.with_prompts(prompts)
    except Exception as exc:  # the render goes on whatever happens here
        log.debug("enhance_plan failed", exc_info=True)
        emit({"type": "warning", "message": f"prompt enhancer skipped: {exc}"})
        return plan


# ---------------------------------------------------------------- command line


def format_results(plan: ClipPlan, results: Sequence[EnhanceResult], width: int = 100) -> str:
    """Before/after per clip, as the `enhance` command prints it."""
    import textwrap

    def wrap(label: str, text: str) -> str:
        return textwrap.fill(text, width, initial_indent=f"  {label:<10}", subsequent_indent=" " * 12)

    lines = []
    for clip, r in zip(plan.clips, results):
        if r.enhanced:
            how = "enhanced" + (f" ({'; '.join(r.notes)})" if r.notes else "")
        else:
            how = f"kept original: {r.reason}"
        how += " [from cache]" if r.source == "cache" else ""
        lines.append(f"clip {clip.index}  frames {clip.output_start}-{clip.output_end - 1} "
                     f"({clip.output_frames})  {how}")
        lines.append(wrap("prompt", clip.prompt or "(none)"))
        lines.append(wrap("movement", clip.movement or "(none)"))
        lines.append(wrap("renders", r.text if r.enhanced else clip.render_prompt))
        lines.append("")
    return "\n".join(lines).rstrip()


def run_enhance_command(args: argparse.Namespace) -> int:
    """`deforum-wan enhance SETTINGS`: plan the clips, rewrite their prompts, show before and after."""
    from ..cli import model_spec_for, plan_options
    from ..core.plan import plan_clips
    from ..core.seeds import resolve_seed
    from ..core.settings import load_settings

    settings = load_settings(args.settings)
    seed = resolve_seed(args.seed if args.seed is not None else settings.seed)
    plan = plan_clips(settings, model_spec_for(args.model), plan_options(args, seed))
    opts = EnhanceOptions.from_dict({
        "qwen": args.qwen, "style": args.style, "style_strength": args.style_strength,
        "target_language": args.target_language, "no_cache": args.no_cache,
        "models_dir": getattr(args, "models_dir", None), "cache_dir": getattr(args, "cache_dir", None),
        "timeout_seconds": getattr(args, "timeout_seconds", None),
        "max_new_tokens": getattr(args, "max_new_tokens", None),
    })

    def on_event(event: dict) -> None:
        print(f"{event['type']}: {event['message']}" if event["type"] == "warning" else event["message"],
              file=sys.stderr)

    results, model = enhance_requests(_requests_for(plan.clips, opts), opts, on_event)
    if args.json:
        rows = [{"clip": c.index, "frames": [c.output_start, c.output_end], "prompt": c.prompt,
                 "movement": c.movement, "enhanced": r.text if r.enhanced else None,
                 "render_prompt": r.text if r.enhanced else c.render_prompt, "source": r.source,
                 "fallback_reason": r.reason, "notes": list(r.notes)} for c, r in zip(plan.clips, results)]
        print(json.dumps({"model": str(model.path), "target_language": opts.target_language, "clips": rows},
                         indent=2, ensure_ascii=False))
    else:
        print(f"model: {model.label} at {model.path}")
        print(format_results(plan, results))
    return 0


def download_qwen(repo_id: str, target: str | Path | None = None) -> Path:
    """Download `repo_id` (exactly, e.g. Qwen/Qwen2.5-3B-Instruct) into target/<name>; the only download here.

    target defaults to <models>/wan/qwen. Returns the model folder.
    """
    if not isinstance(repo_id, str) or not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", repo_id):
        raise EnhanceError(f"give the exact Hugging Face repo id, such as {QWEN_REPOS[2]} "
                           f"(known: {', '.join(QWEN_REPOS)}); got {repo_id!r}")
    from ..core.specs import default_models_dir

    root = Path(target).expanduser() if target else default_models_dir() / "qwen"
    dest = root / repo_id.split("/", 1)[1]
    from huggingface_hub import snapshot_download

    snapshot_download(repo_id=repo_id, local_dir=str(dest),
                      allow_patterns=["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model", "*.tiktoken"])
    inspect_qwen_folder(dest)
    return dest
