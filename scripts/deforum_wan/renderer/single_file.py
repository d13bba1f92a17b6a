"""Single-file Wan weights (the files ComfyUI users download): what a file is, and loading it.

One file per component: the transformer (`wan2.1_t2v_1.3B_fp16.safetensors`, Wan's
original key layout, or a GGUF such as `wan2.1-t2v-14b-Q4_K_M.gguf`), the UMT5 text
encoder (`umt5_xxl_fp8_e4m3fn_scaled.safetensors`), the VAE, CLIP vision.
`classify_file` tells from the header alone (safetensors JSON header, GGUF tensor
table; no weights, no torch) the role, kind, size (from tensor shapes) and dtype;
`models.py` pairs the files into models.

Loading (torch, diffusers, transformers imported inside the functions) uses
diffusers' `from_single_file` with the configs shipped in `configs/` (see its
README), never the hub; GGUF through `GGUFQuantizationConfig`. The UMT5 and CLIP
models are filled from their files, "scaled" fp8 weights multiplied by their
`scale_weight`, and the tokenizer built from the SentencePiece model the text
encoder file carries (`spiece_model`) or from a tokenizer folder.
"""
from __future__ import annotations

import json
import os
import re
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

CONFIGS_DIR = Path(__file__).with_name("configs")
# A diffusers model folder whose component configs replace the shipped ones (tests with tiny models).
CONFIGS_ENV = "DEFORUM_WAN_SINGLE_FILE_CONFIGS"
SUFFIXES = (".safetensors", ".gguf")
ROLE_WORDS = {"transformer": "transformer", "text_encoder": "UMT5 text encoder", "vae": "VAE",
              "clip_vision": "CLIP vision encoder"}
_DTYPES = {"F16": "fp16", "BF16": "bf16", "F32": "fp32", "F64": "fp64", "F8_E4M3": "fp8_e4m3fn",
           "F8_E5M2": "fp8_e5m2"}
# GGML tensor types by id (the GGUF format's table), for reading headers without the gguf package.
_GGML = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1", 10: "Q2_K",
         11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 20: "IQ4_NL", 23: "IQ4_XS", 30: "BF16"}
WIDTH_SIZES = {1536: "1.3B", 3072: "5B", 5120: "14B"}
FLOW_SHIFTS = {"flf2v": 16.0, "ti2v-5b": 5.0}  # the schedulers of the Wan-AI diffusers folders; 3.0 otherwise
TOKENIZER_HELP = ("give it the UMT5 tokenizer: ComfyUI's umt5_xxl_*.safetensors text encoders carry one; otherwise "
                  "put google/umt5-xxl's tokenizer files (spiece.model, or tokenizer.json and tokenizer_config.json) "
                  "in a folder named umt5-xxl/ or tokenizer/ beside the text encoder")


class SingleFileError(Exception):
    """A single file cannot be read, classified or loaded; the message names the file and why."""


@dataclass(frozen=True)
class WeightsFile:
    """One single-file component on disk, as its header describes it."""

    path: Path
    role: str  # transformer, text_encoder, vae or clip_vision
    dtype: str  # fp16, bf16, fp32, fp8_e4m3fn, or a GGUF type (Q4_K, Q8_0, ...)
    size_bytes: int
    kind: str | None = None  # transformer: a specs kind
    expert: str | None = None  # Wan2.2 A14B experts: "high" or "low" (noise)
    width: int | None = None  # transformer: attention heads x head size; CLIP: hidden size
    family: str | None = None  # VAE: "wan2.1" or "wan2.2"; transformer: the VAE it needs
    variant: str | None = None  # transformer: its folder in configs/transformer/
    scaled: bool = False  # fp8 with per-layer scale_weight tensors
    layout: str = "original"  # "original" (Wan/ComfyUI), "diffusers"; text encoder: "hf" or "wan"
    has_tokenizer: bool = False  # a text encoder carrying ComfyUI's spiece_model

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def is_gguf(self) -> bool:
        return self.path.suffix.lower() == ".gguf"

    @property
    def size_label(self) -> str:
        return WIDTH_SIZES.get(self.width or 0, f"{self.width}-wide" if self.width else "?")

    @property
    def precision(self) -> str:
        """'fp16', 'fp8_e4m3fn scaled', 'GGUF Q4_K'."""
        return f"{'GGUF ' if self.is_gguf else ''}{self.dtype}{' scaled' if self.scaled else ''}"

    def describe_kind(self) -> str:
        """'t2v 1.3B, fp16', 'a14b-t2v high-noise expert 14B, fp8_e4m3fn scaled', 'wan2.1 VAE, fp32'."""
        what = {"transformer": f"{self.kind}{' ' + self.expert + '-noise expert' if self.expert else ''} "
                               f"{self.size_label}",
                "vae": f"{self.family} VAE"}.get(self.role, ROLE_WORDS[self.role])
        return f"{what}, {self.precision}"

    def describe(self) -> str:
        """'wan2.1_t2v_1.3B_fp16.safetensors (t2v 1.3B, fp16)'."""
        return f"{self.name} ({self.describe_kind()})"


# ---------------------------------------------------------------------------
# Headers (no torch)


def read_safetensors_header(path: Path) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict[str, Any]]:
    """{tensor name: (dtype, shape)} and the metadata of a .safetensors file, from its JSON header only."""
    try:
        with open(path, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            if not 2 <= size <= 256 * 2**20:
                raise ValueError("no safetensors header")
            header = json.loads(fh.read(size))
        meta = header.pop("__metadata__", None) or {}
        tensors = {k: (str(v["dtype"]), tuple(int(n) for n in v["shape"])) for k, v in header.items()}
    except (OSError, ValueError, AttributeError, KeyError, TypeError) as exc:
        raise SingleFileError(f"{path}: not a readable safetensors file ({exc})") from None
    return tensors, meta


def read_gguf_header(path: Path) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict[str, Any]]:
    """{tensor name: (GGML type, torch-order shape)} and the metadata of a .gguf file (tensor data unread).

    Shapes honour ComfyUI-GGUF's `comfy.gguf.orig_shape.<name>` entries (tensors stored reshaped).
    """
    try:
        try:
            from gguf import GGUFReader
        except ImportError:  # the web UI's own process may not have gguf: read the table directly
            tensors, meta = _read_gguf_table(path)
        else:
            reader = GGUFReader(str(path))
            meta = {name: _gguf_field(field) for name, field in reader.fields.items()}
            tensors = {t.name: (t.tensor_type.name, tuple(int(n) for n in reversed(t.shape.tolist())))
                       for t in reader.tensors}
    except SingleFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file: say which
        raise SingleFileError(f"{path}: cannot read the GGUF header: {exc}") from None
    for name, (qtype, _shape) in list(tensors.items()):
        orig = meta.get(f"comfy.gguf.orig_shape.{name}")
        if isinstance(orig, list):
            tensors[name] = (qtype, tuple(int(n) for n in orig))
    return tensors, meta


def _gguf_field(field: Any) -> Any:
    """A GGUFReader field's value: a string, a number, or a list of them."""
    kinds = [t.name for t in field.types]
    values = [bytes(field.parts[i]).decode("utf-8", "replace") if kinds[-1] == "STRING" else field.parts[i].tolist()[0]
              for i in field.data]
    return values if kinds[0] == "ARRAY" else (values[0] if values else None)


def _read_gguf_table(path: Path) -> tuple[dict[str, tuple[str, tuple[int, ...]]], dict[str, Any]]:
    """The GGUF header as the format defines it (little-endian, versions 2 and 3)."""
    scalars = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
    with open(path, "rb") as fh:
        def take(fmt: str) -> Any:
            return struct.unpack(fmt, fh.read(struct.calcsize(fmt)))[0]

        def value(kind: int) -> Any:
            if kind == 9:  # array: element type, count, elements
                inner, count = take("<I"), take("<Q")
                return [value(inner) for _ in range(count)]
            return fh.read(take("<Q")).decode("utf-8", "replace") if kind == 8 else take(scalars[kind])

        if fh.read(4) != b"GGUF" or take("<I") not in (2, 3):
            raise SingleFileError(f"{path}: not a GGUF file")
        n_tensors, n_kv = take("<Q"), take("<Q")
        meta = {}
        for _ in range(n_kv):
            key = value(8)
            meta[key] = value(take("<I"))
        tensors = {}
        for _ in range(n_tensors):
            name, dims = value(8), [take("<Q") for _ in range(take("<I"))]
            kind, _ = take("<I"), take("<Q")  # type, data offset
            tensors[name] = (_GGML.get(kind, f"type{kind}"), tuple(reversed(dims)))
    return tensors, meta


# ---------------------------------------------------------------------------
# Classification (no torch)


def _strip(name: str) -> str:
    return re.sub(r"^(model\.)?diffusion_model\.", "", name)


def _main_dtype(tensors: dict[str, tuple[str, tuple[int, ...]]]) -> str:
    counts = Counter(dtype for name, (dtype, shape) in tensors.items()
                     if len(shape) >= 2 and not name.endswith(("scale_weight", "scale_input")))
    quantized = Counter({dtype: n for dtype, n in counts.items() if dtype not in _DTYPES})  # GGUF: its quant type
    dtype = (quantized or counts).most_common(1)[0][0] if counts else "?"
    return _DTYPES.get(dtype, dtype)


def _expert(name: str) -> str | None:
    for expert in ("high", "low"):
        if re.search(rf"(?<![a-z]){expert}(?:[\W_]*noise)?(?![a-z])|{expert}noise", name):
            return expert
    return None


def classify_file(path: str | Path) -> WeightsFile | None:
    """What a .safetensors/.gguf file is, from its header; None when it is no Wan component.

    Raises SingleFileError for an unreadable file, or a Wan file that cannot be used as it is.
    """
    path = Path(path)
    raw, _meta = read_gguf_header(path) if path.suffix.lower() == ".gguf" else read_safetensors_header(path)
    tensors = {_strip(name): spec for name, spec in raw.items()}
    names = set(tensors)
    base = dict(path=path, dtype=_main_dtype(tensors), size_bytes=path.stat().st_size,
                scaled="scaled_fp8" in names or any(n.endswith(".scale_weight") for n in names))
    if any(n.endswith((".comfy_quant", ".weight_scale")) for n in names):
        raise SingleFileError(f"{path}: uses ComfyUI's own mixed quantisation (comfy_quant), which only ComfyUI "
                              "loads; use an fp16, bf16, fp8 or GGUF file of the same model")
    if "patch_embedding.weight" in names and ({"head.modulation", "scale_shift_table"} & names):
        return _transformer(path, tensors, names, base)
    if {"decoder.middle.0.residual.0.gamma", "decoder.mid_block.resnets.0.norm1.gamma"} & names:
        quant = tensors.get("conv1.weight") or tensors.get("quant_conv.weight")
        z_dim = quant[1][0] // 2 if quant else 16
        return WeightsFile(role="vae", family="wan2.2" if z_dim == 48 else "wan2.1",
                           layout="diffusers" if "decoder.mid_block.resnets.0.norm1.gamma" in names else "original",
                           **base)
    if {"encoder.block.0.layer.0.SelfAttention.q.weight", "blocks.0.attn.q.weight"} & names:
        # UMT5 has a relative position bias in every layer; the T5 of Flux or SD3 only in the first
        if not {"encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight",
                "blocks.1.pos_embedding.embedding.weight"} & names:
            return None
        if path.suffix.lower() == ".gguf":
            raise SingleFileError(f"{path}: a GGUF text encoder; only safetensors UMT5 files load here "
                                  "(e.g. umt5_xxl_fp8_e4m3fn_scaled.safetensors)")
        return WeightsFile(role="text_encoder", layout="hf" if "shared.weight" in names else "wan",
                           has_tokenizer="spiece_model" in names, **base)
    for prefix in ("vision_model.", ""):  # transformers 4's layout (ComfyUI's files), or 5's
        if {f"{prefix}embeddings.patch_embedding.weight", f"{prefix}post_layernorm.weight"} <= names:
            return WeightsFile(role="clip_vision", width=tensors[f"{prefix}embeddings.patch_embedding.weight"][1][0],
                               **base)
    return None


def _transformer(path: Path, tensors: dict, names: set[str], base: dict) -> WeightsFile:
    shape = tensors["patch_embedding.weight"][1]
    width, channels = shape[0], (shape[1] if len(shape) > 1 else 0)
    name = path.name.lower()
    expert = _expert(name)
    size = {1536: "1.3b", 3072: "5b", 5120: "14b"}.get(width)
    image = {"img_emb.proj.0.weight", "condition_embedder.image_embedder.norm1.weight"} & names
    if any(n.startswith("vace_blocks.") for n in names):
        if expert:
            raise SingleFileError(f"{path}: a Wan2.2 VACE-Fun expert; only Wan2.1 VACE single files are supported")
        kind, variant = "vace", size and f"wan2.1-vace-{size}"
    elif channels == 48:
        kind, variant = "ti2v-5b", "wan2.2-ti2v-5b"
    elif image:
        flf = {"img_emb.emb_pos", "condition_embedder.image_embedder.pos_embed"} & names
        kind = "flf2v" if flf else "i2v"
        variant = "wan2.1-flf2v-14b-720p" if flf else f"wan2.1-i2v-14b-{'720p' if '720' in name else '480p'}"
    elif channels == 36 or (width == 5120 and (expert or re.search(r"wan[\W_]?2[\W_]?2|a14b", name))):
        kind = "a14b-i2v" if channels == 36 else "a14b-t2v"
        variant = f"wan2.2-{kind[5:]}-a14b"
        if expert is None:
            raise SingleFileError(f"{path}: a Wan2.2 A14B expert, but its name does not say which: rename it with "
                                  "high_noise or low_noise in it (as ComfyUI's files are named)")
    else:
        kind, variant = "t2v", size and f"wan2.1-t2v-{size}"
    return WeightsFile(role="transformer", kind=kind, expert=expert if kind.startswith("a14b") else None,
                       width=width, family="wan2.2" if kind == "ti2v-5b" else "wan2.1",
                       variant=variant if size else None,
                       layout="diffusers" if "scale_shift_table" in names else "original", **base)


# ---------------------------------------------------------------------------
# Loading (torch inside)


def config_source() -> Path | None:
    """A diffusers folder whose configs to use instead of the shipped ones (tests), or None."""
    return Path(os.environ[CONFIGS_ENV]) if os.environ.get(CONFIGS_ENV) else None


def config_dir(component: str, variant: str | None, source: Path | None = None) -> Path:
    """The folder holding `component`'s config: configs/<component>[/<variant>], or <source>/<component>."""
    if source is not None:
        folder = source / component
        return folder if folder.is_dir() or component != "transformer_2" else source / "transformer"
    component = "transformer" if component == "transformer_2" else component
    folder = CONFIGS_DIR / component / variant if variant else CONFIGS_DIR / component
    if not folder.is_dir():
        raise SingleFileError(f"no shipped {component} config {variant or ''} in {CONFIGS_DIR}")
    return folder


def dtype_kwarg() -> str:
    """diffusers 0.42 renamed from_pretrained's and from_single_file's torch_dtype to dtype (the old name warns)."""
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"


def read_state_dict(file: WeightsFile, dtype: Any) -> dict[str, Any]:
    """The file's tensors (prefixes stripped); fp8 ones in `dtype`, multiplied by their scale_weight if scaled."""
    import torch
    from safetensors import safe_open

    fp8 = {getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n)}
    out: dict[str, Any] = {}
    with safe_open(str(file.path), framework="pt", device="cpu") as fh:
        keys = list(fh.keys())
        scales = {k[: -len(".scale_weight")]: k for k in keys if k.endswith(".scale_weight")}
        for key in keys:
            if key in ("scaled_fp8", "spiece_model") or key.endswith((".scale_weight", ".scale_input")):
                continue
            tensor = fh.get_tensor(key)
            owner = key.rsplit(".", 1)[0]
            if key.endswith(".weight") and owner in scales:
                scale = fh.get_tensor(scales[owner]).float()
                if scale.numel() > 1 and tensor.ndim > 1:
                    scale = scale.reshape(-1, *([1] * (tensor.ndim - 1)))
                tensor = (tensor.float() * scale).to(dtype)
            elif tensor.dtype in fp8:
                tensor = tensor.to(dtype)
            out[_strip(key)] = tensor
    return out


def read_gguf_state_dict(path: Path) -> dict[str, Any]:
    """A GGUF file's tensors as diffusers' GGUF loader makes them (GGUFParameter for quantized types).

    Tensors ComfyUI-GGUF stored reshaped get their `comfy.gguf.orig_shape` back (quantized ones dequantized).
    """
    import gguf
    import torch
    from diffusers.quantizers.gguf.utils import SUPPORTED_GGUF_QUANT_TYPES, GGUFParameter, dequantize_gguf_tensor

    reader = gguf.GGUFReader(str(path))
    plain = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
    out: dict[str, Any] = {}
    for tensor in reader.tensors:
        qtype = tensor.tensor_type
        if qtype not in plain and qtype not in SUPPORTED_GGUF_QUANT_TYPES:
            raise SingleFileError(f"{path}: tensor {tensor.name} is {qtype.name}, a GGUF type diffusers cannot run; "
                                  "use a Q8_0, Q6_K, Q5_K, Q4_K, Q4_0 or F16 file")
        data = torch.from_numpy(tensor.data.copy())
        value = data if qtype in plain else GGUFParameter(data, quant_type=qtype)
        field = reader.get_field(f"comfy.gguf.orig_shape.{tensor.name}")
        if field is not None:
            shape = tuple(int(field.parts[i][0]) for i in field.data)
            value = (value if qtype in plain else dequantize_gguf_tensor(value)).reshape(shape)
        out[_strip(tensor.name)] = value
    return out


def _no_weights(file: WeightsFile, missing: list[str]) -> SingleFileError:
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    return SingleFileError(f"{file.path}: has no weights for {', '.join(missing[:3])}{more}; it is not the "
                           f"{file.describe()} its header looked like, or it is incomplete")


def _require_weights(cls: Any, config: str, state: dict[str, Any], convert: Any, file: WeightsFile) -> None:
    """Every weight of `cls` at `config` is in `state` once diffusers' key map has renamed it (names only)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        expected = set(cls.from_config(cls.load_config(config)).state_dict())
    names = dict.fromkeys(state)
    if set(names) != expected:
        names = convert(names)
    missing = sorted(expected - set(names))
    if missing:
        raise _no_weights(file, missing)


def _check_materialized(model: Any, file: WeightsFile) -> None:
    missing = [name for name, p in model.named_parameters() if p.device.type == "meta"]
    if missing:
        raise _no_weights(file, missing)


def require_config(file: WeightsFile, source: Path | None) -> None:
    if source is None and file.variant is None:
        raise SingleFileError(f"{file.path}: a {file.width}-wide transformer matches no official Wan model, so no "
                              "shipped config fits it")


def load_transformer(file: WeightsFile, dtype: Any, source: Path | None = None, slot: str = "transformer") -> Any:
    """WanTransformer3DModel (WanVACETransformer3DModel for VACE) from one file, GGUF or safetensors."""
    from diffusers import GGUFQuantizationConfig, WanTransformer3DModel, WanVACETransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    require_config(file, source)
    cls = WanVACETransformer3DModel if file.kind == "vace" else WanTransformer3DModel
    config = str(config_dir(slot, file.variant, source))
    kwargs: dict[str, Any] = {"config": config, "local_files_only": True, dtype_kwarg(): dtype}
    if file.is_gguf:
        state = read_gguf_state_dict(file.path)
        kwargs["quantization_config"] = GGUFQuantizationConfig(compute_dtype=dtype)
    else:
        state = read_state_dict(file, dtype)
    if "img_emb.emb_pos" in state:  # FLF2V's image position embedding: diffusers' key map misses it
        state["condition_embedder.image_embedder.pos_embed"] = state.pop("img_emb.emb_pos")
    _require_weights(cls, config, state, convert_wan_transformer_to_diffusers, file)
    model = cls.from_single_file(state, **kwargs)
    _check_materialized(model, file)
    return model


# Wan2.2 VAE keys (wan/modules/vae2_2.py) -> AutoencoderKLWan's, as diffusers' scripts/convert_wan_to_diffusers.py
# convert_vae_22 maps them (the Wan2.1 VAE's map is diffusers' own convert_wan_vae_to_diffusers).
_VAE22_RULES = [
    (r"^(en|de)coder\.middle\.0\.", r"\1coder.mid_block.resnets.0."), (r"^(en|de)coder\.middle\.2\.", r"\1coder.mid_block.resnets.1."),
    (r"^(en|de)coder\.middle\.1\.", r"\1coder.mid_block.attentions.0."), (r"^(en|de)coder\.head\.0\.", r"\1coder.norm_out."),
    (r"^(en|de)coder\.head\.2\.", r"\1coder.conv_out."), (r"^(en|de)coder\.conv1\.", r"\1coder.conv_in."),
    (r"^conv1\.", "quant_conv."), (r"^conv2\.", "post_quant_conv."),
    (r"^encoder\.downsamples\.(\d+)\.downsamples\.\d+\.(resample|time_conv)", r"encoder.down_blocks.\1.downsampler.\2"),
    (r"^decoder\.upsamples\.(\d+)\.upsamples\.\d+\.(resample|time_conv)", r"decoder.up_blocks.\1.upsampler.\2"),
    (r"^encoder\.downsamples\.(\d+)\.downsamples\.", r"encoder.down_blocks.\1.resnets."),
    (r"^decoder\.upsamples\.(\d+)\.upsamples\.", r"decoder.up_blocks.\1.resnets."),
    (r"\.residual\.0\.", ".norm1."), (r"\.residual\.2\.", ".conv1."), (r"\.residual\.3\.", ".norm2."),
    (r"\.residual\.6\.", ".conv2."), (r"\.shortcut\.", ".conv_shortcut.")]
# Wan's own T5 keys (wan/modules/t5.py; e.g. umt5-xxl-enc-bf16.safetensors) -> UMT5EncoderModel's.
_WAN_T5_RULES = [
    (r"^token_embedding\.", "shared."), (r"^norm\.", "encoder.final_layer_norm."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.block.\1.layer.0.layer_norm."),
    (r"^blocks\.(\d+)\.attn\.", r"encoder.block.\1.layer.0.SelfAttention."),
    (r"^blocks\.(\d+)\.pos_embedding\.embedding\.", r"encoder.block.\1.layer.0.SelfAttention.relative_attention_bias."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.block.\1.layer.1.layer_norm."),
    (r"^blocks\.(\d+)\.ffn\.gate\.0\.", r"encoder.block.\1.layer.1.DenseReluDense.wi_0."),
    (r"^blocks\.(\d+)\.ffn\.fc1\.", r"encoder.block.\1.layer.1.DenseReluDense.wi_1."),
    (r"^blocks\.(\d+)\.ffn\.fc2\.", r"encoder.block.\1.layer.1.DenseReluDense.wo.")]


def rename_keys(state: dict[str, Any], rules: list[tuple[str, str]]) -> dict[str, Any]:
    out = {}
    for key, value in state.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


def convert_wan22_vae(state: dict[str, Any]) -> dict[str, Any]:
    return rename_keys(state, _VAE22_RULES)


def load_vae(file: WeightsFile, source: Path | None = None) -> Any:
    """AutoencoderKLWan (fp32, as Wan runs it) from a Wan2.1 or Wan2.2 VAE file."""
    import torch
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    state = read_state_dict(file, torch.float32)
    if file.family == "wan2.2" and file.layout == "original":
        state = convert_wan22_vae(state)
    config = str(config_dir("vae", file.family, source))
    _require_weights(AutoencoderKLWan, config, state, convert_wan_vae_to_diffusers, file)
    model = AutoencoderKLWan.from_single_file(state, config=config, local_files_only=True,
                                              **{dtype_kwarg(): torch.float32})
    _check_materialized(model, file)
    return model


def _fill(model_factory: Any, state: dict[str, Any], file: WeightsFile, dtype: Any, prefix: str = "") -> Any:
    """Build a transformers model without weights and assign the file's tensors to it (`prefix` taken off
    the file's names when the model's have none: transformers 5 dropped CLIPVisionModel's `vision_model.`)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = model_factory()
    wanted = model.state_dict()
    if prefix and not any(k.startswith(prefix) for k in wanted):
        state = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise _no_weights(file, missing)
    model.load_state_dict({k: state[k].to(dtype) for k in wanted}, strict=True, assign=True)
    _check_materialized(model, file)
    return model.eval()


def load_text_encoder(file: WeightsFile, dtype: Any, source: Path | None = None) -> Any:
    """UMT5EncoderModel from a ComfyUI (or Wan-layout) UMT5-XXL file."""
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config.from_pretrained(str(config_dir("text_encoder", None, source)))
    state = read_state_dict(file, dtype)
    if file.layout == "wan":
        state = rename_keys(state, _WAN_T5_RULES)
    if "shared.weight" in state:
        state.setdefault("encoder.embed_tokens.weight", state["shared.weight"])
    return _fill(lambda: UMT5EncoderModel(config), state, file, dtype)


def load_image_encoder(file: WeightsFile, source: Path | None = None) -> tuple[Any, Any]:
    """CLIPVisionModel (fp32) and its CLIPImageProcessor, from a CLIP vision file (clip_vision_h.safetensors)."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig.from_pretrained(str(config_dir("image_encoder", None, source)))
    state = {k: v for k, v in read_state_dict(file, torch.float32).items() if not k.startswith("visual_projection.")}
    model = _fill(lambda: CLIPVisionModel(config), state, file, torch.float32, prefix="vision_model.")
    processor = CLIPImageProcessor.from_pretrained(str(config_dir("image_processor", None, source)))
    return model, processor


def load_scheduler(kind: str, source: Path | None = None) -> Any:
    from diffusers import UniPCMultistepScheduler

    config = UniPCMultistepScheduler.load_config(str(config_dir("scheduler", None, source)))
    shift = {} if source is not None else {"flow_shift": FLOW_SHIFTS.get(kind, 3.0)}
    return UniPCMultistepScheduler.from_config(config, **shift)


# ---------------------------------------------------------------------------
# The UMT5 tokenizer, from a SentencePiece model (no sentencepiece package needed)


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte, i = buf[i], i + 1
        value, shift = value | (byte & 0x7F) << shift, shift + 7
        if not byte & 0x80:
            return value, i


def _fields(buf: bytes) -> Iterator[tuple[int, Any]]:
    """(field number, value) of a protobuf message: ints, or bytes for length-delimited and fixed fields."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        wire = key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire in (1, 2, 5):
            size, i = _varint(buf, i) if wire == 2 else (8 if wire == 1 else 4, i)
            value, i = buf[i:i + size], i + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield key >> 3, value


def tokenizer_from_spiece(data: bytes, model_max_length: int = 512) -> Any:
    """A fast T5-style tokenizer from SentencePiece model bytes: Unigram pieces, its normalizer map, `</s>` at the end."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pieces: list[tuple[str, float, int]] = []
    charsmap = b""
    for field, value in _fields(data):
        if field == 1:  # SentencePiece: piece (1), score (2, float), type (3: 1 normal, 2 unknown, 3 control)
            piece, score, kind = "", 0.0, 1
            for sub, item in _fields(value):
                if sub == 1:
                    piece = item.decode("utf-8")
                elif sub == 2:
                    score = struct.unpack("<f", item)[0]
                elif sub == 3:
                    kind = item
            pieces.append((piece, score, kind))
        elif field == 3:  # NormalizerSpec: precompiled_charsmap (2)
            charsmap = dict(_fields(value)).get(2, b"")
    if not pieces:
        raise ValueError("no pieces: not a SentencePiece model")
    unk = next((i for i, p in enumerate(pieces) if p[2] == 2), 2)
    tok = Tokenizer(models.Unigram([(p, s) for p, s, _ in pieces], unk_id=unk, byte_fallback=False))
    steps = ([normalizers.Precompiled(charsmap)] if charsmap else []) + [normalizers.Replace(Regex(" {2,}"), " ")]
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    eos = pieces[1][0] if len(pieces) > 1 else "</s>"
    tok.post_processor = processors.TemplateProcessing(single=f"$A {eos}", pair=f"$A {eos} $B {eos}",
                                                       special_tokens=[(eos, 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=pieces[0][0], eos_token=eos,
                                   unk_token=pieces[unk][0] if unk < len(pieces) else "<unk>",
                                   model_max_length=model_max_length)


def load_tokenizer(text_encoder: WeightsFile, folder: Path | None = None, source: Path | None = None) -> Any:
    """The UMT5 tokenizer: from `folder` (a tokenizer folder) or from the text encoder file's `spiece_model`."""
    settings_path = config_dir("tokenizer", None, source) / "tokenizer_config.json"
    settings = json.loads(settings_path.read_text(encoding="utf-8")) if settings_path.is_file() else {}
    length = int(settings.get("model_max_length") or 512)
    if folder is not None and ((folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    if folder is not None and (folder / "spiece.model").is_file():
        data, where = (folder / "spiece.model").read_bytes(), folder / "spiece.model"
    elif text_encoder.has_tokenizer:
        from safetensors import safe_open

        with safe_open(str(text_encoder.path), framework="pt", device="cpu") as fh:
            data = fh.get_tensor("spiece_model").numpy().tobytes()
        where = text_encoder.path
    else:
        raise SingleFileError(f"{text_encoder.path}: no UMT5 tokenizer: this file carries none; {TOKENIZER_HELP}")
    try:
        return tokenizer_from_spiece(data, length)
    except (ValueError, IndexError, UnicodeDecodeError, struct.error) as exc:
        raise SingleFileError(f"{where}: not a usable SentencePiece tokenizer ({exc}); {TOKENIZER_HELP}") from None
