"""Model discovery, classification and loading.

The first half needs no torch: it writes folders shaped like the published
Wan-AI "-Diffusers" repositories (JSON configs plus a placeholder weights file)
and checks what discovery makes of them. The second half uses the tiny models.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from deforum_wan.core.specs import default_models_dir
from deforum_wan.renderer.models import (
    ModelError,
    classify_model,
    discover_models,
    find_model,
    folder_size,
    format_models_table,
    human_size,
    scan_models,
)
from deforum_wan.core.specs import MODEL_SPECS
from deforum_wan.renderer.pipelines import ClipRequest

# --- folders shaped like the real downloads --------------------------------------

T5 = ["transformers", "UMT5EncoderModel"]
TOK = ["transformers", "T5TokenizerFast"]
VAE = ["diffusers", "AutoencoderKLWan"]
SCHED = ["diffusers", "UniPCMultistepScheduler"]
WT = ["diffusers", "WanTransformer3DModel"]
NONE = [None, None]


def _index(cls: str, **extra: object) -> dict:
    index = {"_class_name": cls, "_diffusers_version": "0.35.0", "text_encoder": T5, "tokenizer": TOK,
             "vae": VAE, "scheduler": SCHED, "transformer": WT}
    index.update(extra)
    return index


T2V_CFG = {"_class_name": "WanTransformer3DModel", "in_channels": 16, "out_channels": 16, "image_dim": None,
           "num_layers": 30, "text_dim": 4096}
I2V_CFG = dict(T2V_CFG, in_channels=36, image_dim=1280, added_kv_proj_dim=5120)
REAL_LAYOUTS: dict[str, tuple[dict, dict, dict]] = {
    # kind: (model_index.json, transformer/config.json, vae/config.json)
    "t2v": (_index("WanPipeline"), T2V_CFG, {"z_dim": 16}),
    "i2v": (
        _index("WanImageToVideoPipeline", image_encoder=["transformers", "CLIPVisionModel"],
               image_processor=["transformers", "CLIPImageProcessor"]),
        I2V_CFG,
        {"z_dim": 16},
    ),
    "flf2v": (
        _index("WanImageToVideoPipeline", image_encoder=["transformers", "CLIPVisionModel"],
               image_processor=["transformers", "CLIPImageProcessor"]),
        dict(I2V_CFG, pos_embed_seq_len=514),
        {"z_dim": 16},
    ),
    "vace": (
        _index("WanVACEPipeline", transformer=["diffusers", "WanVACETransformer3DModel"]),
        dict(T2V_CFG, _class_name="WanVACETransformer3DModel", vace_layers=[0, 2, 4], vace_in_channels=96),
        {"z_dim": 16},
    ),
    "ti2v-5b": (
        _index("WanPipeline", expand_timesteps=True, boundary_ratio=None, transformer_2=NONE),
        dict(T2V_CFG, in_channels=48, out_channels=48),
        {"z_dim": 48, "is_residual": True, "patch_size": 2, "scale_factor_spatial": 16},
    ),
    "a14b-t2v": (_index("WanPipeline", boundary_ratio=0.875, transformer_2=WT), T2V_CFG, {"z_dim": 16}),
    "a14b-i2v": (
        _index("WanImageToVideoPipeline", boundary_ratio=0.9, transformer_2=WT, image_encoder=NONE,
               image_processor=NONE),
        dict(T2V_CFG, in_channels=36),
        {"z_dim": 16},
    ),
}


def write_layout(folder: Path, index: dict, tconfig: dict, vconfig: dict) -> Path:
    """A diffusers folder with the given JSON and a small placeholder weights file per model component."""
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps(index))
    for key, value in index.items():
        if key.startswith("_") or not isinstance(value, list) or value[0] is None:
            continue
        sub = folder / key
        sub.mkdir()
        if key in ("transformer", "transformer_2"):
            (sub / "config.json").write_text(json.dumps(tconfig))
        elif key == "vae":
            (sub / "config.json").write_text(json.dumps(vconfig))
        else:
            (sub / "config.json").write_text("{}")
        if key in ("transformer", "transformer_2", "vae", "text_encoder", "image_encoder"):
            (sub / "model.safetensors").write_bytes(b"\0" * 1000)
    return folder


@pytest.mark.parametrize("kind", sorted(REAL_LAYOUTS))
def test_real_layouts_are_classified(tmp_path: Path, kind: str) -> None:
    folder = write_layout(tmp_path / f"Wan-{kind}-Diffusers", *REAL_LAYOUTS[kind])
    info = classify_model(folder)
    assert info.kind == kind
    assert info.spec is MODEL_SPECS[kind]
    assert info.name == f"Wan-{kind}-Diffusers"
    assert info.path == folder
    assert info.size_bytes == folder_size(folder) > 1000


def test_discovery_finds_direct_and_nested_folders_and_skips_the_rest(tmp_path: Path) -> None:
    write_layout(tmp_path / "Wan2.1-T2V-1.3B-Diffusers", *REAL_LAYOUTS["t2v"])
    write_layout(tmp_path / "Wan-AI" / "Wan2.1-VACE-1.3B-diffusers", *REAL_LAYOUTS["vace"])
    (tmp_path / "Qwen2.5-3B-Instruct").mkdir()  # a transformers folder: not a Wan model, no complaint
    (tmp_path / "Qwen2.5-3B-Instruct" / "config.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("hello")
    broken = write_layout(tmp_path / "half-download", *REAL_LAYOUTS["t2v"])
    for item in (broken / "vae").iterdir():
        item.unlink()
    (broken / "vae").rmdir()

    infos, problems = scan_models(tmp_path)
    assert [(i.name, i.kind) for i in infos] == [
        ("Wan2.1-T2V-1.3B-Diffusers", "t2v"),
        ("Wan2.1-VACE-1.3B-diffusers", "vace"),
    ]
    assert len(problems) == 1 and "half-download" in str(problems[0]) and "vae/" in str(problems[0])
    assert [i.name for i in discover_models(tmp_path)] == [i.name for i in infos]


def test_discovery_of_a_missing_root_is_empty(tmp_path: Path) -> None:
    assert discover_models(tmp_path / "nowhere") == []


def test_root_that_is_itself_a_model(tmp_path: Path) -> None:
    folder = write_layout(tmp_path / "one", *REAL_LAYOUTS["a14b-t2v"])
    assert [i.kind for i in discover_models(folder)] == ["a14b-t2v"]


def test_no_model_index(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no model_index.json") as err:
        classify_model(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(err.value)


def test_unknown_pipeline_class_is_named(tmp_path: Path) -> None:
    index, tcfg, vcfg = REAL_LAYOUTS["t2v"]
    folder = write_layout(tmp_path / "sdxl", dict(index, _class_name="StableDiffusionXLPipeline"), tcfg, vcfg)
    with pytest.raises(ModelError, match="StableDiffusionXLPipeline") as err:
        classify_model(folder)
    assert str(folder) in str(err.value) and "WanPipeline" in str(err.value)


def test_missing_subfolder_is_named(tmp_path: Path) -> None:
    folder = write_layout(tmp_path / "m", *REAL_LAYOUTS["a14b-t2v"])
    for item in (folder / "transformer_2").iterdir():
        item.unlink()
    (folder / "transformer_2").rmdir()
    with pytest.raises(ModelError, match=r"missing subfolder transformer_2/") as err:
        classify_model(folder)
    assert str(folder) in str(err.value)


def test_missing_weights_are_named(tmp_path: Path) -> None:
    folder = write_layout(tmp_path / "m", *REAL_LAYOUTS["t2v"])
    (folder / "transformer" / "model.safetensors").unlink()
    with pytest.raises(ModelError, match=r"no weights in transformer/"):
        classify_model(folder)


def test_missing_component_in_index_is_named(tmp_path: Path) -> None:
    index, tcfg, vcfg = REAL_LAYOUTS["t2v"]
    index = {k: v for k, v in index.items() if k != "text_encoder"}
    folder = write_layout(tmp_path / "m", index, tcfg, vcfg)
    with pytest.raises(ModelError, match="lists no text_encoder"):
        classify_model(folder)


def test_broken_json_is_reported(tmp_path: Path) -> None:
    folder = write_layout(tmp_path / "m", *REAL_LAYOUTS["t2v"])
    (folder / "model_index.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot read model_index.json"):
        classify_model(folder)


def test_i2v_without_image_encoder_is_rejected(tmp_path: Path) -> None:
    index, tcfg, vcfg = REAL_LAYOUTS["i2v"]
    folder = write_layout(tmp_path / "m", dict(index, image_encoder=NONE, image_processor=NONE), tcfg, vcfg)
    with pytest.raises(ModelError, match="image_encoder"):
        classify_model(folder)


def test_default_models_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("DEFORUM_WAN_MODELS", raising=False)
    assert default_models_dir() == Path("models") / "wan"
    monkeypatch.setenv("DEFORUM_WAN_MODELS", str(tmp_path))
    assert default_models_dir() == tmp_path


def test_find_model_by_name_kind_or_path(tmp_path: Path) -> None:
    write_layout(tmp_path / "Wan2.1-T2V-1.3B-Diffusers", *REAL_LAYOUTS["t2v"])
    write_layout(tmp_path / "Wan2.2-TI2V-5B-Diffusers", *REAL_LAYOUTS["ti2v-5b"])
    assert find_model("Wan2.2-TI2V-5B-Diffusers", tmp_path).kind == "ti2v-5b"
    assert find_model("t2v", tmp_path).name == "Wan2.1-T2V-1.3B-Diffusers"
    assert find_model(tmp_path / "Wan2.1-T2V-1.3B-Diffusers").kind == "t2v"
    with pytest.raises(ModelError, match="Wan2.1-T2V-1.3B-Diffusers"):  # lists what exists
        find_model("vace", tmp_path)


def test_human_size() -> None:
    assert human_size(0) == "0 B"
    assert human_size(1023) == "1023 B"
    assert human_size(1536) == "1.5 KiB"
    assert human_size(3 * 1024**3) == "3.0 GiB"
    assert human_size(28 * 1024**4) == "28672.0 GiB"


def test_models_table(tmp_path: Path) -> None:
    write_layout(tmp_path / "Wan2.1-T2V-1.3B-Diffusers", *REAL_LAYOUTS["t2v"])
    write_layout(tmp_path / "Wan2.2-TI2V-5B-Diffusers", *REAL_LAYOUTS["ti2v-5b"])
    infos = discover_models(tmp_path)
    lines = format_models_table(infos).splitlines()
    assert lines[0].split() == ["NAME", "KIND", "MODEL", "FPS", "MAX", "FRAMES", "SIZE"]
    assert lines[1].split()[:6] == ["Wan2.1-T2V-1.3B-Diffusers", "t2v", "Wan2.1", "T2V", "16", "81"]
    assert lines[2].split()[:6] == ["Wan2.2-TI2V-5B-Diffusers", "ti2v-5b", "Wan2.2", "TI2V-5B", "24", "121"]
    assert lines[1].endswith(human_size(infos[0].size_bytes)) and lines[1].endswith("KiB")
    assert len({len(line) for line in lines[:2]}) == 1  # columns line up
    assert format_models_table([]) == "no Wan models found"


# --- the tiny models: built, found, reloaded -------------------------------------------


def test_every_tiny_kind_is_discovered_as_its_kind(tiny_models: dict[str, Path]) -> None:
    root = next(iter(tiny_models.values())).parent
    infos, problems = scan_models(root)
    assert problems == []
    found = {info.kind: info for info in infos}
    wan_kinds = {kind for kind in tiny_models if kind != "qwen"}
    assert set(found) == wan_kinds == set(MODEL_SPECS)  # every spec kind has a tiny model
    for kind, info in found.items():
        assert info.path == tiny_models[kind]
        assert 0 < info.size_bytes < 5 * 1024**2  # tiny, but real weights on disk


def test_tiny_model_index_uses_portable_class_names(tiny_models: dict[str, Path]) -> None:
    """Names written by transformers 5 alone (TokenizersBackend, ...Pil) would not load under 4.x."""
    for kind, folder in tiny_models.items():
        if kind == "qwen":
            continue
        index = json.loads((folder / "model_index.json").read_text())
        assert index["tokenizer"] == ["transformers", "PreTrainedTokenizerFast"]
        assert index["text_encoder"] == ["transformers", "UMT5EncoderModel"]
        if kind in ("i2v", "flf2v"):
            assert index["image_processor"] == ["transformers", "CLIPImageProcessor"]
    assert json.loads((tiny_models["ti2v-5b"] / "model_index.json").read_text())["expand_timesteps"] is True
    assert json.loads((tiny_models["a14b-t2v"] / "model_index.json").read_text())["boundary_ratio"] == 0.875
    vae = json.loads((tiny_models["ti2v-5b"] / "vae" / "config.json").read_text())
    assert (vae["z_dim"], vae["patch_size"], vae["scale_factor_spatial"], vae["is_residual"]) == (48, 2, 16, True)


def test_tiny_models_are_deterministic(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from deforum_wan.renderer.tiny import make_tiny_models

    again = make_tiny_models(tmp_path, ["t2v"])["t2v"]
    for name in ("transformer/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        assert (again / name).read_bytes() == (tiny_models["t2v"] / name).read_bytes()


def test_unknown_tiny_kind(tmp_path: Path) -> None:
    from deforum_wan.renderer.tiny import make_tiny_models

    with pytest.raises(ValueError, match="nope"):
        make_tiny_models(tmp_path, ["nope"])


def test_tiny_wan_reloads_through_from_pretrained(tiny_models: dict[str, Path]) -> None:
    from diffusers import DiffusionPipeline

    expected = {
        "t2v": "WanPipeline", "ti2v-5b": "WanPipeline", "a14b-t2v": "WanPipeline",
        "i2v": "WanImageToVideoPipeline", "flf2v": "WanImageToVideoPipeline", "a14b-i2v": "WanImageToVideoPipeline",
        "vace": "WanVACEPipeline",
    }
    for kind, cls in expected.items():
        pipe = DiffusionPipeline.from_pretrained(str(tiny_models[kind]), local_files_only=True)
        assert type(pipe).__name__ == cls
        assert (pipe.transformer_2 is not None) == kind.startswith("a14b")
        ids = pipe.tokenizer("a red cat dances").input_ids
        assert ids[-1] == pipe.tokenizer.eos_token_id == 1 and pipe.tokenizer.unk_token_id not in ids
        assert pipe.tokenizer.pad_token_id == 0


def test_tiny_qwen_chats(tiny_models: dict[str, Path]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_models["qwen"]
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Write prompts."}, {"role": "user", "content": "a red cat"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert text == "<|im_start|>system\nWrite prompts.<|im_end|>\n<|im_start|>user\na red cat<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.eos_token == "<|im_end|>"
    inputs = tokenizer(text, return_tensors="pt")
    assert tokenizer.decode(inputs.input_ids[0]) == text  # byte-level BPE round-trips
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > inputs.input_ids.shape[1]


# --- loading options on this CPU-only machine -----------------------------------------


@pytest.fixture
def t2v_info(tiny_models: dict[str, Path]):
    return classify_model(tiny_models["t2v"])


def test_load_on_cpu_is_fp32_and_resident(t2v_info) -> None:
    import torch

    from deforum_wan.renderer.loading import load_pipelines

    pipes = load_pipelines(t2v_info, device="cpu")
    assert pipes.device == "cpu" and pipes.dtype == torch.float32
    assert pipes.memory_profile == "none" and pipes.attention == "native" and not pipes.compiled
    assert pipes.main.transformer.dtype == torch.float32
    assert pipes.modes == ("t2v",)
    pipes.free()
    assert pipes.main is None
    with pytest.raises(RuntimeError, match="freed"):
        pipes.t2v(ClipRequest("a cat", "", 5, 32, 32, 1, 5.0, 0))


@pytest.mark.parametrize("profile", ["model", "sequential", "group"])
def test_offload_profiles_fall_back_on_cpu(t2v_info, profile: str, caplog: pytest.LogCaptureFixture) -> None:
    from deforum_wan.renderer.loading import load_pipelines

    with caplog.at_level(logging.INFO, logger="deforum_wan.renderer.loading"):
        pipes = load_pipelines(t2v_info, device="cpu", memory_profile=profile, vae_tiling=True)
    assert pipes.memory_profile == "none"
    assert pipes.vae_tiling and pipes.main.vae.use_tiling
    assert any("needs a GPU" in r.getMessage() for r in caplog.records)
    assert pipes.t2v(ClipRequest("a cat", "", 5, 32, 32, 1, 5.0, 0)).shape == (5, 32, 32, 3)


def test_flash_attention_request_falls_back_to_native_on_cpu(t2v_info, caplog: pytest.LogCaptureFixture) -> None:
    from deforum_wan.renderer.loading import load_pipelines

    with caplog.at_level(logging.INFO, logger="deforum_wan.renderer.loading"):
        pipes = load_pipelines(t2v_info, device="cpu", attention="flash")
    assert pipes.attention == "native"
    assert any("flash attention requested but unavailable" in r.getMessage() for r in caplog.records)


def test_bad_load_options(t2v_info) -> None:
    from deforum_wan.renderer.loading import load_pipelines

    with pytest.raises(ValueError, match="memory profile"):
        load_pipelines(t2v_info, memory_profile="turbo")
    with pytest.raises(ValueError, match="attention"):
        load_pipelines(t2v_info, attention="xformers")


def test_tiny_models_in_a_web_ui_models_folder_are_all_found(tmp_path: Path) -> None:
    """`make-tiny-models <webui>/models/wan`: the Wan models and the Qwen model are where the models route looks."""
    from deforum_wan.enhance.qwen import find_qwen_models
    from deforum_wan.renderer.tiny import make_tiny_models

    wan = tmp_path / "models" / "wan"
    made = make_tiny_models(wan, ["vace", "qwen"])
    assert [m.path for m in discover_models(wan)] == [made["vace"]]
    assert [m.path for m in find_qwen_models(wan, include_hub_cache=False)] == [made["qwen"]]


def test_a_1_3b_transformer_gets_its_480p_sizes_and_an_unofficial_one_none(tmp_path: Path) -> None:
    index, tconfig, vconfig = REAL_LAYOUTS["t2v"]
    small = classify_model(write_layout(tmp_path / "small", index, dict(tconfig, num_attention_heads=12,
                                                                       attention_head_dim=128), vconfig))
    assert small.kind == "t2v" and small.spec.sizes == ((832, 480), (480, 832)) and "1.3B" in small.label
    big = classify_model(write_layout(tmp_path / "big", index, dict(tconfig, num_attention_heads=40,
                                                                   attention_head_dim=128), vconfig))
    assert big.spec is MODEL_SPECS["t2v"]
    odd = classify_model(write_layout(tmp_path / "odd", index, dict(tconfig, num_attention_heads=2,
                                                                   attention_head_dim=12), vconfig))
    assert odd.kind == "t2v" and odd.spec.sizes == () and odd.spec.default_steps == MODEL_SPECS["t2v"].default_steps
