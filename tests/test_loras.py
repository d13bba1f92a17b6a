"""LoRAs: names and folders, headers and fit checks, and loading through diffusers into the tiny pipelines.

The LoRA files are written here for the tiny Wan transformer (its config read from
the tiny model folder) in the three key layouts diffusers' Wan loader converts:
diffusers/peft (`transformer.blocks.0.attn1.to_q.lora_A.weight`), kohya/musubi
(`lora_unet_blocks_0_self_attn_q.lora_down.weight` + `.alpha`) and ComfyUI/kijai
(`diffusion_model.blocks.0.self_attn.q.lora_A.weight`).
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deforum_wan.renderer.loras import (
    ENV_LORA_DIRS,
    LoraError,
    LoraRequest,
    ResolvedLora,
    apply_loras,
    check_lora,
    clip_weights,
    find_lora,
    inspect_lora,
    lora_dirs,
    lora_key,
    parse_lora_arg,
    read_transformer_config,
    resolve_loras,
)

FORMATS = ("diffusers", "kohya", "comfyui")
# The tiny transformer's shape (renderer/tiny.py); the render tests read the real config from the folder.
TINY = {"num_attention_heads": 2, "attention_head_dim": 12, "ffn_dim": 32, "num_layers": 2, "text_dim": 32,
        "freq_dim": 32, "in_channels": 16, "out_channels": 16, "patch_size": [1, 2, 2]}


def save_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> Path:
    """A float32 safetensors file, written by hand (8-byte header length, json header, data): no torch needed."""
    table: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    blobs, offset = [], 0
    for key, value in tensors.items():
        blob = np.ascontiguousarray(value, dtype="<f4").tobytes()
        table[key] = {"dtype": "F32", "shape": list(np.shape(value)), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    header = json.dumps(table).encode()
    header += b" " * (-len(header) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"".join(blobs))
    return path


def lora_tensors(fmt: str, cfg: dict[str, Any], *, rank: int = 4, blocks: Any = None, dim: int | None = None,
                 seed: int = 0, scale: float = 0.3) -> dict[str, np.ndarray]:
    """Every attention and ffn layer of `blocks` in one key layout, as diffusers' converters expect them."""
    rng = np.random.default_rng(seed)
    dim = dim or cfg["num_attention_heads"] * cfg["attention_head_dim"]
    ffn = cfg["ffn_dim"]
    blocks = range(cfg["num_layers"]) if blocks is None else blocks
    layers = [(a, p, dim, dim) for a in ("self_attn", "cross_attn") for p in "qkvo"]
    layers += [("ffn", "0", dim, ffn), ("ffn", "2", ffn, dim)]
    diffusers_name = {"self_attn": "attn1", "cross_attn": "attn2", "q": "to_q", "k": "to_k", "v": "to_v",
                      "o": "to_out.0", "0": "net.0.proj", "2": "net.2"}
    out: dict[str, np.ndarray] = {}
    for b in blocks:
        for group, proj, fan_in, fan_out in layers:
            down = rng.normal(size=(rank, fan_in)) * scale
            up = rng.normal(size=(fan_out, rank)) * scale
            alpha = np.array(rank / 2, dtype=np.float32)
            if fmt == "diffusers":
                base = f"transformer.blocks.{b}.{diffusers_name.get(group, group)}.{diffusers_name[proj]}"
                out[f"{base}.lora_A.weight"], out[f"{base}.lora_B.weight"] = down, up
            elif fmt == "kohya":
                base = f"lora_unet_blocks_{b}_{group}_{proj}"
                out[f"{base}.lora_down.weight"], out[f"{base}.lora_up.weight"], out[f"{base}.alpha"] = down, up, alpha
            else:
                base = f"diffusion_model.blocks.{b}.{group}.{proj}"
                out[f"{base}.lora_A.weight"], out[f"{base}.lora_B.weight"], out[f"{base}.alpha"] = down, up, alpha
    return out


# --- names, folders, arguments --------------------------------------------------------


def test_lora_dirs_are_the_models_folder_the_web_ui_folder_and_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_LORA_DIRS, raising=False)
    assert lora_dirs(None) == []
    assert lora_dirs(tmp_path / "models" / "wan") == [tmp_path / "models" / "wan" / "loras"]
    monkeypatch.setenv(ENV_LORA_DIRS, os.pathsep.join([str(tmp_path / "a"), "", str(tmp_path / "b")]))
    assert lora_dirs(tmp_path / "wan", tmp_path / "webui") == [
        tmp_path / "a", tmp_path / "b", tmp_path / "wan" / "loras", tmp_path / "webui" / "models" / "Lora"]
    monkeypatch.setenv(ENV_LORA_DIRS, str(tmp_path / "wan" / "loras"))
    assert lora_dirs(tmp_path / "wan") == [tmp_path / "wan" / "loras"]  # listed once


@pytest.mark.parametrize("text, expected", [
    ("detail", LoraRequest("detail")),
    ("detail:0.8", LoraRequest("detail", 0.8)),
    ("  detail : -0.5 ", LoraRequest("detail", -0.5)),
    ("detail:0.8:0.5", LoraRequest("detail", 0.8, 0.5)),
    ("styles/my lora.safetensors:.5", LoraRequest("styles/my lora.safetensors", 0.5)),
    (r"C:\loras\x.safetensors:1.2:0", LoraRequest(r"C:\loras\x.safetensors", 1.2, 0.0)),
    (r"C:\loras\x.safetensors", LoraRequest(r"C:\loras\x.safetensors")),
])
def test_parse_lora_arg(text, expected):
    assert parse_lora_arg(text) == expected


@pytest.mark.parametrize("text, reason", [
    ("", "no name"), (":0.8", "no name"), ("detail:abc", "weight 'abc' is not a number"),
    ("detail:", "weight '(empty)' is not a number"), ("detail:1:2:3", "too many weights"),
    ("detail:0.8:x", "weight 'x' is not a number"),
])
def test_parse_lora_arg_errors_name_the_text(text, reason):
    with pytest.raises(LoraError, match="LoRA") as err:
        parse_lora_arg(text)
    assert repr(text.strip()) in str(err.value) and reason in str(err.value)


def test_lora_key_is_the_file_stem_case_folded():
    assert lora_key("Detail") == lora_key("detail.SAFETENSORS") == lora_key("/x/styles/DETAIL.safetensors") == "detail"
    assert lora_key(r"C:\loras\Detail.safetensors") == "detail"


def test_find_lora_by_name_path_case_and_subfolder(tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    a = save_safetensors(first / "styles" / "Ink Wash.safetensors", {"x": np.zeros(1)})
    b = save_safetensors(second / "ink wash.safetensors", {"x": np.zeros(1)})
    c = save_safetensors(second / "motion" / "orbit.safetensors", {"x": np.zeros(1)})
    dirs = [tmp_path / "missing", first, second]
    assert find_lora("ink wash", dirs) == a  # first folder first, subfolders searched
    assert find_lora("INK WASH.safetensors", dirs[2:]) == b
    assert find_lora("motion/Orbit", dirs) == c and find_lora("orbit", dirs) == c
    assert find_lora(str(c), []) == c.resolve()  # a path needs no folders
    monkeypatch.chdir(second)
    assert find_lora("motion/orbit.safetensors", []) == c.resolve()  # relative to the working folder


def test_find_lora_errors_say_where_it_looked_and_refuse_pickles(tmp_path):
    folder = tmp_path / "loras"
    save_safetensors(folder / "a" / "twin.safetensors", {"x": np.zeros(1)})
    save_safetensors(folder / "b" / "twin.safetensors", {"x": np.zeros(1)})
    (folder / "old.ckpt").write_bytes(b"pickle")
    (folder / "weights.pt").write_bytes(b"pickle")
    dirs = [tmp_path / "nowhere", folder]
    with pytest.raises(LoraError, match="not found") as err:
        find_lora("nothing", dirs)
    assert f"{tmp_path / 'nowhere'} (missing)" in str(err.value) and str(folder) in str(err.value)
    assert "'nothing'" in str(err.value) and "nothing.safetensors" in str(err.value)
    with pytest.raises(LoraError, match="ambiguous.*a/twin.safetensors, b/twin.safetensors"):
        find_lora("twin", dirs)
    assert find_lora("b/twin", dirs) == folder / "b" / "twin.safetensors"
    with pytest.raises(LoraError, match=r"found .*old\.ckpt, but only \.safetensors"):
        find_lora("old", dirs)
    with pytest.raises(LoraError, match=r"'.*weights\.pt': only \.safetensors files are loaded; \.pt files are pickles"):
        find_lora(str(folder / "weights.pt"), dirs)
    with pytest.raises(LoraError, match="is a folder"):
        find_lora(str(folder / "a"), dirs)
    with pytest.raises(LoraError, match="does not exist"):
        find_lora(str(tmp_path / "gone.safetensors"), dirs)
    with pytest.raises(LoraError, match="empty"):
        find_lora("  ", dirs)


def test_resolve_loras_adds_prompt_only_loras_at_weight_zero(tmp_path):
    folder = tmp_path / "loras"
    save_safetensors(folder / "style.safetensors", lora_tensors("diffusers", TINY))
    save_safetensors(folder / "motion.safetensors", lora_tensors("comfyui", TINY))
    resolved = resolve_loras([LoraRequest("Style", 0.7, 0.2)], [folder], ["style", "motion"])
    assert [(r.key, r.weight, r.weight_2) for r in resolved] == [("style", 0.7, 0.2), ("motion", 0.0, None)]
    assert resolved[1].info.format == "comfyui"
    with pytest.raises(LoraError, match="given twice"):
        resolve_loras([LoraRequest("style"), LoraRequest(str(folder / "style.safetensors"))], [folder])
    with pytest.raises(LoraError, match=r"'ghost' not found.*named in a prompt as <lora:ghost"):
        resolve_loras([], [folder], ["ghost"])


def test_clip_weights_follow_deforum_tags_over_the_users_loras():
    user = [LoraRequest("style", 0.7), LoraRequest("Speed", 1.0, 0.5)]
    everything = ["style", "speed", "dream", "motion"]
    # no tags: the user's LoRAs at their weights, the prompt-only ones off
    assert clip_weights((), user, everything) == {
        "style": (0.7, 0.7), "speed": (1.0, 0.5), "dream": (0.0, 0.0), "motion": (0.0, 0.0)}
    # a tag overrides the user's weight for this clip (keeping its low-noise ratio) or adds a LoRA
    assert clip_weights((("Style", 0.2), ("speed", 0.4), ("dream", 0.9)), user, everything) == {
        "style": (0.2, 0.2), "speed": (0.4, 0.2), "dream": (0.9, 0.9), "motion": (0.0, 0.0)}
    assert clip_weights((("style", 0.0),), user)["style"] == (0.0, 0.0)  # a tag at 0 turns it off
    assert clip_weights((("x", 0.3), ("x", 0.6)), []) == {"x": (0.6, 0.6)}  # the last tag wins


# --- headers and fit checks (no torch) ---------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_inspect_reads_format_rank_blocks_and_shapes_from_the_header(tmp_path, fmt):
    path = save_safetensors(tmp_path / f"{fmt}.safetensors", lora_tensors(fmt, TINY, rank=3, blocks=[0, 1]),
                            {"ss_network_dim": "3"})
    info = inspect_lora(path)
    assert (info.format, info.rank, info.blocks, info.hidden_size) == (fmt, 3, (0, 1), 24)
    assert info.modules["blocks.1.attn1.to_q"] == (24, 24) and info.modules["blocks.0.ffn.net.0.proj"] == (24, 32)
    assert info.has_alpha == (fmt != "diffusers") and not info.unknown and not info.incomplete
    assert info.metadata == {"ss_network_dim": "3"}
    check_lora(info, TINY)


def test_check_lora_rejects_a_14b_lora_on_a_1_3b_model(tmp_path):
    wan_1_3b = {"num_attention_heads": 12, "attention_head_dim": 128, "ffn_dim": 8960, "num_layers": 30}
    shapes = {f"diffusion_model.blocks.{b}.self_attn.q.lora_{h}.weight": s for b in (0, 39)
              for h, s in (("A", [16, 5120]), ("B", [5120, 16]))}
    info = inspect_lora(save_safetensors(tmp_path / "wan14b_style.safetensors", {k: np.zeros(v) for k, v in shapes.items()}))
    assert (info.hidden_size, info.rank, info.blocks) == (5120, 16, (0, 39))
    with pytest.raises(LoraError) as err:
        check_lora(info, wan_1_3b)
    message = str(err.value)
    assert "wan14b_style.safetensors" in message and "5120 (Wan 14B/A14B)" in message and "1536 (Wan 1.3B)" in message


@pytest.mark.parametrize("case, reason", [
    ("block", "changes block 5, but this model has 2 blocks (0-1)"),
    ("ffn", "blocks.0.ffn.net.0.proj is 24->48, the model's 24->32"),
    ("sdxl", "Stable Diffusion / SDXL LoRA"),
    ("lokr", "LyCORIS"),
    ("stray", "converter rejects its keys diffusion_model.blocks.0.norm3.lora_A.weight"),
    ("musubi_partial", "missing lora_unet_blocks_0_self_attn_k.lora_down.weight"),
    ("half", "only one half of the low-rank pair: blocks.0.attn1.to_q"),
    ("unprefixed", "lack diffusers' transformer. prefix (a bare peft state dict) (keys like blocks.0."),
])
def test_check_lora_names_the_lora_and_the_reason(tmp_path, case, reason):
    tensors = {
        "block": lambda: lora_tensors("comfyui", TINY, blocks=[0, 5]),
        "ffn": lambda: lora_tensors("diffusers", {**TINY, "ffn_dim": 48}),
        "sdxl": lambda: {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": np.zeros((4, 8)),
                         "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": np.zeros((4, 8))},
        "lokr": lambda: {"transformer.blocks.0.attn1.to_q.lokr_w1": np.zeros((4, 4))},
        "stray": lambda: {**lora_tensors("comfyui", TINY), "diffusion_model.blocks.0.norm3.lora_A.weight": np.zeros((4, 24))},
        "musubi_partial": lambda: {k: v for k, v in lora_tensors("kohya", TINY).items() if "self_attn_k." not in k},
        "half": lambda: {"transformer.blocks.0.attn1.to_q.lora_A.weight": np.zeros((4, 24))},
        "unprefixed": lambda: {k.removeprefix("transformer."): v for k, v in lora_tensors("diffusers", TINY).items()},
    }[case]()
    info = inspect_lora(save_safetensors(tmp_path / f"bad-{case}.safetensors", tensors))
    with pytest.raises(LoraError) as err:
        check_lora(info, TINY)
    assert f"LoRA bad-{case}.safetensors" in str(err.value) and reason in str(err.value)


def test_not_a_safetensors_file_is_a_clear_error(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(LoraError, match="junk.safetensors: not a safetensors file"):
        inspect_lora(tmp_path / "junk.safetensors")


def test_checks_run_before_any_model_loads_without_torch_or_diffusers(tmp_path, tiny_config_dir):
    """The plan can refuse a LoRA in a process that has neither torch nor diffusers (the web UI's own)."""
    bad = save_safetensors(tmp_path / "deep.safetensors", lora_tensors("kohya", TINY, blocks=range(4)))
    script = (
        "import sys\n"
        "for m in ('torch', 'diffusers', 'safetensors', 'peft', 'transformers'): sys.modules[m] = None\n"
        "from deforum_wan.renderer import loras\n"
        f"info = loras.inspect_lora({str(bad)!r})\n"
        f"cfg = loras.read_transformer_config({str(tiny_config_dir)!r})\n"
        "try:\n    loras.check_lora(info, cfg)\nexcept loras.LoraError as exc:\n    print(exc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "scripts")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "LoRA deep.safetensors: changes block 3, but this model has 2 blocks" in out.stdout


@pytest.fixture
def tiny_config_dir(tmp_path) -> Path:
    (tmp_path / "model" / "transformer").mkdir(parents=True)
    (tmp_path / "model" / "transformer" / "config.json").write_text(json.dumps(TINY))
    return tmp_path / "model"


# --- through diffusers, with the tiny pipelines --------------------------------------------


@pytest.fixture(scope="module")
def loaded(tiny_models):
    """kind -> (Pipelines, its transformer config, the no-LoRA frames), each loaded once."""
    pytest.importorskip("peft")
    from deforum_wan.renderer.loading import load_pipelines
    from deforum_wan.renderer.models import classify_model

    cache: dict[str, Any] = {}

    def get(kind: str):
        if kind not in cache:
            pipes = load_pipelines(classify_model(tiny_models[kind]), device="cpu")
            cache[kind] = (pipes, read_transformer_config(tiny_models[kind]), render(pipes))
        return cache[kind]

    return get


def render(pipes) -> np.ndarray:
    from deforum_wan.renderer.pipelines import ClipRequest

    return pipes.t2v(ClipRequest(prompt="a red cat dances in the city", negative_prompt=None, num_frames=5,
                                 width=32, height=32, steps=1, guidance=1.0, seed=11))


def peft_layers(module) -> list[str]:
    return [name for name, m in module.named_modules() if hasattr(m, "lora_A")]


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_changes_the_render_and_unloads_cleanly(loaded, tmp_path, fmt):
    pipes, cfg, base = loaded("t2v")
    path = save_safetensors(tmp_path / f"tiny-{fmt}.safetensors", lora_tensors(fmt, cfg))
    check_lora(inspect_lora(path), cfg)
    handle = apply_loras(pipes, [ResolvedLora("Tiny", path, 1.0)])
    try:
        assert len(peft_layers(pipes.main.transformer)) == 2 * 10  # every q/k/v/o and ffn layer of both blocks
        with_lora = render(pipes)
        assert not np.array_equal(with_lora, base)
        handle.set_weights({"tiny": 0.0})  # off for a clip: exactly the plain model
        assert np.array_equal(render(pipes), base)
        handle.set_weights(clip_weights((("tiny", 1.0),), []))
        assert np.array_equal(render(pipes), with_lora)
        handle.set_weights({"tiny": 0.5})
        assert not np.array_equal(render(pipes), with_lora)
    finally:
        handle.unload()
    assert peft_layers(pipes.main.transformer) == [] and not getattr(pipes.main.transformer, "peft_config", None)
    assert np.array_equal(render(pipes), base)
    with pytest.raises(LoraError, match="unloaded"):
        handle.set_weights({})


def test_a14b_lora_reaches_both_experts_with_their_own_weights(loaded, tmp_path):
    pipes, cfg, base = loaded("a14b-t2v")
    pipe = pipes.main
    path = save_safetensors(tmp_path / "both.safetensors", lora_tensors("diffusers", cfg))
    user = [LoraRequest("both", 0.8, 0.3)]
    handle = apply_loras(pipe, [ResolvedLora("both", path, 0.8, 0.3)])
    adapter = handle.adapters["both"]
    high, low = pipe.transformer.blocks[0].attn1.to_q, pipe.transformer_2.blocks[1].ffn.net[2]
    try:
        # diffusers-format LoRAs without metadata get lora_alpha = rank, so the scaling is the weight itself
        assert (high.scaling[adapter], low.scaling[adapter]) == pytest.approx((0.8, 0.3))
        assert not np.array_equal(render(pipes), base)
        handle.set_weights(clip_weights((("both", 0.4),), user))  # the tag keeps the user's 0.3/0.8 ratio
        assert (high.scaling[adapter], low.scaling[adapter]) == pytest.approx((0.4, 0.15))
        handle.set_weights({"both": (0.0, 0.6)})  # off in the high-noise expert only
        assert high.disable_adapters and not low.disable_adapters and low.scaling[adapter] == pytest.approx(0.6)
        handle.set_weights({})
        assert high.disable_adapters and low.disable_adapters
        with pytest.raises(LoraError, match="'other' is not loaded for this job"):
            handle.set_weights({"other": 1.0})
    finally:
        handle.unload()
    assert peft_layers(pipe.transformer) == [] and peft_layers(pipe.transformer_2) == []
    assert np.array_equal(render(pipes), base)


def test_a_file_diffusers_cannot_load_is_a_lora_error_and_leaves_the_model_clean(loaded, tmp_path):
    pipes, cfg, base = loaded("t2v")
    good = save_safetensors(tmp_path / "good.safetensors", lora_tensors("diffusers", cfg, seed=1))
    broken = lora_tensors("diffusers", cfg, seed=2)
    broken["transformer.blocks.0.attn1.to_q.lora_B.weight"] = np.zeros((24, 3))  # rank 3 against lora_A's 4
    bad = save_safetensors(tmp_path / "broken.safetensors", broken)
    with pytest.raises(LoraError, match="LoRA broken.safetensors: diffusers could not load it into WanPipeline.transformer"):
        apply_loras(pipes, [ResolvedLora("good", good), ResolvedLora("broken", bad)])
    assert peft_layers(pipes.main.transformer) == []
    assert np.array_equal(render(pipes), base)


def test_apply_checks_each_transformer_before_loading(loaded, tmp_path):
    pipes, cfg, _base = loaded("t2v")
    path = save_safetensors(tmp_path / "wide.safetensors", lora_tensors("comfyui", cfg, dim=40))
    with pytest.raises(LoraError, match=r"LoRA wide.safetensors: trained for a model of width 40.*24.*WanPipeline.transformer"):
        apply_loras(pipes, [ResolvedLora("wide", path)])
    assert peft_layers(pipes.main.transformer) == []


def test_a_transformer_shared_by_two_pipelines_is_loaded_once(loaded, tmp_path):
    pipes, cfg, base = loaded("ti2v-5b")  # its I2V pipeline runs on the T2V pipeline's transformer
    assert pipes.image.transformer is pipes.main.transformer
    path = save_safetensors(tmp_path / "shared.safetensors", lora_tensors("kohya", cfg))
    handle = apply_loras(pipes, [ResolvedLora("shared", path, 0.7)])
    try:
        assert len(handle.experts) == 1 and list(pipes.main.transformer.peft_config) == [handle.adapters["shared"]]
        assert not np.array_equal(render(pipes), base)
    finally:
        handle.unload()
    assert np.array_equal(render(pipes), base)
