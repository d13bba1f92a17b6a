"""Find Wan models on disk and tell which kind each is.

Users download the Wan-AI "-Diffusers" repositories into `<models>/wan/`. Each is
a diffusers folder (model_index.json + one subfolder per component); its kind
(see specs.MODEL_SPECS) follows from the pipeline class in model_index.json and
the transformer's config, so classification reads only small JSON files and never
imports torch. That keeps this module light enough for the web UI, the service
and the CLI's `models` command; putting a model in memory is `loading.py`'s job,
and the offload profiles are `memory.py`'s.

ComfyUI users have single files instead: a transformer in `diffusion_models/` (or
`unet/`), a UMT5 text encoder in `text_encoders/` (or `clip/`), a VAE in `vae/`
and, for Wan2.1 I2V/FLF2V, a CLIP vision encoder in `clip_vision/`. Those folders
are looked for inside the models folder and beside it (`<models>/wan/../vae`), each
file is classified from its header (`single_file.classify_file`), and every
transformer is paired with the parts it needs into a `SingleFileModel`, which has
the `.path`, `.kind`, `.spec` and `.name` of a `ModelInfo` (its path is the
transformer file). A transformer whose parts are not all there is reported as an
`IncompleteModel` problem saying what was found and what is missing.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..core.specs import ModelSpec, default_models_dir, spec_for_transformer
from .single_file import ROLE_WORDS, SUFFIXES, TOKENIZER_HELP, SingleFileError, WeightsFile, classify_file

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


COMFY_FOLDERS = ("diffusion_models", "unet", "text_encoders", "clip", "vae", "clip_vision")
TOKENIZER_FOLDERS = ("umt5-xxl", "umt5_xxl", "umt5-xxl-tokenizer", "google_umt5-xxl", "tokenizer")
_WHERE = {"transformer": "diffusion_models/", "text_encoder": "text_encoders/ (e.g. umt5_xxl_fp8_e4m3fn_scaled"
          ".safetensors)", "vae": "vae/", "clip_vision": "clip_vision/ (clip_vision_h.safetensors)"}
_PRECISION = ("bf16", "fp32", "fp16", "fp8_e4m3fn", "fp8_e5m2")  # text encoders: the most precise first


class IncompleteModel(ModelError):
    """A single-file transformer without all the parts it needs; `.model` says what was found and what is missing."""

    def __init__(self, model: "SingleFileModel") -> None:
        super().__init__(f"{model.path} ({model.transformer.describe_kind()}): found {model.pairing()}; "
                         f"missing {'; '.join(model.missing)}")
        self.model = model


@dataclass(frozen=True)
class SingleFileModel:
    """A Wan model made of single files (ComfyUI's layout); `path` is its transformer file."""

    path: Path
    kind: str
    spec: ModelSpec
    size_bytes: int
    name: str
    transformer: WeightsFile
    transformer_2: WeightsFile | None = None  # Wan2.2 A14B: the low-noise expert
    text_encoder: WeightsFile | None = None
    vae: WeightsFile | None = None
    image_encoder: WeightsFile | None = None  # CLIP vision, Wan2.1 I2V/FLF2V
    tokenizer: Path | None = None  # a tokenizer folder, when the text encoder carries none
    missing: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return self.spec.label

    def files(self) -> dict[str, WeightsFile]:
        parts = {"transformer": self.transformer, "transformer_2": self.transformer_2, "text_encoder": self.text_encoder,
                 "vae": self.vae, "image_encoder": self.image_encoder}
        return {key: value for key, value in parts.items() if value is not None}

    def pairing(self) -> str:
        """What the transformer is paired with: 'low-noise expert b.safetensors (fp16), text encoder c (fp8_e4m3fn
        scaled), tokenizer inside the text encoder, VAE d (fp32)'."""
        words = {"transformer_2": "low-noise expert", "text_encoder": "text encoder", "vae": "VAE",
                 "image_encoder": "CLIP vision"}
        parts = [f"{words[key]} {file.name} ({file.precision})" for key, file in self.files().items() if key in words]
        if self.text_encoder is not None:
            parts.insert(2 if self.transformer_2 else 1, f"tokenizer {self.tokenizer}" if self.tokenizer else
                         "tokenizer inside the text encoder" if self.text_encoder.has_tokenizer else "no tokenizer")
        return ", ".join(parts) or "nothing to pair it with"


def _weight_files(root: Path) -> list[Path]:
    """Single files directly in root, and anywhere (3 levels) under ComfyUI's folders in or beside root."""
    found = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES] if root.is_dir() else []
    for base in (root, root.parent):
        for name in COMFY_FOLDERS:
            top = base / name
            if not top.is_dir():
                continue
            for dirpath, dirs, files in os.walk(top, followlinks=True):
                here = Path(dirpath)
                dirs[:] = [] if len(here.relative_to(top).parts) >= 3 else sorted(d for d in dirs if not d.startswith("."))
                if (here / "model_index.json").is_file() or (here / "config.json").is_file():
                    dirs[:] = []  # a diffusers/transformers folder, not single files
                    continue
                found += [here / f for f in sorted(files) if f.lower().endswith(SUFFIXES)]
    unique: dict[str, Path] = {}
    for path in found:
        unique.setdefault(os.path.realpath(path), path)
    return list(unique.values())


_CLASSIFIED: dict[tuple[str, int, int], Any] = {}


def _classify_cached(path: Path) -> WeightsFile | SingleFileError | None:
    """classify_file, remembered per (path, size, mtime): the tab and the API scan often."""
    try:
        stat = path.stat()
    except OSError as exc:
        return SingleFileError(f"{path}: {exc.strerror or exc}")
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _CLASSIFIED:
        try:
            _CLASSIFIED[key] = classify_file(path)
        except SingleFileError as exc:
            _CLASSIFIED[key] = exc
    return _CLASSIFIED[key]


def _tokenizer_folders(places: Iterable[Path]) -> list[Path]:
    folders = []
    for place in places:
        for name in TOKENIZER_FOLDERS:
            folder = place / name
            if any((folder / f).is_file() for f in ("spiece.model", "tokenizer.json")) and folder not in folders:
                folders.append(folder)
    return folders


def _text_encoder_rank(file: WeightsFile, have_folder: bool) -> tuple:
    precision = _PRECISION.index(file.dtype) if file.dtype in _PRECISION else len(_PRECISION)
    return (not (file.has_tokenizer or have_folder), precision, file.scaled, file.name.lower())


def pair_single_files(files: list[WeightsFile], tokenizer_folders: list[Path]) -> tuple[list[SingleFileModel],
                                                                                        list[ModelError]]:
    """Each transformer with a text encoder, a VAE of its family, a CLIP vision encoder where needed and, for a
    Wan2.2 A14B high-noise expert, its low-noise one. Complete ones are models; the rest IncompleteModel problems."""
    roles = {role: sorted((f for f in files if f.role == role), key=lambda f: f.name.lower())
             for role in ("transformer", "text_encoder", "vae", "clip_vision")}
    lows = [t for t in roles["transformer"] if t.expert == "low"]
    text_encoders = sorted(roles["text_encoder"], key=lambda f: _text_encoder_rank(f, bool(tokenizer_folders)))
    models: list[SingleFileModel] = []
    problems: list[ModelError] = []
    used: set[Path] = set()
    for t in (t for t in roles["transformer"] if t.expert != "low"):
        missing: list[str] = []
        low = None
        if t.expert == "high":
            twins = [x for x in lows if x.kind == t.kind and x.path not in used]
            twin_name = t.name.lower().replace("high", "low")
            low = next((x for x in twins if x.name.lower() == twin_name), twins[0] if twins else None)
            if low is None:
                missing.append(f"its low-noise expert (a {t.kind} file with low_noise in its name) in {_WHERE['transformer']}")
            else:
                used.add(low.path)
        te = text_encoders[0] if text_encoders else None
        tokenizer = tokenizer_folders[0] if te is not None and not te.has_tokenizer and tokenizer_folders else None
        if te is None:
            missing.append(f"a {ROLE_WORDS['text_encoder']} in {_WHERE['text_encoder']}")
        elif not te.has_tokenizer and tokenizer is None:
            missing.append(f"the UMT5 tokenizer ({te.name} carries none): {TOKENIZER_HELP}")
        vae = next((v for v in roles["vae"] if v.family == t.family), None)
        if vae is None:
            example = "wan2.2_vae.safetensors" if t.family == "wan2.2" else "wan_2.1_vae.safetensors"
            missing.append(f"a {t.family} VAE in vae/ (e.g. {example})")
        clip = None
        if t.kind in ("i2v", "flf2v"):
            clip = next((c for c in roles["clip_vision"] if c.width == 1280), None) or next(iter(roles["clip_vision"]), None)
            if clip is None:
                missing.append(f"a {ROLE_WORDS['clip_vision']} in {_WHERE['clip_vision']}")
        parts = [p for p in (t, low, te, vae, clip) if p is not None]
        model = SingleFileModel(path=t.path, kind=str(t.kind), spec=spec_for_transformer(str(t.kind), t.width),
                                size_bytes=sum(p.size_bytes for p in parts), name=t.name, transformer=t,
                                transformer_2=low, text_encoder=te, vae=vae, image_encoder=clip, tokenizer=tokenizer,
                                missing=tuple(missing))
        (problems.append(IncompleteModel(model)) if missing else models.append(model))
    for low in lows:
        if low.path not in used:
            problems.append(ModelError(f"{low.path}: a Wan2.2 A14B low-noise expert without its high-noise one "
                                       f"({low.kind}, with high_noise in its name) in {_WHERE['transformer']}"))
    return models, problems


def scan_single_files(root: str | Path, diffusers_folders: Iterable[Path] = ()) -> tuple[list[SingleFileModel],
                                                                                          list[ModelError]]:
    """Single-file models in and beside root (see _weight_files), paired; unreadable files become problems."""
    root = Path(root)
    files: list[WeightsFile] = []
    problems: list[ModelError] = []
    for path in _weight_files(root):
        result = _classify_cached(path)
        if isinstance(result, SingleFileError):
            problems.append(ModelError(str(result)))
        elif result is not None:
            files.append(result)
    places = [root, *(root / n for n in COMFY_FOLDERS), *(root.parent / n for n in COMFY_FOLDERS),
              *(f.path.parent for f in files if f.role == "text_encoder")]
    folders = _tokenizer_folders(places) + [f / "tokenizer" for f in diffusers_folders
                                            if (f / "tokenizer" / "tokenizer_config.json").is_file()]
    models, paired_problems = pair_single_files(files, folders)
    return models, problems + paired_problems


def single_file_model(path: str | Path, root: str | Path | None = None) -> SingleFileModel:
    """The model whose transformer is the file at `path`, paired with the parts in and beside its models folder."""
    path = Path(path)
    if root is None:  # <models>/diffusion_models/wan/x.safetensors -> <models>/wan if there is one, else <models>
        base = next((p.parent for p in path.parents if p.name in COMFY_FOLDERS), path.parent)
        root = base / "wan" if (base / "wan").is_dir() else base
    models, problems = scan_models(root)  # its diffusers folders may lend their tokenizer
    for model in models:
        if isinstance(model, SingleFileModel) and os.path.realpath(model.path) == os.path.realpath(path):
            return model
    for problem in problems:
        if isinstance(problem, IncompleteModel) and os.path.realpath(problem.model.path) == os.path.realpath(path):
            raise problem
    try:
        file = classify_file(path)
    except SingleFileError as exc:
        raise ModelError(str(exc)) from None
    if file is None:
        raise ModelError(f"{path}: not a Wan file (no Wan transformer, text encoder, VAE or CLIP vision tensors)")
    if file.role != "transformer":
        raise ModelError(f"{path}: a {ROLE_WORDS[file.role]}, not a model: choose a transformer file "
                         f"(in {_WHERE['transformer']}); this file is paired with it")
    raise ModelError(f"{path}: a Wan2.2 A14B low-noise expert: choose its high-noise file")


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


def classify_model(path: str | Path) -> ModelInfo | SingleFileModel:
    """Read one diffusers folder (or a single transformer file) and decide its kind; ModelError says what is wrong."""
    folder = Path(path)
    if folder.is_file() and folder.suffix.lower() in SUFFIXES:
        return single_file_model(folder)
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


def scan_models(root: str | Path) -> tuple[list[ModelInfo | SingleFileModel], list[ModelError]]:
    """Classify every folder with model_index.json at root, directly under it, or one level deeper, and the
    single-file models in and beside root (`scan_single_files`).

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
    infos: list[ModelInfo | SingleFileModel] = []
    problems: list[ModelError] = []
    for folder in candidates:
        try:
            infos.append(classify_model(folder))
        except ModelError as exc:
            problems.append(exc)
    singles, single_problems = scan_single_files(root, candidates)
    infos += singles
    infos.sort(key=lambda info: info.name.lower())
    return infos, problems + single_problems


def discover_models(root: str | Path) -> list[ModelInfo | SingleFileModel]:
    """Usable Wan models under root (see scan_models); broken folders are logged and skipped."""
    infos, problems = scan_models(root)
    for problem in problems:
        log.warning("skipping model folder: %s", problem)
    return infos


def find_model(name_or_path: str | Path, root: str | Path | None = None) -> ModelInfo | SingleFileModel:
    """A model by folder (or transformer file) path, or by name / kind among the models under root."""
    candidate = Path(name_or_path)
    if candidate.is_dir():
        return classify_model(candidate)
    if candidate.is_file():
        return single_file_model(candidate, root if root is not None and _inside(candidate, Path(root)) else None)
    root = Path(root) if root is not None else default_models_dir()
    infos, problems = scan_models(root)
    for problem in problems:
        log.warning("skipping model: %s", problem)
    for info in infos:
        if info.name == str(name_or_path) or (isinstance(info, SingleFileModel) and info.path.stem == str(name_or_path)):
            return info
    for problem in problems:  # a single-file model by name, but incomplete: say what it lacks
        if isinstance(problem, IncompleteModel) and str(name_or_path) in (problem.model.name, problem.model.path.stem):
            raise problem
    for info in infos:
        if info.kind == str(name_or_path):
            return info
    known = ", ".join(info.name for info in infos) or "none"
    raise ModelError(f"{name_or_path}: no such model folder, and no model of that name or kind in {root} (found: {known})")


def _inside(path: Path, root: Path) -> bool:
    try:
        return os.path.realpath(path).startswith(os.path.realpath(root) + os.sep)
    except OSError:  # pragma: no cover
        return False


def human_size(num_bytes: int) -> str:
    """1536 -> '1.5 KiB'."""
    size = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover


def format_models_table(infos: Iterable[ModelInfo | SingleFileModel]) -> str:
    """A plain-text table for `deforum-wan models`: name, kind, label, fps, max frames, size; then the files
    each single-file model is made of."""
    infos = list(infos)
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
    singles = [info for info in infos if isinstance(info, SingleFileModel)]
    if singles:
        lines += ["", "single-file models (transformer: what it is paired with):"]
        lines += [f"  {info.name} ({info.transformer.precision}): {info.pairing()}" for info in singles]
    return "\n".join(lines)
