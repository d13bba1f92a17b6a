"""Single-file Wan weights, as ComfyUI users have them: discovery, pairing, loading, errors.

Headers first (no torch): files shaped like the real downloads (only their safetensors
headers are written) are classified and paired. Then a tiny diffusers Wan model is
written out as single files in the ORIGINAL key layout (diffusers' single-file key maps,
inverted here and checked against diffusers' own conversion), plus a GGUF transformer,
in ComfyUI's folders; loading them through the shipped loading path must render the
same frames as the diffusers folder.
"""
from __future__ import annotations

import json
import re
import struct
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import require_render_stack
from deforum_wan.renderer import single_file
from deforum_wan.renderer.models import (
    IncompleteModel,
    ModelError,
    SingleFileModel,
    find_model,
    format_models_table,
    scan_models,
)
from deforum_wan.renderer.pipelines import ClipRequest
from deforum_wan.renderer.single_file import CONFIGS_DIR, CONFIGS_ENV, SingleFileError, classify_file

# --- diffusers -> original (Wan/ComfyUI) key layouts -------------------------------------
# The inverse of diffusers' convert_wan_transformer_to_diffusers / convert_wan_vae_to_diffusers
# (diffusers/loaders/single_file_utils.py); `test_key_maps_invert_diffusers_own` checks it.

_T_TOP = [("condition_embedder.time_embedder.linear_1.", "time_embedding.0."),
          ("condition_embedder.time_embedder.linear_2.", "time_embedding.2."),
          ("condition_embedder.text_embedder.linear_1.", "text_embedding.0."),
          ("condition_embedder.text_embedder.linear_2.", "text_embedding.2."),
          ("condition_embedder.time_proj.", "time_projection.1."),
          ("condition_embedder.image_embedder.norm1.", "img_emb.proj.0."),
          ("condition_embedder.image_embedder.ff.net.0.proj.", "img_emb.proj.1."),
          ("condition_embedder.image_embedder.ff.net.2.", "img_emb.proj.3."),
          ("condition_embedder.image_embedder.norm2.", "img_emb.proj.4."),
          ("condition_embedder.image_embedder.pos_embed", "img_emb.emb_pos"),
          ("scale_shift_table", "head.modulation"), ("proj_out.", "head.head.")]
_T_BLOCK = [("attn1.", "self_attn."), ("attn2.", "cross_attn."), (".to_out.0.", ".o."), (".to_q.", ".q."),
            (".to_k.", ".k."), (".to_v.", ".v."), (".add_k_proj.", ".k_img."), (".add_v_proj.", ".v_img."),
            (".norm_added_k.", ".norm_k_img."), ("ffn.net.0.proj.", "ffn.0."), ("ffn.net.2.", "ffn.2."),
            (".scale_shift_table", ".modulation"), ("proj_in.", "before_proj."), ("proj_out.", "after_proj.")]
_RES = {"norm1.gamma": "residual.0.gamma", "conv1": "residual.2", "norm2.gamma": "residual.3.gamma",
        "conv2": "residual.6", "conv_shortcut": "shortcut"}


def transformer_to_original(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        new = key
        if key.startswith(("blocks.", "vace_blocks.")):
            for old, rep in _T_BLOCK:
                new = new.replace(old, rep)
            new = re.sub(r"\.norm([23])\.", lambda m: ".norm3." if m[1] == "2" else ".norm2.", new)
        else:
            new = next((rep + key[len(old):] for old, rep in _T_TOP if key.startswith(old)), key)
        out[new] = value
    return out


def _res(rest: str) -> str:
    return next((rep + rest[len(old):] for old, rep in _RES.items() if rest.startswith(old)), rest)


def vae_to_original(state: dict) -> dict:
    """Wan2.1 VAE (num_res_blocks=2, as every real one: diffusers' map assumes it)."""
    rules = [(r"^(en|de)coder\.mid_block\.resnets\.(\d)\.(.*)$", lambda m: f"{m[1]}coder.middle.{2 * int(m[2])}.{_res(m[3])}"),
             (r"^(en|de)coder\.mid_block\.attentions\.0\.(.*)$", lambda m: f"{m[1]}coder.middle.1.{m[2]}"),
             (r"^(en|de)coder\.norm_out\.(.*)$", lambda m: f"{m[1]}coder.head.0.{m[2]}"),
             (r"^(en|de)coder\.conv_out\.(.*)$", lambda m: f"{m[1]}coder.head.2.{m[2]}"),
             (r"^(en|de)coder\.conv_in\.(.*)$", lambda m: f"{m[1]}coder.conv1.{m[2]}"),
             (r"^quant_conv\.(.*)$", lambda m: f"conv1.{m[1]}"), (r"^post_quant_conv\.(.*)$", lambda m: f"conv2.{m[1]}"),
             (r"^encoder\.down_blocks\.(\d+)\.(.*)$", lambda m: f"encoder.downsamples.{m[1]}.{_res(m[2])}"),
             (r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)$",
              lambda m: f"decoder.upsamples.{4 * int(m[1]) + int(m[2])}.{_res(m[3])}"),
             (r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)$", lambda m: f"decoder.upsamples.{4 * int(m[1]) + 3}.{m[2]}")]
    out = {}
    for key, value in state.items():
        new = key
        for pattern, rep in rules:
            match = re.match(pattern, key)
            if match:
                new = rep(match)
                break
        out[new] = value
    return out


# Real Wan2.2 VAE keys (wan/modules/vae2_2.py, Wan-Video/Wan2.2 42bf4cf) and their AutoencoderKLWan names
# (diffusers scripts/convert_wan_to_diffusers.py convert_vae_22).
WAN22_VAE_KEYS = [
    ("encoder.conv1.weight", "encoder.conv_in.weight"),
    ("encoder.downsamples.0.downsamples.0.residual.0.gamma", "encoder.down_blocks.0.resnets.0.norm1.gamma"),
    ("encoder.downsamples.0.downsamples.0.residual.2.weight", "encoder.down_blocks.0.resnets.0.conv1.weight"),
    ("encoder.downsamples.0.downsamples.1.residual.3.gamma", "encoder.down_blocks.0.resnets.1.norm2.gamma"),
    ("encoder.downsamples.0.downsamples.1.residual.6.bias", "encoder.down_blocks.0.resnets.1.conv2.bias"),
    ("encoder.downsamples.0.downsamples.2.resample.1.weight", "encoder.down_blocks.0.downsampler.resample.1.weight"),
    ("encoder.downsamples.1.downsamples.0.shortcut.weight", "encoder.down_blocks.1.resnets.0.conv_shortcut.weight"),
    ("encoder.downsamples.1.downsamples.2.time_conv.bias", "encoder.down_blocks.1.downsampler.time_conv.bias"),
    ("encoder.middle.0.residual.0.gamma", "encoder.mid_block.resnets.0.norm1.gamma"),
    ("encoder.middle.2.residual.6.weight", "encoder.mid_block.resnets.1.conv2.weight"),
    ("encoder.middle.1.to_qkv.weight", "encoder.mid_block.attentions.0.to_qkv.weight"),
    ("encoder.head.0.gamma", "encoder.norm_out.gamma"),
    ("encoder.head.2.bias", "encoder.conv_out.bias"),
    ("conv1.weight", "quant_conv.weight"),
    ("conv2.bias", "post_quant_conv.bias"),
    ("decoder.conv1.weight", "decoder.conv_in.weight"),
    ("decoder.middle.1.proj.bias", "decoder.mid_block.attentions.0.proj.bias"),
    ("decoder.upsamples.0.upsamples.0.residual.0.gamma", "decoder.up_blocks.0.resnets.0.norm1.gamma"),
    ("decoder.upsamples.0.upsamples.3.resample.1.weight", "decoder.up_blocks.0.upsampler.resample.1.weight"),
    ("decoder.upsamples.0.upsamples.3.time_conv.bias", "decoder.up_blocks.0.upsampler.time_conv.bias"),
    ("decoder.upsamples.3.upsamples.0.shortcut.weight", "decoder.up_blocks.3.resnets.0.conv_shortcut.weight"),
    ("decoder.head.2.weight", "decoder.conv_out.weight"),
]


# --- files shaped like the real downloads (headers only) ---------------------------------

def write_header(path: Path, tensors: dict[str, tuple[str, tuple[int, ...]]], extra: bytes = b"") -> Path:
    """A .safetensors file whose header lists `tensors` (name: (dtype, shape)); the data is left out."""
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        size = int(np.prod(shape)) * {"F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "U8": 1}[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + extra)
    return path


def fake_transformer(path: Path, width: int, channels: int = 16, dtype: str = "F16", image: bool = False,
                     flf: bool = False, vace: bool = False, prefix: str = "model.diffusion_model.") -> Path:
    t = {"patch_embedding.weight": (dtype, (width, channels, 1, 2, 2)), "head.modulation": ("F32", (1, 2, width)),
         "blocks.0.self_attn.q.weight": (dtype, (width, width)), "blocks.0.ffn.0.weight": (dtype, (width * 2, width))}
    if dtype == "F8_E4M3" and "scaled" in path.name:
        t["scaled_fp8"] = ("F8_E4M3", (0,))
        t["blocks.0.self_attn.q.scale_weight"] = ("F32", (1,))
    if image:
        t["img_emb.proj.0.weight"] = ("F32", (1280,))
    if flf:
        t["img_emb.emb_pos"] = ("F32", (1, 514, 1280))
    if vace:
        t["vace_blocks.0.before_proj.weight"] = (dtype, (width, width))
        t["vace_patch_embedding.weight"] = (dtype, (width, 96, 1, 2, 2))
    return write_header(path, {prefix + k: v for k, v in t.items()})


def fake_text_encoder(path: Path, dtype: str = "F8_E4M3", tokenizer: bool = True, scaled: bool = True) -> Path:
    t = {"shared.weight": (dtype, (256384, 4096)), "encoder.block.0.layer.0.SelfAttention.q.weight": (dtype, (4096, 4096)),
         "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight": ("F32", (32, 64)),
         "encoder.final_layer_norm.weight": ("F32", (4096,))}
    if scaled:
        t.update({"scaled_fp8": ("F8_E4M3", (0,)), "encoder.block.0.layer.0.SelfAttention.q.scale_weight": ("F32", (1,))})
    if tokenizer:
        t["spiece_model"] = ("U8", (4548313,))
    return write_header(path, t)


def fake_vae(path: Path, z_dim: int = 16) -> Path:
    return write_header(path, {"decoder.middle.0.residual.0.gamma": ("F32", (384, 1, 1, 1)),
                               "conv1.weight": ("F32", (2 * z_dim, 2 * z_dim, 1, 1, 1)),
                               "encoder.conv1.weight": ("F32", (96, 3, 3, 3, 3))})


def fake_clip_vision(path: Path) -> Path:
    return write_header(path, {"vision_model.embeddings.patch_embedding.weight": ("F16", (1280, 3, 14, 14)),
                               "vision_model.encoder.layers.0.self_attn.q_proj.weight": ("F16", (1280, 1280)),
                               "vision_model.post_layernorm.weight": ("F16", (1280,))})


def test_classify_the_real_downloads_from_their_headers(tmp_path: Path) -> None:
    d = tmp_path
    cases = {
        fake_transformer(d / "wan2.1_t2v_1.3B_fp16.safetensors", 1536): ("t2v", None, "1.3B", "fp16", "wan2.1-t2v-1.3b"),
        fake_transformer(d / "wan2.1_t2v_14B_bf16.safetensors", 5120, dtype="BF16", prefix=""):
            ("t2v", None, "14B", "bf16", "wan2.1-t2v-14b"),
        fake_transformer(d / "wan2.1_vace_14B_fp8_e4m3fn.safetensors", 5120, dtype="F8_E4M3", vace=True):
            ("vace", None, "14B", "fp8_e4m3fn", "wan2.1-vace-14b"),
        fake_transformer(d / "wan2.1_i2v_480p_14B_fp16.safetensors", 5120, 36, image=True):
            ("i2v", None, "14B", "fp16", "wan2.1-i2v-14b-480p"),
        fake_transformer(d / "wan2.1_i2v_720p_14B_fp8_scaled.safetensors", 5120, 36, dtype="F8_E4M3", image=True):
            ("i2v", None, "14B", "fp8_e4m3fn", "wan2.1-i2v-14b-720p"),
        fake_transformer(d / "wan2.1_flf2v_720p_14B_fp16.safetensors", 5120, 36, image=True, flf=True):
            ("flf2v", None, "14B", "fp16", "wan2.1-flf2v-14b-720p"),
        fake_transformer(d / "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", 5120, dtype="F8_E4M3"):
            ("a14b-t2v", "high", "14B", "fp8_e4m3fn", "wan2.2-t2v-a14b"),
        fake_transformer(d / "wan2.2_i2v_low_noise_14B_fp16.safetensors", 5120, 36):
            ("a14b-i2v", "low", "14B", "fp16", "wan2.2-i2v-a14b"),
        fake_transformer(d / "wan2.2_ti2v_5B_fp16.safetensors", 3072, 48): ("ti2v-5b", None, "5B", "fp16", "wan2.2-ti2v-5b"),
    }
    for path, (kind, expert, size, dtype, variant) in cases.items():
        f = classify_file(path)
        assert (f.role, f.kind, f.expert, f.size_label, f.dtype, f.variant) == ("transformer", kind, expert, size, dtype,
                                                                                variant), path.name
        assert (CONFIGS_DIR / "transformer" / variant / "config.json").is_file()
    assert classify_file(d / "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors").scaled
    assert classify_file(d / "wan2.1_i2v_480p_14B_fp16.safetensors").family == "wan2.1"
    assert classify_file(d / "wan2.2_ti2v_5B_fp16.safetensors").family == "wan2.2"
    te = classify_file(fake_text_encoder(d / "umt5_xxl_fp8_e4m3fn_scaled.safetensors"))
    assert (te.role, te.dtype, te.scaled, te.has_tokenizer, te.layout) == ("text_encoder", "fp8_e4m3fn", True, True, "hf")
    assert "fp8_e4m3fn scaled" in te.describe()
    assert classify_file(fake_vae(d / "wan_2.1_vae.safetensors")).family == "wan2.1"
    assert classify_file(fake_vae(d / "wan2.2_vae.safetensors", 48)).family == "wan2.2"
    clip = classify_file(fake_clip_vision(d / "clip_vision_h.safetensors"))
    assert (clip.role, clip.width) == ("clip_vision", 1280)
    # not Wan: Flux's T5 (a position bias in its first layer only), an SD VAE
    assert classify_file(write_header(d / "t5xxl_fp16.safetensors", {"shared.weight": ("F16", (32128, 4096)),
                         "encoder.block.0.layer.0.SelfAttention.q.weight": ("F16", (4096, 4096)),
                         "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": ("F16", (32, 64))})) is None
    assert classify_file(write_header(d / "sd_vae.safetensors", {"decoder.conv_in.weight": ("F32", (512, 4, 3, 3))})) is None


def test_unusable_files_say_why(tmp_path: Path) -> None:
    with pytest.raises(SingleFileError, match="high_noise or low_noise"):
        classify_file(fake_transformer(tmp_path / "wan2.2_t2v_14B_fp16.safetensors", 5120, 36))
    (tmp_path / "broken.safetensors").write_bytes(b"\xff" * 20)
    with pytest.raises(SingleFileError, match="broken.safetensors"):
        classify_file(tmp_path / "broken.safetensors")
    quant = write_header(tmp_path / "wan_mixed.safetensors", {"patch_embedding.weight": ("F16", (5120, 16, 1, 2, 2)),
                                                              "head.modulation": ("F32", (1, 2, 5120)),
                                                              "blocks.0.self_attn.q.comfy_quant": ("U8", (10,))})
    with pytest.raises(SingleFileError, match="comfy_quant"):
        classify_file(quant)


def test_pairing_in_comfyui_folders_and_what_is_missing(tmp_path: Path) -> None:
    """<models>/wan is the models folder; ComfyUI's folders sit beside it (and may sit inside it)."""
    from deforum_wan.service import doctor

    models = tmp_path / "models"
    root = models / "wan"
    root.mkdir(parents=True)
    fake_transformer(models / "diffusion_models" / "wan2.1_i2v_480p_14B_fp16.safetensors", 5120, 36, image=True)
    fake_transformer(models / "diffusion_models" / "wan" / "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", 5120,
                     dtype="F8_E4M3")
    fake_transformer(models / "unet" / "wan2.2_i2v_low_noise_14B_fp16.safetensors", 5120, 36)
    fake_text_encoder(models / "text_encoders" / "umt5_xxl_fp16.safetensors", dtype="F16", tokenizer=False, scaled=False)

    infos, problems = scan_models(root)
    assert infos == []
    by_name = {p.model.name: p for p in problems if isinstance(p, IncompleteModel)}
    i2v = str(by_name["wan2.1_i2v_480p_14B_fp16.safetensors"])
    assert "missing" in i2v and "wan2.1 VAE" in i2v and "CLIP vision" in i2v and "tokenizer" in i2v
    assert "umt5_xxl_fp16.safetensors" in i2v  # what was found is said too
    high = str(by_name["wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors"])
    assert "low-noise expert" in high
    assert any("wan2.2_i2v_low_noise_14B_fp16.safetensors" in str(p) and "without its high-noise" in str(p)
               for p in problems)
    report = doctor.diagnose(models_dir=root, probe=False)
    text = doctor.format_report(report)
    assert "wan2.1_i2v_480p_14B_fp16.safetensors" in text and "CLIP vision" in text
    assert any("wan2.1_i2v_480p_14B_fp16.safetensors" in fix for fix in report["fixes"])
    with pytest.raises(IncompleteModel, match="CLIP vision"):
        find_model("wan2.1_i2v_480p_14B_fp16.safetensors", root)

    # the missing parts arrive: a tokenizer-carrying text encoder, both VAEs, CLIP vision, the low-noise expert
    fake_text_encoder(root / "text_encoders" / "umt5_xxl_fp8_e4m3fn_scaled.safetensors")
    fake_vae(models / "vae" / "wan_2.1_vae.safetensors")
    fake_clip_vision(models / "clip_vision" / "clip_vision_h.safetensors")
    fake_transformer(models / "diffusion_models" / "wan" / "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors", 5120,
                     dtype="F8_E4M3")
    fake_transformer(root / "wan2.2_ti2v_5B_fp16.safetensors", 3072, 48)  # needs the Wan2.2 VAE, still absent
    infos, problems = scan_models(root)
    assert [(i.name, i.kind) for i in infos] == [("wan2.1_i2v_480p_14B_fp16.safetensors", "i2v"),
                                                 ("wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", "a14b-t2v")]
    i2v_model, a14b = infos
    assert isinstance(i2v_model, SingleFileModel) and i2v_model.path.name == i2v_model.name
    assert i2v_model.text_encoder.name == "umt5_xxl_fp8_e4m3fn_scaled.safetensors"  # it carries the tokenizer
    assert i2v_model.image_encoder.name == "clip_vision_h.safetensors" and i2v_model.vae.family == "wan2.1"
    assert a14b.transformer_2.name == "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors"
    assert a14b.spec.label == "Wan2.2 T2V-A14B" and a14b.image_encoder is None
    [ti2v] = [p for p in problems if "ti2v" in str(p)]
    assert isinstance(ti2v, IncompleteModel) and "wan2.2 VAE" in str(ti2v)
    table = format_models_table(infos)
    assert "single-file models" in table and "low-noise expert wan2.2_t2v_low_noise_14B_fp8_scaled" in table
    assert "tokenizer inside the text encoder" in table
    assert find_model("a14b-t2v", root) == a14b
    assert find_model(i2v_model.path) == i2v_model  # by path, paired from its own folders
    assert find_model("wan2.1_i2v_480p_14B_fp16", root) == i2v_model
    with pytest.raises(ModelError, match="not a model: choose a transformer"):
        find_model(models / "vae" / "wan_2.1_vae.safetensors")
    report = doctor.diagnose(models_dir=root, probe=False)
    pairing = {m["name"]: m for m in report["models"]}["wan2.1_i2v_480p_14B_fp16.safetensors"]
    assert pairing["files"]["image_encoder"].endswith("clip_vision_h.safetensors")
    assert "clip_vision_h.safetensors" in doctor.format_report(report)


def test_a_tokenizer_folder_completes_a_text_encoder_without_one(tmp_path: Path) -> None:
    fake_transformer(tmp_path / "diffusion_models" / "wan2.1_t2v_1.3B_fp16.safetensors", 1536)
    fake_text_encoder(tmp_path / "text_encoders" / "umt5-xxl-enc-bf16.safetensors", "BF16", tokenizer=False, scaled=False)
    fake_vae(tmp_path / "vae" / "wan_2.1_vae.safetensors")
    assert scan_models(tmp_path)[0] == []
    diffusers = tmp_path / "Wan2.1-T2V-1.3B-Diffusers"  # any Wan diffusers folder lends its tokenizer
    (diffusers / "tokenizer").mkdir(parents=True)
    (diffusers / "model_index.json").write_text("{}")
    (diffusers / "tokenizer" / "tokenizer_config.json").write_text("{}")
    [model], _ = scan_models(tmp_path)
    assert model.tokenizer == diffusers / "tokenizer"
    assert find_model(model.path).tokenizer == diffusers / "tokenizer"  # the same pairing when named by path
    (tmp_path / "text_encoders" / "umt5-xxl").mkdir()
    (tmp_path / "text_encoders" / "umt5-xxl" / "spiece.model").write_bytes(b"x")
    [model], _ = scan_models(tmp_path)
    assert model.tokenizer == tmp_path / "text_encoders" / "umt5-xxl" and model.spec.sizes == ((832, 480), (480, 832))


# --- real tiny weights in ComfyUI's layout ---------------------------------------------------

def _spiece_model(tokenizer) -> bytes:
    """A SentencePiece ModelProto (pieces with scores and types) of the tiny tokenizer's Unigram vocabulary."""
    def varint(n: int) -> bytes:
        out = b""
        while True:
            out += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
            n >>= 7
            if not n:
                return out

    def field(number: int, wire: int, payload: bytes) -> bytes:
        head = varint(number << 3 | wire)
        return head + (varint(len(payload)) + payload if wire == 2 else payload)

    vocab = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["vocab"]
    types = {"<pad>": 3, "</s>": 3, "<unk>": 2}
    pieces = b"".join(field(1, 2, field(1, 2, p.encode()) + field(2, 5, struct.pack("<f", s)) +
                                field(3, 0, varint(types.get(p, 1)))) for p, s in vocab)
    return pieces + field(3, 2, field(1, 2, b"identity"))


def _write_gguf(path: Path, state: dict) -> None:
    """A GGUF transformer as ComfyUI-GGUF writes one: Q8_0 where the rows allow it, F16/F32 elsewhere, the 5D patch
    embedding stored flattened (and quantized) with its `comfy.gguf.orig_shape`."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch="wan")
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for name, tensor in state.items():
        data = tensor.detach().float().numpy()
        reshaped = data.ndim > 4
        if reshaped:
            writer.add_array(f"comfy.gguf.orig_shape.{name}", [int(n) for n in data.shape])
            data = data.reshape(data.shape[0], -1)
        if data.ndim == 2 and data.shape[-1] % 32 == 0 and ("embedding" not in name or reshaped):
            qtype = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, data.astype(np.float16 if data.ndim >= 2 else np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


KINDS = ("t2v", "i2v", "flf2v", "vace")


@pytest.fixture(scope="module")
def comfy(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Tiny Wan2.1 T2V, I2V, FLF2V and VACE models as diffusers folders (`ref[kind]`) and as ComfyUI single files
    beside `root`: one transformer file each, and the text encoder, VAE and CLIP vision they share."""
    require_render_stack()
    pytest.importorskip("gguf")
    import torch
    from diffusers import AutoencoderKLWan
    from safetensors.torch import save_file

    from deforum_wan.renderer import tiny

    base = tmp_path_factory.mktemp("single-files")
    models = base / "models"
    root = models / "wan"
    root.mkdir(parents=True)

    def save(path: Path, state: dict) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(path))
        return path

    refs, pipes, files = {}, {}, {}
    for kind in KINDS:
        pipe = tiny.BUILDERS[kind]()
        torch.manual_seed(11)  # diffusers' Wan2.1 VAE key map assumes num_res_blocks=2, as every real VAE has
        pipe.register_modules(vae=AutoencoderKLWan(base_dim=4, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                                   temperal_downsample=[False, True, True]).eval())
        refs[kind] = base / f"tiny-wan2.1-{kind}-diffusers"
        pipe.save_pretrained(str(refs[kind]), safe_serialization=True)
        tiny._make_portable(refs[kind])
        pipes[kind] = pipe
        original = transformer_to_original(pipe.transformer.state_dict())
        files[kind] = save(models / "diffusion_models" / f"wan2.1_{kind}_tiny_fp32.safetensors",
                           {f"model.diffusion_model.{k}": v for k, v in original.items()})
    t2v = pipes["t2v"]
    text = {k: v for k, v in t2v.text_encoder.state_dict().items() if k != "encoder.embed_tokens.weight"}
    spiece = torch.tensor(list(_spiece_model(t2v.tokenizer)), dtype=torch.uint8)
    ns = SimpleNamespace(
        ref=refs["t2v"], refs=refs, root=root, models=models, pipe=t2v, pipes=pipes, files=files,
        transformer=files["t2v"],
        text_encoder=save(models / "text_encoders" / "umt5_xxl_tiny_fp32.safetensors", {**text, "spiece_model": spiece}),
        vae=save(models / "vae" / "wan_2.1_vae_tiny.safetensors", vae_to_original(t2v.vae.state_dict())),
        clip=save(models / "clip_vision" / "clip_vision_tiny.safetensors",  # ComfyUI's (transformers 4) key names
                  {**{("" if k.startswith("vision_model.") else "vision_model.") + k: v
                      for k, v in pipes["i2v"].image_encoder.state_dict().items()},
                   "visual_projection.weight": torch.zeros(4, 8)}),
        gguf=models / "diffusion_models" / "wan2.1-t2v-tiny-Q8_0.gguf",
    )
    _write_gguf(ns.gguf, transformer_to_original(t2v.transformer.state_dict()))
    return ns


REQUEST = dict(prompt="a red cat dances in the forest", negative_prompt="blurry", num_frames=9, width=32, height=32,
               steps=1, guidance=5.0, seed=7)


def _render(pipes, kind: str) -> np.ndarray:
    if kind in ("i2v", "flf2v"):
        image = np.linspace(0, 255, 32 * 32 * 3).reshape(32, 32, 3).astype(np.uint8)
        return pipes.i2v(ClipRequest(**REQUEST, image=image))
    if kind == "vace":
        return pipes.vace(ClipRequest(**REQUEST, known_frames=[np.full((32, 32, 3), 90, np.uint8)] * 2))
    return pipes.t2v(ClipRequest(**REQUEST))


@pytest.fixture(scope="module")
def reference_frames(comfy: SimpleNamespace) -> dict[str, np.ndarray]:
    from deforum_wan.renderer.loading import load_pipelines
    from deforum_wan.renderer.models import classify_model

    frames = {}
    for kind in KINDS:
        pipes = load_pipelines(classify_model(comfy.refs[kind]), device="cpu")
        frames[kind] = _render(pipes, kind)
        pipes.free()
    return frames


def test_key_maps_invert_diffusers_own(comfy: SimpleNamespace) -> None:
    from diffusers import WanVACETransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers, convert_wan_vae_to_diffusers

    from deforum_wan.renderer import tiny

    i2v = tiny._transformer(in_channels=36, image_dim=8, added_kv_proj_dim=24, pos_embed_seq_len=10)
    vace = WanVACETransformer3DModel(**tiny._transformer_kwargs(num_layers=3, vace_layers=[0, 2], vace_in_channels=96))
    for model in (comfy.pipe.transformer, i2v, vace):
        state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        back = convert_wan_transformer_to_diffusers(transformer_to_original(state))
        # diffusers 0.42 leaves FLF2V's img_emb.emb_pos unmapped; the loader renames it itself
        back = {("condition_embedder.image_embedder.pos_embed" if k == "img_emb.emb_pos" else k): v for k, v in back.items()}
        assert back == state
    vae_state = {k: tuple(v.shape) for k, v in comfy.pipe.vae.state_dict().items()}
    assert convert_wan_vae_to_diffusers(vae_to_original(vae_state)) == vae_state
    converted = single_file.convert_wan22_vae({old: 0 for old, _new in WAN22_VAE_KEYS})
    assert list(converted) == [new for _old, new in WAN22_VAE_KEYS]


def test_the_tiny_files_are_found_paired_and_classified(comfy: SimpleNamespace) -> None:
    infos, problems = scan_models(comfy.root)
    assert problems == []
    by_name = {i.name: i for i in infos}
    model = by_name[comfy.transformer.name]
    assert (model.kind, model.text_encoder.path, model.vae.path) == ("t2v", comfy.text_encoder, comfy.vae)
    assert model.transformer.width == 24 and model.transformer.variant is None  # no official size: no shipped config
    assert model.text_encoder.has_tokenizer and model.text_encoder.dtype == "fp32"
    gguf_model = by_name[comfy.gguf.name]
    assert gguf_model.transformer.is_gguf and gguf_model.transformer.dtype == "Q8_0"
    # the patch embedding was stored flattened: its original 5D shape comes from the metadata
    tensors, _meta = single_file.read_gguf_header(comfy.gguf)
    assert tensors["patch_embedding.weight"] == ("Q8_0", (24, 16, 1, 2, 2))


def test_gguf_header_without_the_gguf_package(comfy: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    with_package = single_file.read_gguf_header(comfy.gguf)
    monkeypatch.setitem(sys.modules, "gguf", None)  # the web UI's own process has no gguf
    without = single_file.read_gguf_header(comfy.gguf)
    assert without[0] == with_package[0]
    assert without[1]["general.architecture"] == with_package[1]["general.architecture"] == "wan"


def test_the_tokenizer_from_the_text_encoder_file_encodes_like_the_original(comfy: SimpleNamespace) -> None:
    built = single_file.load_tokenizer(classify_file(comfy.text_encoder), None, comfy.ref)
    for text in ("a red cat dances", "the dog zooms over a blue sea at night", "xyz unknown words!"):
        assert built(text).input_ids == comfy.pipe.tokenizer(text).input_ids
    assert built.model_max_length == comfy.pipe.tokenizer.model_max_length  # from the config folder
    without = single_file.WeightsFile(path=comfy.text_encoder, role="text_encoder", dtype="fp32", size_bytes=0)
    from_folder = single_file.load_tokenizer(without, comfy.ref / "tokenizer", comfy.ref)  # a tokenizer folder
    assert from_folder("a red cat dances").input_ids == comfy.pipe.tokenizer("a red cat dances").input_ids
    with pytest.raises(SingleFileError, match="no UMT5 tokenizer.*google/umt5-xxl"):
        single_file.load_tokenizer(without, None, comfy.ref)


@pytest.mark.parametrize("kind", KINDS)
def test_single_files_render_the_same_frames_as_the_folder(comfy: SimpleNamespace, reference_frames: dict, kind: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from deforum_wan.renderer.loading import load_pipelines

    monkeypatch.setenv(CONFIGS_ENV, str(comfy.refs[kind]))  # the tiny model's configs instead of the shipped real ones
    info = find_model(comfy.files[kind].name, comfy.root)
    assert info.kind == kind and (info.image_encoder is not None) == (kind in ("i2v", "flf2v"))
    pipes = load_pipelines(info, device="cpu")
    assert type(pipes.main) is type(comfy.pipes[kind]) and pipes.info is info
    frames = _render(pipes, kind)
    assert frames.shape == (9, 32, 32, 3)
    assert np.abs(frames.astype(int) - reference_frames[kind].astype(int)).max() <= 1
    pipes.free()


def test_a_gguf_transformer_renders_close_to_the_folder(comfy: SimpleNamespace, reference_frames: dict,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers.quantizers.gguf.utils import GGUFParameter

    from deforum_wan.renderer.loading import load_pipelines

    monkeypatch.setenv(CONFIGS_ENV, str(comfy.ref))
    pipes = load_pipelines(find_model(comfy.gguf, comfy.root), device="cpu")
    assert any(isinstance(p, GGUFParameter) for p in pipes.main.transformer.parameters())  # still quantized
    frames = pipes.t2v(ClipRequest(**REQUEST))
    diff = np.abs(frames.astype(int) - reference_frames["t2v"].astype(int))
    assert diff.mean() < 1.0 and diff.max() <= 12  # Q8_0 weights: close, not equal (here about 0.14 and 3)
    pipes.free()


def test_scaled_fp8_weights_are_multiplied_out(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    weight = torch.randn(8, 16)
    scale = weight.abs().max() / 448.0
    path = tmp_path / "umt5_scaled.safetensors"
    save_file({"encoder.block.0.layer.0.SelfAttention.q.weight": (weight / scale).to(torch.float8_e4m3fn),
               "encoder.block.0.layer.0.SelfAttention.q.scale_weight": scale.reshape(1),
               "scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn), "plain.weight": weight.to(torch.float8_e4m3fn)},
              str(path))
    file = single_file.WeightsFile(path=path, role="text_encoder", dtype="fp8_e4m3fn", size_bytes=0, scaled=True)
    state = single_file.read_state_dict(file, torch.float32)
    assert set(state) == {"encoder.block.0.layer.0.SelfAttention.q.weight", "plain.weight"}
    q = state["encoder.block.0.layer.0.SelfAttention.q.weight"]
    assert q.dtype == torch.float32 and torch.allclose(q, weight, rtol=0.07, atol=0.02)
    assert state["plain.weight"].dtype == torch.float32


def test_load_errors_name_the_file_and_what_is_missing(comfy: SimpleNamespace, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    from deforum_wan.renderer.loading import load_pipelines

    monkeypatch.setenv(CONFIGS_ENV, str(comfy.ref))
    models = tmp_path / "models"
    for folder, src in (("diffusion_models", comfy.transformer), ("vae", comfy.vae)):
        (models / folder).mkdir(parents=True)
        (models / folder / src.name).write_bytes(src.read_bytes())
    (models / "text_encoders").mkdir()
    text = load_file(str(comfy.text_encoder))
    text.pop("spiece_model")
    save_file(text, str(models / "text_encoders" / "umt5_no_tokenizer.safetensors"))
    with pytest.raises(IncompleteModel, match="tokenizer") as err:
        find_model(models / "diffusion_models" / comfy.transformer.name)
    assert "google/umt5-xxl" in str(err.value)

    # a transformer file with a block missing: the load says which file and which weights
    state = load_file(str(comfy.transformer))
    broken = {k: v for k, v in state.items() if ".blocks.1." not in k}
    save_file(broken, str(models / "diffusion_models" / comfy.transformer.name))
    text["spiece_model"] = torch.tensor(list(b"not a sentencepiece model"), dtype=torch.uint8)
    save_file(text, str(models / "text_encoders" / "umt5_no_tokenizer.safetensors"))
    info = find_model(models / "diffusion_models" / comfy.transformer.name)
    with pytest.raises(ModelError, match="umt5_no_tokenizer.safetensors.*SentencePiece"):
        load_pipelines(info, device="cpu")
    (models / "text_encoders" / "umt5_no_tokenizer.safetensors").write_bytes(comfy.text_encoder.read_bytes())
    info = find_model(models / "diffusion_models" / comfy.transformer.name)
    with pytest.raises(ModelError, match=rf"{comfy.transformer.name}.*(blocks\.1|weights)") as err:
        load_pipelines(info, device="cpu")
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no deep traceback chained

    # the shipped configs: a tiny width matches no official model
    monkeypatch.delenv(CONFIGS_ENV)
    (models / "diffusion_models" / comfy.transformer.name).write_bytes(comfy.transformer.read_bytes())
    with pytest.raises(ModelError, match="matches no official Wan model"):
        load_pipelines(find_model(models / "diffusion_models" / comfy.transformer.name), device="cpu")


def test_the_shipped_configs_describe_the_official_models() -> None:
    """Every shipped transformer config builds (without weights) at the width its header classification expects."""
    require_render_stack()
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLWan, WanTransformer3DModel, WanVACETransformer3DModel
    from transformers import CLIPVisionConfig, UMT5Config

    widths = {"1.3b": 1536, "5b": 3072, "14b": 5120, "a14b": 5120}
    for folder in sorted((CONFIGS_DIR / "transformer").iterdir()):
        config = WanTransformer3DModel.load_config(str(folder))
        cls = WanVACETransformer3DModel if "vace" in folder.name else WanTransformer3DModel
        with init_empty_weights():
            model = cls.from_config(config)
        size = next(part for part in folder.name.split("-")[2:] if part in widths)
        assert model.patch_embedding.weight.shape[0] == widths[size], folder.name
        assert (model.config.in_channels == 36) == (folder.name.split("-")[1] in ("i2v", "flf2v")), folder.name
    assert AutoencoderKLWan.load_config(str(CONFIGS_DIR / "vae" / "wan2.2"))["z_dim"] == 48
    assert AutoencoderKLWan.load_config(str(CONFIGS_DIR / "vae" / "wan2.1"))["z_dim"] == 16
    te = UMT5Config.from_pretrained(str(CONFIGS_DIR / "text_encoder"))
    assert (te.vocab_size, te.d_model, te.num_layers, te.num_heads) == (256384, 4096, 24, 64)
    assert CLIPVisionConfig.from_pretrained(str(CONFIGS_DIR / "image_encoder")).hidden_size == 1280
    assert single_file.config_dir("transformer_2", "wan2.2-t2v-a14b") == CONFIGS_DIR / "transformer" / "wan2.2-t2v-a14b"
    assert single_file.load_scheduler("flf2v").config.flow_shift == 16.0
    assert (CONFIGS_DIR / "README.md").is_file()


def test_real_sized_headers_fit_the_shipped_configs(tmp_path: Path) -> None:
    """Headers with every weight of the official models (names and shapes from the shipped configs, in the original
    layout) are classified to those configs, found complete, and hold every weight diffusers' key map needs."""
    require_render_stack()
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLWan, WanTransformer3DModel, WanVACETransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers, convert_wan_vae_to_diffusers
    from transformers import CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    def shapes(model) -> dict:
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}

    names = {"wan2.1-t2v-1.3b": ["wan2.1_t2v_1.3B_fp16"], "wan2.1-t2v-14b": ["wan2.1_t2v_14B_bf16"],
             "wan2.1-i2v-14b-480p": ["wan2.1_i2v_480p_14B_fp16"], "wan2.1-i2v-14b-720p": ["wan2.1_i2v_720p_14B_fp16"],
             "wan2.1-flf2v-14b-720p": ["wan2.1_flf2v_720p_14B_fp16"], "wan2.1-vace-1.3b": ["wan2.1_vace_1.3B_fp16"],
             "wan2.1-vace-14b": ["wan2.1_vace_14B_fp16"], "wan2.2-ti2v-5b": ["wan2.2_ti2v_5B_fp16"],
             "wan2.2-t2v-a14b": ["wan2.2_t2v_high_noise_14B_fp16", "wan2.2_t2v_low_noise_14B_fp16"],
             "wan2.2-i2v-a14b": ["wan2.2_i2v_high_noise_14B_fp16", "wan2.2_i2v_low_noise_14B_fp16"]}
    assert set(names) == {p.name for p in (CONFIGS_DIR / "transformer").iterdir()}
    for variant, files in names.items():
        cls = WanVACETransformer3DModel if "vace" in variant else WanTransformer3DModel
        config = CONFIGS_DIR / "transformer" / variant
        with init_empty_weights():
            original = transformer_to_original(shapes(cls.from_config(cls.load_config(str(config)))))
        for stem in files:
            path = write_header(tmp_path / "diffusion_models" / f"{stem}.safetensors",
                                {f"model.diffusion_model.{k}": ("F16", v) for k, v in original.items()})
            file = classify_file(path)
            assert file.variant == variant, stem
            state = {("condition_embedder.image_embedder.pos_embed" if k == "img_emb.emb_pos" else k): v
                     for k, v in original.items()}
            single_file._require_weights(cls, str(config), state, convert_wan_transformer_to_diffusers, file)
    with init_empty_weights():
        vae = vae_to_original(shapes(AutoencoderKLWan.from_config(AutoencoderKLWan.load_config(str(CONFIGS_DIR / "vae" / "wan2.1")))))
        text = shapes(UMT5EncoderModel(UMT5Config.from_pretrained(str(CONFIGS_DIR / "text_encoder"))))
        clip = shapes(CLIPVisionModel(CLIPVisionConfig.from_pretrained(str(CONFIGS_DIR / "image_encoder"))))
    vae_file = classify_file(write_header(tmp_path / "vae" / "wan_2.1_vae.safetensors", {k: ("F32", v) for k, v in vae.items()}))
    assert vae_file.family == "wan2.1"
    single_file._require_weights(AutoencoderKLWan, str(CONFIGS_DIR / "vae" / "wan2.1"), vae, convert_wan_vae_to_diffusers,
                                 vae_file)
    fake_vae(tmp_path / "vae" / "wan2.2_vae.safetensors", 48)
    text.pop("encoder.embed_tokens.weight")
    assert classify_file(write_header(tmp_path / "text_encoders" / "umt5_xxl_fp16.safetensors",
                                      {**{k: ("F16", v) for k, v in text.items()}, "spiece_model": ("U8", (100,))})).role \
        == "text_encoder"
    clip_file = write_header(tmp_path / "clip_vision" / "clip_vision_h.safetensors",
                             {("" if k.startswith("vision_model.") else "vision_model.") + k: ("F16", v) for k, v in clip.items()})
    assert classify_file(clip_file).width == 1280
    infos, problems = scan_models(tmp_path)
    assert problems == []
    assert sorted(i.kind for i in infos) == sorted(["t2v", "t2v", "i2v", "i2v", "flf2v", "vace", "vace", "ti2v-5b",
                                                    "a14b-t2v", "a14b-i2v"])
    sizes = {i.name: i.spec.sizes for i in infos}
    assert sizes["wan2.1_t2v_1.3B_fp16.safetensors"] == ((832, 480), (480, 832))
    assert sizes["wan2.2_ti2v_5B_fp16.safetensors"] == ((1280, 704), (704, 1280))
