"""Tiny random Wan (and Qwen, depth) models, saved in the real diffusers/transformers layout.

Tests and the offline demo need models that load through exactly the same
`from_pretrained(folder)` path as a user's downloaded Wan-AI folders, but that
render in well under a second on a CPU and need no network. These are built from
configs with a fixed seed, so two builds give the same weights, and written with
`save_pretrained` (model_index.json plus one subfolder per component).

Everything heavy (torch, diffusers, transformers, tokenizers) is imported inside
the functions so that importing this module stays cheap.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:  # pragma: no cover
    from diffusers import DiffusionPipeline

log = logging.getLogger(__name__)

# Folder names written by make_tiny_models, keyed by kind.
TINY_NAMES: dict[str, str] = {
    "t2v": "tiny-wan2.1-t2v",
    "i2v": "tiny-wan2.1-i2v",
    "flf2v": "tiny-wan2.1-flf2v",
    "vace": "tiny-wan2.1-vace",
    "ti2v-5b": "tiny-wan2.2-ti2v-5b",
    "a14b-t2v": "tiny-wan2.2-t2v-a14b",
    "a14b-i2v": "tiny-wan2.2-i2v-a14b",
    "qwen": "tiny-qwen2.5-instruct",
    "depth": "tiny-depth-anything",
}
WAN_KINDS: tuple[str, ...] = ("t2v", "i2v", "flf2v", "vace", "ti2v-5b", "a14b-t2v", "a14b-i2v")
ALL_KINDS: tuple[str, ...] = WAN_KINDS + ("qwen", "depth")
DEFAULT_KINDS: tuple[str, ...] = WAN_KINDS + ("qwen",)  # the depth model is built when asked for (--kinds depth)

SEED = 0
TEXT_DIM = 32  # width of the tiny text encoder, and so the transformer's text_dim
MAX_TEXT_TOKENS = 16  # the tiny tokenizer's model_max_length; the loader pads prompts to this

# A small vocabulary: the tiny text encoder only has to map words to ids.
_WORDS = (
    "a an the of in on at to and with by from for is are was "
    "cat dog bird fish horse monkey city forest sea sky sun moon star cloud tree river mountain road "
    "red green blue yellow white black grey gold bright dark "
    "dance run fly walk swim zoom pan rotate camera slow fast "
    "beautiful painting photo animation style landscape portrait night day light shadow "
    "worst low quality blurry static ugly"
).split()


# ---------------------------------------------------------------------------
# Tokenizers


def _wan_tokenizer() -> Any:
    """A Unigram tokenizer shaped like UMT5's (pad=0, eos=1, unk=2, '▁' word prefix), built offline."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{w}", -3.0) for w in _WORDS]
    letters = "abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"
    pieces += [(ch, -6.0) for ch in letters]
    pieces += [(f"▁{ch}", -6.5) for ch in letters]

    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=MAX_TEXT_TOKENS,
    )


CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _qwen_tokenizer() -> Any:
    """A byte-level BPE tokenizer with Qwen's ChatML special tokens, trained offline on a few words."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [" ".join(_WORDS)] * 3 + ["system user assistant You are a helpful prompt writer."]
    tok.train_from_iterator(corpus, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=4096,
    )
    wrapped.chat_template = CHATML_TEMPLATE
    return wrapped


# ---------------------------------------------------------------------------
# Components. Each one seeds torch itself, so a component has the same weights in
# every kind that uses it (as all Wan2.1 models share one text encoder and VAE) and
# the order of construction does not matter.

_SEEDS = {"text_encoder": 0, "vae": 1, "vae22": 2, "transformer": 3, "transformer_2": 4, "image_encoder": 5}


def _seed(component: str) -> None:
    import torch

    torch.manual_seed(SEED + _SEEDS[component])


def _text_encoder(vocab_size: int) -> Any:
    from transformers import UMT5Config, UMT5EncoderModel

    _seed("text_encoder")
    config = UMT5Config(
        vocab_size=vocab_size,
        d_model=TEXT_DIM,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return UMT5EncoderModel(config).eval()


def _vae(wan22: bool = False) -> Any:
    """Wan2.1 VAE (z 16, stride 8) or the Wan2.2 one (z 48, 2x2 patchify, stride 16)."""
    from diffusers import AutoencoderKLWan

    _seed("vae22" if wan22 else "vae")
    if wan22:
        return AutoencoderKLWan(
            base_dim=4,
            z_dim=48,
            in_channels=12,
            out_channels=12,
            is_residual=True,
            patch_size=2,
            latents_mean=[0.0] * 48,
            latents_std=[1.0] * 48,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            scale_factor_spatial=16,
            scale_factor_temporal=4,
            temperal_downsample=[False, True, True],
        ).eval()
    return AutoencoderKLWan(
        base_dim=4,
        z_dim=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    ).eval()


def _transformer_kwargs(**extra: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,
        out_channels=16,
        text_dim=TEXT_DIM,
        freq_dim=32,
        ffn_dim=32,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    kwargs.update(extra)
    return kwargs


def _transformer(expert: str = "transformer", **extra: Any) -> Any:
    from diffusers import WanTransformer3DModel

    _seed(expert)
    return WanTransformer3DModel(**_transformer_kwargs(**extra)).eval()


def _scheduler(flow_shift: float) -> Any:
    """UniPC in flow mode, as the published Wan diffusers folders ship it."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        num_train_timesteps=1000,
        flow_shift=flow_shift,
    )


def _image_encoder() -> tuple[Any, Any]:
    """Tiny CLIP vision tower + processor; hidden_size is the transformer's image_dim."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    _seed("image_encoder")
    config = CLIPVisionConfig(
        hidden_size=8,
        intermediate_size=16,
        projection_dim=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return CLIPVisionModel(config).eval(), processor


def _text_parts() -> dict[str, Any]:
    tokenizer = _wan_tokenizer()
    return {"tokenizer": tokenizer, "text_encoder": _text_encoder(len(tokenizer))}


# ---------------------------------------------------------------------------
# Pipelines, one builder per kind


def build_t2v() -> DiffusionPipeline:
    """Wan2.1 T2V layout: WanPipeline with one transformer."""
    from diffusers import WanPipeline

    parts = _text_parts()
    return WanPipeline(vae=_vae(), transformer=_transformer(), scheduler=_scheduler(3.0), **parts)


def build_i2v() -> DiffusionPipeline:
    """Wan2.1 I2V layout: 36 input channels (noise + mask + image latents) and CLIP image tokens."""
    from diffusers import WanImageToVideoPipeline

    parts = _text_parts()
    image_encoder, image_processor = _image_encoder()
    inner = 2 * 12
    transformer = _transformer(
        in_channels=36, image_dim=image_encoder.config.hidden_size, added_kv_proj_dim=inner
    )
    return WanImageToVideoPipeline(
        vae=_vae(),
        transformer=transformer,
        scheduler=_scheduler(3.0),
        image_encoder=image_encoder,
        image_processor=image_processor,
        **parts,
    )


def build_flf2v() -> DiffusionPipeline:
    """Wan2.1 FLF2V layout: the I2V one plus a position embedding over two images' CLIP tokens."""
    from diffusers import WanImageToVideoPipeline

    parts = _text_parts()
    image_encoder, image_processor = _image_encoder()
    cfg = image_encoder.config
    tokens = (cfg.image_size // cfg.patch_size) ** 2 + 1  # patches + class token
    transformer = _transformer(
        in_channels=36, image_dim=cfg.hidden_size, added_kv_proj_dim=2 * 12, pos_embed_seq_len=2 * tokens
    )
    return WanImageToVideoPipeline(
        vae=_vae(),
        transformer=transformer,
        scheduler=_scheduler(16.0),
        image_encoder=image_encoder,
        image_processor=image_processor,
        **parts,
    )


def build_vace() -> DiffusionPipeline:
    """Wan2.1 VACE layout: extra VACE blocks fed from (video latents, mask) at 96 channels."""
    from diffusers import WanVACEPipeline, WanVACETransformer3DModel

    parts = _text_parts()
    # vace_in_channels = 2 * z_dim (inactive + reactive latents) + 8*8 (mask folded to latent resolution)
    _seed("transformer")
    transformer = WanVACETransformer3DModel(
        **_transformer_kwargs(num_layers=3, vace_layers=[0, 2], vace_in_channels=16 * 2 + 64)
    ).eval()
    return WanVACEPipeline(vae=_vae(), transformer=transformer, scheduler=_scheduler(3.0), **parts)


def build_ti2v_5b() -> DiffusionPipeline:
    """Wan2.2 TI2V-5B layout: z48 VAE with stride 16 and per-token timesteps (expand_timesteps)."""
    from diffusers import WanPipeline

    parts = _text_parts()
    return WanPipeline(
        vae=_vae(wan22=True),
        transformer=_transformer(in_channels=48, out_channels=48),
        scheduler=_scheduler(5.0),
        expand_timesteps=True,
        **parts,
    )


def build_a14b_t2v() -> DiffusionPipeline:
    """Wan2.2 A14B T2V layout: high-noise `transformer` + low-noise `transformer_2` split at boundary_ratio."""
    from diffusers import WanPipeline

    parts = _text_parts()
    return WanPipeline(
        vae=_vae(),
        transformer=_transformer(),
        transformer_2=_transformer("transformer_2"),
        scheduler=_scheduler(12.0),
        boundary_ratio=0.875,
        **parts,
    )


def build_a14b_i2v() -> DiffusionPipeline:
    """Wan2.2 A14B I2V layout: two 36-channel experts, no CLIP image encoder, boundary_ratio 0.9."""
    from diffusers import WanImageToVideoPipeline

    parts = _text_parts()
    return WanImageToVideoPipeline(
        vae=_vae(),
        transformer=_transformer(in_channels=36),
        transformer_2=_transformer("transformer_2", in_channels=36),
        scheduler=_scheduler(5.0),
        image_encoder=None,
        image_processor=None,
        boundary_ratio=0.9,
        **parts,
    )


BUILDERS: dict[str, Callable[[], Any]] = {
    "t2v": build_t2v,
    "i2v": build_i2v,
    "flf2v": build_flf2v,
    "vace": build_vace,
    "ti2v-5b": build_ti2v_5b,
    "a14b-t2v": build_a14b_t2v,
    "a14b-i2v": build_a14b_i2v,
}

# Class names transformers 5 writes that transformers 4 cannot import; the names on
# the right exist in both (in 5.x as aliases), so the folders load with either.
_PORTABLE_CLASS_NAMES = {
    "TokenizersBackend": "PreTrainedTokenizerFast",
    "CLIPImageProcessorPil": "CLIPImageProcessor",
    "CLIPImageProcessorFast": "CLIPImageProcessor",
}


def _make_portable(folder: Path) -> None:
    """Rewrite version-specific class names in model_index.json and tokenizer configs."""
    index_path = folder / "model_index.json"
    if index_path.is_file():
        index = json.loads(index_path.read_text())
        for key, value in index.items():
            if isinstance(value, list) and len(value) == 2 and value[1] in _PORTABLE_CLASS_NAMES:
                index[key] = [value[0], _PORTABLE_CLASS_NAMES[value[1]]]
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    for config_path in list(folder.glob("tokenizer_config.json")) + list(folder.glob("*/tokenizer_config.json")):
        config = json.loads(config_path.read_text())
        cls = config.get("tokenizer_class")
        if cls in _PORTABLE_CLASS_NAMES:
            config["tokenizer_class"] = _PORTABLE_CLASS_NAMES[cls]
            config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    for config_path in list(folder.glob("*/preprocessor_config.json")):
        config = json.loads(config_path.read_text())
        cls = config.get("image_processor_type")
        if cls in _PORTABLE_CLASS_NAMES:
            config["image_processor_type"] = _PORTABLE_CLASS_NAMES[cls]
            config_path.write_text(json.dumps(config, indent=2) + "\n")


def save_wan(kind: str, folder: str | Path) -> Path:
    """Build one tiny Wan kind and save it as a diffusers folder."""
    try:
        builder = BUILDERS[kind]
    except KeyError:
        raise ValueError(f"no tiny builder for kind {kind!r}; known: {', '.join(ALL_KINDS)}") from None
    folder = Path(folder)
    pipe = builder()
    pipe.save_pretrained(str(folder), safe_serialization=True)
    _make_portable(folder)
    return folder


def save_qwen(folder: str | Path) -> Path:
    """Build a tiny random Qwen2 chat model (ChatML template) for the prompt enhancer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    folder = Path(folder)
    torch.manual_seed(SEED)
    tokenizer = _qwen_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    )
    model = Qwen2ForCausalLM(config).eval()
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    # Older transformers read the template from tokenizer_config.json only.
    config_path = folder / "tokenizer_config.json"
    tok_config = json.loads(config_path.read_text())
    tok_config.setdefault("chat_template", CHATML_TEMPLATE)
    config_path.write_text(json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n")
    _make_portable(folder)
    return folder


def save_depth(folder: str | Path) -> Path:
    """A tiny random Depth Anything (V2 layout: a Dinov2 backbone, DPT neck and relative-depth head) with its
    image processor, as `depth-anything/Depth-Anything-V2-Small-hf` is laid out (config.json,
    model.safetensors, preprocessor_config.json)."""
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    folder = Path(folder)
    torch.manual_seed(SEED)
    backbone = Dinov2Config(
        hidden_size=16, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2, patch_size=14, image_size=56,
        out_features=["stage1", "stage2", "stage3", "stage4"], out_indices=[1, 2, 3, 4],
        apply_layernorm=True, reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=16, reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=8, head_hidden_size=8,
        depth_estimation_type="relative",
    )
    DepthAnythingForDepthEstimation(config).eval().save_pretrained(str(folder), safe_serialization=True)
    # Depth Anything V2's own processor settings, at a tiny size (its real one is 518).
    processor = {
        "image_processor_type": "DPTImageProcessor", "do_resize": True, "size": {"height": 56, "width": 56},
        "keep_aspect_ratio": True, "ensure_multiple_of": 14, "resample": 3, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225], "do_pad": False,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    return folder


def make_tiny_models(out_dir: str | Path, kinds: Iterable[str] | None = None) -> dict[str, Path]:
    """Build tiny models for `kinds` (default: every Wan kind plus "qwen"; "depth" on request) under out_dir.

    Returns kind -> folder. Folders are named after TINY_NAMES so that
    `models.discover_models(out_dir)` finds the Wan ones, as it would real downloads;
    the Qwen model goes into `out_dir/qwen/`, where the enhancer and the models
    route look when out_dir is the Wan models folder (`<webui>/models/wan`), and the
    depth model into `out_dir/depth/`, where `--depth-model NAME` looks.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = list(DEFAULT_KINDS if kinds is None else kinds)
    unknown = [k for k in wanted if k not in TINY_NAMES]
    if unknown:
        raise ValueError(f"unknown tiny model kind(s) {unknown}; known: {', '.join(ALL_KINDS)}")
    made: dict[str, Path] = {}
    for kind in wanted:
        folder = out_dir / TINY_NAMES[kind]
        if kind == "qwen":
            folder = out_dir / "qwen" / TINY_NAMES[kind]
            save_qwen(folder)
        elif kind == "depth":
            folder = out_dir / "depth" / TINY_NAMES[kind]
            save_depth(folder)
        else:
            save_wan(kind, folder)
        log.info("built tiny %s model in %s", kind, folder)
        made[kind] = folder
    return made
