"""LoRAs for Wan: find them, read their headers, check they fit a model, load them through diffusers.

LoRAs come from Deforum/A1111 `<lora:name:weight>` prompt tags (`Clip.loras`) and
the user's list (CLI `--lora NAME_OR_FILE[:WEIGHT[:WEIGHT_2]]`, the API's `loras`).
A name is the file's stem, as in A1111 (`lora_key`). A job:

1. `resolve_loras(requests, lora_dirs(models_dir, webui_dir), prompt_names)` finds
   each file (`find_lora`) and reads its safetensors header (`inspect_lora`);
2. `check_lora(info, read_transformer_config(model_dir))` refuses a LoRA for another
   base or in a layout diffusers cannot convert, before any model loads (json only);
3. `handle = apply_loras(pipes, resolved)` once: diffusers' `load_lora_weights`
   (peft) loads and converts each (diffusers/peft, kohya/musubi `lora_unet_`,
   ComfyUI/kijai `diffusion_model.`); Wan 2.2 A14B gets it in both experts
   (`weight` high-noise `transformer`, `weight_2` low-noise `transformer_2`);
4. per clip `handle.set_weights(clip_weights(clip.loras, handle.loras))`, and
   `handle.unload()` at the end: the pipelines are as loaded again.

Only `.safetensors` files are ever read: pickle files can run code when loaded.
torch, diffusers and peft are imported inside the functions that need them.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import os
import re
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

log = logging.getLogger(__name__)

ENV_LORA_DIRS = "DEFORUM_WAN_LORA_DIRS"
SUFFIX = ".safetensors"
_PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")
_MAX_HEADER = 100 * 2**20  # a safetensors header is json; real LoRAs have well under 1 MiB of it
_MAX_DEPTH = 8  # subfolders searched below a LoRA folder
_SIZES = {1536: "Wan 1.3B", 3072: "Wan 2.2 TI2V-5B", 5120: "Wan 14B/A14B"}
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


class LoraError(ValueError):
    """A LoRA cannot be used: the message names it and says why."""


@dataclass(frozen=True)
class LoraRequest:
    """One LoRA asked for: its name or file, its weight, and the low-noise expert's weight (A14B only)."""

    name: str
    weight: float = 1.0
    weight_2: float | None = None  # None: the same as weight

    @property
    def key(self) -> str:
        return lora_key(self.name)


@dataclass(frozen=True)
class LoraInfo:
    """What a LoRA file's header says: key layout, rank, blocks and the layers it changes."""

    path: Path
    format: str  # "diffusers" (peft, `transformer.`), "kohya" (musubi, `lora_unet_`), "comfyui" (`diffusion_model.`), "unknown"
    rank: int | None  # the largest rank of its layers
    blocks: tuple[int, ...]  # transformer blocks it touches
    hidden_size: int | None  # the model width it was trained for, from its attention layers
    modules: Mapping[str, tuple[int | None, int | None]]  # diffusers layer name -> (in, out) features
    shapes: Mapping[str, tuple[int, ...]]  # every tensor, as stored
    unknown: tuple[str, ...] = ()  # keys that map to no Wan layer
    incomplete: tuple[str, ...] = ()  # layers with only one of down/up
    has_alpha: bool = False
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class ResolvedLora:
    """A LoRA found on disk, with the weights it starts with (its own, or 0 when only prompts name it)."""

    name: str
    path: Path
    weight: float = 1.0
    weight_2: float | None = None
    info: LoraInfo | None = None

    @property
    def key(self) -> str:
        return lora_key(self.name)


def lora_key(name: str) -> str:
    """A LoRA's identity: its file name without folders and `.safetensors`, case-folded (A1111's rule)."""
    base = str(name).strip().replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"\.safetensors$", "", base, flags=re.IGNORECASE).casefold()


# -- where LoRAs live, and which one a name means ------------------------------------


def lora_dirs(models_dir: str | Path | None, webui_dir: str | Path | None = None) -> list[Path]:
    """Folders searched for LoRA names, first match wins: $DEFORUM_WAN_LORA_DIRS (os.pathsep-separated),
    `<models_dir>/loras` (models_dir is the Wan models folder, e.g. `<webui>/models/wan`) and the web
    UI's `models/Lora`. Missing folders are listed too, so an error can say where to put a file."""
    found = [Path(p.strip()).expanduser() for p in os.environ.get(ENV_LORA_DIRS, "").split(os.pathsep) if p.strip()]
    found += [Path(models_dir).expanduser() / "loras"] if models_dir else []
    found += [Path(webui_dir).expanduser() / "models" / "Lora"] if webui_dir else []
    unique: dict[str, Path] = {}
    for path in found:
        unique.setdefault(os.path.normcase(os.path.abspath(path)), path)
    return list(unique.values())


def parse_lora_arg(text: str) -> LoraRequest:
    """`NAME_OR_FILE[:WEIGHT[:WEIGHT_2]]` (e.g. `detail`, `detail:0.8`, `C:\\loras\\x.safetensors:0.8:0.5`)."""
    raw = str(text).strip()
    parts = raw.split(":")
    weights: list[float] = []
    while len(parts) > 1 and len(weights) < 2 and _NUMBER.fullmatch(parts[-1].strip()):
        weights.insert(0, float(parts.pop().strip()))
    name = ":".join(parts).strip()
    if not name:
        raise LoraError(f"LoRA {raw!r}: no name; expected NAME_OR_FILE[:WEIGHT[:WEIGHT_2]], e.g. detail:0.8")
    if ":" in name and not (_WINDOWS_DRIVE.match(name) and name.count(":") == 1):
        bad = name.rsplit(":", 1)[-1].strip() or "(empty)"
        if _NUMBER.fullmatch(bad):
            raise LoraError(f"LoRA {raw!r}: too many weights; expected NAME_OR_FILE[:WEIGHT[:WEIGHT_2]]")
        raise LoraError(f"LoRA {raw!r}: weight {bad!r} is not a number; expected NAME_OR_FILE[:WEIGHT[:WEIGHT_2]], "
                        "e.g. detail:0.8 or detail:0.8:0.5")
    return LoraRequest(name, weights[0] if weights else 1.0, weights[1] if len(weights) > 1 else None)


def _walk(folder: Path) -> Iterator[Path]:
    """Files below `folder`, sorted; links followed once (no loops), hidden folders skipped, _MAX_DEPTH deep."""
    seen: set[str] = set()
    for root, subdirs, files in os.walk(folder, followlinks=True):
        real, depth = os.path.realpath(root), len(Path(root).relative_to(folder).parts)
        keep = real not in seen and depth < _MAX_DEPTH
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".")) if keep else []
        if real not in seen:
            seen.add(real)
            yield from (Path(root) / f for f in sorted(files))


def find_lora(name_or_path: str | Path, dirs: Iterable[str | Path]) -> Path:
    """The `.safetensors` file meant by a path or a name (with or without `.safetensors`, any case,
    `sub/name` for a subfolder) found in `dirs`, first folder first; the error lists where it looked."""
    text = str(name_or_path).strip()
    if not text:
        raise LoraError("an empty LoRA name")
    path = Path(text).expanduser()
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise LoraError(f"LoRA {text!r}: only .safetensors files are loaded; {path.suffix} files are pickles, which "
                        "can run code when loaded (convert it to .safetensors)")
    absolute = path.is_absolute() or bool(_WINDOWS_DRIVE.match(text)) or text.startswith("~")
    if absolute or "/" in text or "\\" in text or path.suffix.lower() == SUFFIX:  # a path, maybe
        if path.is_file():
            if path.suffix.lower() != SUFFIX:
                raise LoraError(f"LoRA {text!r}: not a .safetensors file")
            return path.resolve()
        if path.is_dir():
            raise LoraError(f"LoRA {text!r} is a folder; give a .safetensors file in it")
        if absolute:
            raise LoraError(f"LoRA file {text!r} does not exist")
    want = re.sub(r"\.safetensors$", "", text.replace("\\", "/").strip("/"), flags=re.IGNORECASE).casefold()
    if not want:
        raise LoraError(f"LoRA {text!r}: no name")
    looked: list[str] = []
    pickles: list[Path] = []
    for folder in (Path(d).expanduser() for d in dirs):
        looked.append(str(folder) if folder.is_dir() else f"{folder} (missing)")
        if not folder.is_dir():
            continue
        exact: list[Path] = []
        by_stem: list[Path] = []
        for file in _walk(folder):
            rel = file.relative_to(folder).as_posix().casefold()
            stem, _, suffix = rel.rpartition(".")
            if "." + suffix == SUFFIX:
                if stem == want:
                    exact.append(file)
                elif "/" not in want and stem.rsplit("/", 1)[-1] == want:
                    by_stem.append(file)
            elif "." + suffix in _PICKLE_SUFFIXES and want in (stem, stem.rsplit("/", 1)[-1]):
                pickles.append(file)
        if exact or len(by_stem) == 1:
            return (exact or by_stem)[0]
        if by_stem:
            names = ", ".join(p.relative_to(folder).as_posix() for p in by_stem[:6])
            raise LoraError(f"LoRA {text!r} is ambiguous in {folder}: {names}; give the subfolder, e.g. "
                            f"{by_stem[0].relative_to(folder).with_suffix('').as_posix()}")
    hint = (f"; found {pickles[0]}, but only .safetensors files are loaded (pickles can run code)" if pickles
            else f"; put {want.rsplit('/', 1)[-1]}.safetensors in one of them or give the file's path")
    raise LoraError(f"LoRA {text!r} not found; looked in: {', '.join(looked) or 'no LoRA folders'}{hint}")


def resolve_loras(requests: Sequence[LoraRequest], dirs: Iterable[str | Path],
                  prompt_names: Iterable[str] = ()) -> list[ResolvedLora]:
    """Find and inspect the user's LoRAs, then those only prompts name (starting at weight 0)."""
    dirs = list(dirs)
    resolved: dict[str, ResolvedLora] = {}
    for request in requests:
        if request.key in resolved:
            raise LoraError(f"LoRA {request.name!r} is given twice (as {resolved[request.key].name!r} too)")
        path = find_lora(request.name, dirs)
        resolved[request.key] = ResolvedLora(request.name, path, request.weight, request.weight_2, inspect_lora(path))
    for name in prompt_names:
        if lora_key(name) in resolved:
            continue
        try:
            path = find_lora(name, dirs)
        except LoraError as exc:
            raise LoraError(f"{exc} (named in a prompt as <lora:{name}:...>)") from None
        resolved[lora_key(name)] = ResolvedLora(name, path, 0.0, None, inspect_lora(path))
    return list(resolved.values())


# -- the header: key layout, rank, blocks, shapes ------------------------------------


def read_header(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """A safetensors file's tensor table and `__metadata__`, from its json header alone."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            table = None
            if 0 < length <= min(_MAX_HEADER, os.fstat(f.fileno()).st_size - 8):
                table = json.loads(f.read(length).decode("utf-8"))
    except OSError as exc:
        raise LoraError(f"LoRA {path}: cannot read it: {exc}") from exc
    except ValueError:  # not utf-8, not json
        table = None
    if not isinstance(table, dict):
        raise LoraError(f"LoRA {path.name}: not a safetensors file (no json header)")
    metadata = table.pop("__metadata__", None) or {}
    return table, {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}


# Wan's own layer names (kohya/musubi and ComfyUI keys) -> diffusers' (what _convert_*_wan_lora_* map).
_ATTN = {"self_attn": "attn1", "cross_attn": "attn2"}
_PROJ = {"q": "to_q", "k": "to_k", "v": "to_v", "o": "to_out.0", "k_img": "add_k_proj", "v_img": "add_v_proj"}
_FFN = {"0": "ffn.net.0.proj", "2": "ffn.net.2"}
_TOP = {"time_projection.1": "condition_embedder.time_proj", "head.head": "proj_out",
        **{f"{n}_embedding.{i}": f"condition_embedder.{n}_embedder.linear_{j}" for n in ("text", "time")
           for i, j in (("0", 1), ("2", 2))},
        "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
        "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2"}
_ROLE = {"lora_A.weight": "A", "lora_down.weight": "A", "lora_B.weight": "B", "lora_up.weight": "B",
         "alpha": "alpha", "lora_B.bias": "bias", "diff_b": "bias", "diff": "diff"}
_SUFFIX_RE = r"(lora_A\.weight|lora_B\.weight|lora_down\.weight|lora_up\.weight|lora_B\.bias|alpha|diff_b|diff)"
_KOHYA_RE = re.compile(r"^lora_unet_blocks_(\d+)_(?:(self_attn|cross_attn)_(q|k|v|o|k_img|v_img)|ffn_(0|2))"
                       r"\.(lora_down\.weight|lora_up\.weight|alpha)$")
_COMFY_BLOCK_RE = re.compile(r"^diffusion_model\.blocks\.(\d+)\.(?:(self_attn|cross_attn)\.(q|k|v|o|k_img|v_img)|ffn\.(0|2))"
                             rf"\.{_SUFFIX_RE}$")
_COMFY_TOP_RE = re.compile(rf"^diffusion_model\.({'|'.join(re.escape(k) for k in _TOP)})\.{_SUFFIX_RE}$")
_DIFFUSERS_RE = re.compile(rf"^transformer\.(.+?)\.{_SUFFIX_RE}$")
_NEVER = re.compile(r"(?!)")
_PREFIXES = (("diffusion_model.", "comfyui"), ("lora_unet_", "kohya"), ("transformer.", "diffusers"))


def _key_format(keys: Sequence[str]) -> str:
    """The layout, decided as diffusers' WanLoraLoaderMixin.lora_state_dict picks its converter (same order)."""
    return next((fmt for prefix, fmt in _PREFIXES if any(k.startswith(prefix) for k in keys)), "unknown")


def _layer(key: str, fmt: str) -> tuple[str, str] | None:
    """(diffusers layer name, role A/B/alpha/bias/diff) of one key, or None when no Wan layer matches."""
    m = {"kohya": _KOHYA_RE, "comfyui": _COMFY_BLOCK_RE}.get(fmt, _NEVER).match(key)
    if m:
        block, attn, proj, ffn, suffix = m.groups()
        return f"blocks.{block}.{f'{_ATTN[attn]}.{_PROJ[proj]}' if attn else _FFN[ffn]}", _ROLE[suffix]
    m = {"comfyui": _COMFY_TOP_RE, "diffusers": _DIFFUSERS_RE}.get(fmt, _NEVER).match(key)
    return (_TOP.get(m.group(1), m.group(1)), _ROLE[m.group(2)]) if m else None


def inspect_lora(path: str | Path) -> LoraInfo:
    """Read a LoRA's header (no tensor data): its key layout, rank, blocks, width and layer shapes."""
    path = Path(path)
    table, metadata = read_header(path)
    shapes = {k: tuple(int(n) for n in (v.get("shape") or ())) for k, v in table.items() if isinstance(v, dict)}
    fmt = _key_format(list(shapes))
    modules: dict[str, list[int | None]] = {}
    halves: dict[str, set[str]] = {}
    unknown: list[str] = []
    ranks: set[int] = set()
    for key, shape in shapes.items():
        found = _layer(key, fmt)
        if found is None:
            if not (fmt == "comfyui" and key.endswith((".diff", ".diff_b"))):  # the converter drops those
                unknown.append(key)
            continue
        module, role = found
        io = modules.setdefault(module, [None, None])
        if role == "A" and len(shape) == 2:
            ranks.add(shape[0])
            io[0] = shape[1]
        elif role == "B" and len(shape) == 2:
            io[1] = shape[0]
        elif role == "diff" and len(shape) == 2:
            io[1], io[0] = shape
        elif role == "bias" and len(shape) == 1:
            io[1] = shape[0]
        if role in ("A", "B"):
            halves.setdefault(module, set()).add(role)
    blocks = sorted({int(m.split(".")[1]) for m in modules if m.startswith("blocks.")})
    widths = [modules[m][0] for m in sorted(modules) if re.match(r"^blocks\.\d+\.attn1\.to_[qkv]$", m)]
    widths = widths or [modules[m][1] for m in sorted(modules) if re.match(r"^blocks\.\d+\.attn[12]\.", m)]
    return LoraInfo(
        path=path, format=fmt, rank=max(ranks) if ranks else None, blocks=tuple(blocks),
        hidden_size=next((w for w in widths if w), None), modules={m: (io[0], io[1]) for m, io in modules.items()},
        shapes=shapes, unknown=tuple(sorted(unknown)),
        incomplete=tuple(sorted(m for m, h in halves.items() if len(h) == 1)),
        has_alpha=any(k.endswith(".alpha") for k in shapes), metadata=metadata)


# -- does it fit the model? ----------------------------------------------------------


def read_transformer_config(model_dir: str | Path) -> dict[str, Any]:
    """A Wan model folder's `transformer/config.json` (what check_lora compares a LoRA with)."""
    path = Path(model_dir) / "transformer" / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LoraError(f"cannot read the model's transformer config {path}: {exc}") from exc


def _expected(module: str, cfg: Mapping[str, Any]) -> tuple[int | None, int | None] | None:
    """(in, out) features of a diffusers Wan transformer layer under `cfg`; None when the model has no such layer."""
    dim = int(cfg.get("num_attention_heads", 0)) * int(cfg.get("attention_head_dim", 0)) or None
    ffn, kv, image = cfg.get("ffn_dim"), cfg.get("added_kv_proj_dim"), cfg.get("image_dim")
    m = re.match(r"^(blocks|vace_blocks)\.\d+\.(.+)$", module)
    if m:
        if m.group(1) == "vace_blocks" and not cfg.get("vace_layers"):
            return None
        table = {f"{a}.{p}": (dim, dim) for a in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out.0")}
        table.update({"ffn.net.0.proj": (dim, ffn), "ffn.net.2": (ffn, dim), "proj_in": (dim, dim), "proj_out": (dim, dim)})
        if kv:
            table.update({"attn2.add_k_proj": (kv, dim), "attn2.add_v_proj": (kv, dim)})
        return table.get(m.group(2))
    top = {"condition_embedder.time_proj": (dim, 6 * dim if dim else None),
           "condition_embedder.text_embedder.linear_1": (cfg.get("text_dim"), dim),
           "condition_embedder.text_embedder.linear_2": (dim, dim),
           "condition_embedder.time_embedder.linear_1": (cfg.get("freq_dim"), dim),
           "condition_embedder.time_embedder.linear_2": (dim, dim),
           "proj_out": (dim, int(cfg.get("out_channels") or 16)
                        * math.prod(int(p) for p in cfg.get("patch_size") or (1, 2, 2)))}
    if image:
        top.update({"condition_embedder.image_embedder.ff.net.0.proj": (image, image),
                    "condition_embedder.image_embedder.ff.net.2": (image, dim)})
    return top.get(module)


def _size(dim: int | None) -> str:
    return f"{dim} ({_SIZES[dim]})" if dim in _SIZES else str(dim)


def _some(items: Sequence[str], n: int = 3, sep: str = ", ") -> str:
    return sep.join(items[:n]) + (f" (and {len(items) - n} more)" if len(items) > n else "")


def _unknown_hint(keys: Sequence[str]) -> str:
    text = " ".join(keys[:50])
    if "lokr_" in text or "hada_" in text:
        return "it is a LyCORIS (LoKr/LoHa) network, not a LoRA diffusers can load for Wan"
    if re.search(r"lora_te\d?_|down_blocks|up_blocks|input_blocks|mid_block", text):
        return "it looks like a Stable Diffusion / SDXL LoRA, not a Wan one"
    if re.search(r"double_blocks|single_blocks|single_transformer_blocks", text):
        return "it looks like a Flux LoRA, not a Wan one"
    if re.search(r"(^| )blocks\.\d+\.(attn|ffn)", text):
        return "its keys lack diffusers' transformer. prefix (a bare peft state dict)"
    return "no key matches a Wan transformer layer diffusers' Wan converter knows"


def check_lora(info: LoraInfo, transformer_config: Mapping[str, Any]) -> None:
    """Raise LoraError when `info` cannot fit this transformer: another width (a 14B LoRA on a 1.3B model),
    blocks it lacks, other layer shapes, keys diffusers' Wan converters reject. Layers the model lacks (an
    I2V LoRA's image layers on a T2V model) only log a warning."""
    cfg = transformer_config
    what = f"LoRA {info.name}"
    if info.format == "unknown" or not info.modules:
        sample = ", ".join(sorted(info.shapes)[:3]) or "no tensors"
        raise LoraError(f"{what}: {_unknown_hint(sorted(info.shapes))} (keys like {sample}); a Wan LoRA has keys "
                        "starting with transformer. (diffusers), lora_unet_blocks_ (kohya/musubi) or "
                        "diffusion_model.blocks. (ComfyUI)")
    if info.unknown and info.format in ("kohya", "comfyui"):
        raise LoraError(f"{what}: diffusers' {info.format} Wan converter rejects its keys {_some(info.unknown)}; "
                        f"{_unknown_hint(info.unknown)}")
    if info.incomplete:
        raise LoraError(f"{what}: layers with only one half of the low-rank pair: {_some(info.incomplete)}")
    dim = int(cfg.get("num_attention_heads", 0)) * int(cfg.get("attention_head_dim", 0))
    if info.hidden_size and dim and info.hidden_size != dim:
        raise LoraError(f"{what}: trained for a model of width {_size(info.hidden_size)}, but this model's width is "
                        f"{_size(dim)}; use a LoRA made for this model")
    layers = int(cfg.get("num_layers", 0))
    beyond = [b for b in info.blocks if layers and b >= layers]
    if beyond:
        raise LoraError(f"{what}: changes block {max(beyond)}, but this model has {layers} blocks (0-{layers - 1}); "
                        "it was made for a deeper model")
    vace = len(cfg.get("vace_layers") or ())
    if vace and any(int(m.split(".")[1]) >= vace for m in info.modules if m.startswith("vace_blocks.")):
        raise LoraError(f"{what}: changes VACE blocks this model does not have (it has {vace})")
    if info.format == "kohya":
        _check_musubi_complete(info)
    if info.unknown:
        log.warning("%s: keys that match no Wan layer are skipped: %s", what, _some(info.unknown))
    wrong: list[str] = []
    absent: list[str] = []
    for module, (fan_in, fan_out) in sorted(info.modules.items()):
        expected = _expected(module, cfg)
        if expected is None:
            absent.append(module)
        elif any(got is not None and want is not None and got != want
                 for got, want in zip((fan_in, fan_out), expected)):
            wrong.append(f"{module} is {fan_in}->{fan_out}, the model's {expected[0]}->{expected[1]}")
    if wrong:
        raise LoraError(f"{what}: its layers do not match this model: {_some(wrong, sep='; ')}")
    if absent and len(absent) == len(info.modules):
        raise LoraError(f"{what}: none of its layers exist in this model ({_some(absent)})")
    if absent:
        log.warning("%s: layers not in this model are skipped: %s", what, _some(absent))


def _check_musubi_complete(info: LoraInfo) -> None:
    """diffusers' musubi converter reads every q/k/v/o, ffn pair and alpha of blocks 0..n-1 (n: blocks present)."""
    names = [f"{a}_{p}" for a in ("self_attn", "cross_attn") for p in "qkvo"] + ["ffn_0", "ffn_2"]
    names += ["cross_attn_k_img", "cross_attn_v_img"] if any(".add_k_proj" in m for m in info.modules) else []
    missing = [f"lora_unet_blocks_{b}_{n}.{s}" for b in range(len(info.blocks)) for n in names
               for s in ("lora_down.weight", "lora_up.weight", "alpha")
               if f"lora_unet_blocks_{b}_{n}.{s}" not in info.shapes]
    if missing:
        raise LoraError(f"LoRA {info.name}: diffusers' kohya/musubi Wan converter needs every attention and ffn "
                        f"layer (with alpha) of blocks 0-{len(info.blocks) - 1}; missing {_some(missing)}")


# -- per-clip weights --------------------------------------------------------------------


def clip_weights(clip_loras: Iterable[Sequence[Any]], user_loras: Iterable[LoraRequest | ResolvedLora],
                 all_names: Iterable[str] = ()) -> dict[str, tuple[float, float]]:
    """One clip's LoRA weights, keyed by lora_key: {key: (weight, weight_2)}.

    The user's LoRAs apply to every clip at their weights. A prompt tag `<lora:name:w>` sets
    that LoRA's weight for this clip (or adds it); with a user `weight_2`, the tag keeps the
    user's weight_2/weight ratio for the low-noise expert. The last tag of a name wins.
    Names in `all_names` and in neither get 0 (off for this clip)."""
    weights = {lora_key(name): (0.0, 0.0) for name in all_names}
    users: dict[str, LoraRequest | ResolvedLora] = {}
    for lora in user_loras:
        users[lora.key] = lora
        w = float(lora.weight)
        weights[lora.key] = (w, w if lora.weight_2 is None else float(lora.weight_2))
    for tag in clip_loras:
        key, w = lora_key(tag[0]), float(tag[1]) if len(tag) > 1 else 1.0
        user = users.get(key)
        ratio = user.weight_2 / user.weight if user is not None and user.weight_2 is not None and user.weight else 1.0
        weights[key] = (w, float(tag[2]) if len(tag) > 2 and tag[2] is not None else w * float(ratio))
    return weights


# -- loading into diffusers --------------------------------------------------------------


def _adapter_name(index: int, key: str) -> str:
    """peft adapter names become module-dict keys: letters, digits and underscores only."""
    return f"deforum_lora_{index}_{re.sub(r'[^0-9A-Za-z_]+', '_', key)[:40]}"


def _pair(value: float | Sequence[float | None]) -> tuple[float, float]:
    w, w2 = (value, None) if isinstance(value, (int, float)) else (value[0], value[1] if len(value) > 1 else None)
    return float(w), float(w if w2 is None else w2)


@dataclass(eq=False)
class LoraHandle:
    """The LoRAs loaded into a job's pipelines: set their weights per clip, unload them at the end."""

    loras: tuple[ResolvedLora, ...]
    adapters: dict[str, str] = field(default_factory=dict)  # lora_key -> peft adapter name
    experts: list[tuple[Any, int]] = field(default_factory=list)  # (transformer, 0 high-noise/only | 1 low-noise)
    weights: dict[str, tuple[float, float]] = field(default_factory=dict)
    unloaded: bool = False

    def set_weights(self, weights: Mapping[str, float | Sequence[float | None]]) -> None:
        """Make `weights` ({name: w or (w, w2)}, e.g. clip_weights') the active LoRAs: `w` for the (high-noise)
        transformer, `w2` (None: w) for A14B's low-noise transformer_2. Left out or 0: off, its layers skipped."""
        if self.unloaded:
            raise LoraError("these LoRAs were unloaded; apply them again")
        wanted: dict[str, tuple[float, float]] = {}
        for name, value in weights.items():
            key = lora_key(name)
            if key not in self.adapters:
                raise LoraError(f"LoRA {name!r} is not loaded for this job (loaded: {', '.join(self.adapters) or 'none'})")
            wanted[key] = _pair(value)
        for module, expert in self.experts:
            present = getattr(module, "peft_config", None) or {}
            active = [(a, wanted.get(k, (0.0, 0.0))[expert]) for k, a in self.adapters.items() if a in present]
            active = [(a, w) for a, w in active if w != 0.0]
            if active:
                module.enable_lora()
                module.set_adapters([a for a, _ in active], [w for _, w in active])
            elif present:
                module.disable_lora()
        self.weights = wanted

    def unload(self) -> None:
        """Remove this handle's adapters; a transformer left with none gets its original layers back."""
        for module, _expert in self.experts:
            present = getattr(module, "peft_config", None) or {}
            ours = [adapter for adapter in self.adapters.values() if adapter in present]
            with _quiet_peft():
                if ours:
                    module.delete_adapters(ours)
                if not getattr(module, "peft_config", None):
                    module.unload_lora()
        self.experts.clear()
        self.unloaded = True


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft warns when a second adapter joins a model, or an active one is deleted: both are what we mean."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config`|Adapter .* was active which is now")
        yield


def _diffusers_pipes(target: Any) -> list[Any]:
    """The diffusers pipelines of a `Pipelines` (every one it holds), or the pipeline itself."""
    pipes = target.pipes() if callable(getattr(target, "pipes", None)) else [target]
    for pipe in pipes:
        if not callable(getattr(pipe, "load_lora_weights", None)):
            raise LoraError(f"{type(pipe).__name__} cannot load LoRAs (no load_lora_weights)")
    return pipes


def apply_loras(pipe: Any, loras: Sequence[ResolvedLora]) -> LoraHandle:
    """Load `loras` into a diffusers Wan pipeline (or every pipeline of a `Pipelines`) once for a job.

    Each LoRA is one peft adapter (`pipe.load_lora_weights`), loaded again with
    `load_into_transformer_2=True` into A14B's low-noise expert; a shared transformer
    is loaded once. Each is checked against every transformer's config first; a file
    diffusers cannot load is a LoraError naming it, and nothing stays loaded. The
    LoRAs start at their own weights (`weight`, `weight_2`)."""
    if loras and importlib.util.find_spec("peft") is None:
        raise LoraError("LoRAs need the peft library, which is missing; install the renderer's libraries again")
    pipes = _diffusers_pipes(pipe)
    handle = LoraHandle(tuple(loras))
    try:
        for index, lora in enumerate(loras):
            if lora.key in handle.adapters:
                raise LoraError(f"LoRA {lora.name!r} is given twice")
            info = lora.info or inspect_lora(lora.path)
            adapter = handle.adapters[lora.key] = _adapter_name(index, lora.key)
            done: set[int] = set()
            for p in pipes:
                for expert, attr in enumerate(("transformer", "transformer_2")):
                    module = getattr(p, attr, None)
                    if module is None or id(module) in done:
                        continue
                    done.add(id(module))
                    try:
                        check_lora(info, dict(module.config))
                    except LoraError as exc:
                        raise LoraError(f"{exc} ({type(p).__name__}.{attr})") from None
                    if all(module is not m for m, _ in handle.experts):
                        handle.experts.append((module, expert))
                    _load(p, module, lora, adapter, second=expert == 1)
        handle.set_weights({lora.key: (lora.weight, lora.weight_2) for lora in loras})
    except BaseException:
        handle.unload()
        raise
    return handle


def _load(pipe: Any, module: Any, lora: ResolvedLora, adapter: str, second: bool) -> None:
    where = f"{type(pipe).__name__}.{'transformer_2' if second else 'transformer'}"
    kwargs: dict[str, Any] = {"adapter_name": adapter, "use_safetensors": True, "local_files_only": True}
    if second:
        kwargs["load_into_transformer_2"] = True
    try:
        with _quiet_peft():
            pipe.load_lora_weights(str(lora.path), **kwargs)
    except Exception as exc:
        raise LoraError(f"LoRA {lora.path.name}: diffusers could not load it into {where}: "
                        f"{type(exc).__name__}: {exc}") from exc
    if adapter not in (getattr(module, "peft_config", None) or {}):
        raise LoraError(f"LoRA {lora.path.name}: none of its weights matched a layer of {where}")
    log.info("LoRA %s loaded into %s as %s", lora.path.name, where, adapter)
