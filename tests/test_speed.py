"""Faster renders: distillation presets, step caches on the real tiny Wan models, fp8 weight storage.

The caches are diffusers' own hooks; what is counted here is the work they skip: calls of
the Linear layers inside the transformer blocks (a skipped block, or a block whose
attention is extrapolated, makes none). Clips use 10 steps with guidance, so caches get
past their warm-up and the conditional and unconditional passes are both cached.
"""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from deforum_wan.core.speed import (
    CACHES, NOT_OFFERED, PRESETS, WAN_KINDS, CacheSpec, cache_help, cache_support, parse_cache, passes_per_step,
    preset_cost, resolve_preset,
)

# --- presets (pure) ----------------------------------------------------------------------------

SET_FIELDS = ("steps", "guidance", "guidance_2", "flow_shift", "scheduler", "timesteps")


def test_quality_keeps_the_plan_choice() -> None:
    quality = PRESETS["quality"]
    assert all(getattr(quality, f) is None for f in SET_FIELDS)
    assert not quality.needs_lora and quality.scheduler_options() == {}
    assert "specs.py" in quality.source("all")


def test_distilled_presets_have_their_published_values() -> None:
    fast, turbo = PRESETS["fast"], PRESETS["turbo"]
    assert (fast.steps, fast.guidance, fast.guidance_2, fast.flow_shift) == (9, 1.0, 1.0, 8.0)
    assert fast.timesteps == (999, 934, 862, 756, 603, 410, 250, 140, 74)
    assert (turbo.steps, turbo.guidance, turbo.guidance_2, turbo.flow_shift) == (4, 1.0, 1.0, 5.0)
    assert turbo.timesteps == (1000, 750, 500, 250)
    for preset in (fast, turbo):
        assert preset.scheduler == "FlowMatchEulerDiscreteScheduler" and preset.needs_lora
        assert len(preset.timesteps) == preset.steps
    # Wan2.1 distilled samplers re-noise after every step; Wan2.2 A14B's takes plain Euler steps
    assert turbo.scheduler_options() == {"stochastic_sampling": True, "shift": 5.0}
    assert turbo.scheduler_options(two_experts=True) == {"stochastic_sampling": False, "shift": 5.0}
    assert fast.scheduler_options(two_experts=True)["stochastic_sampling"] is True


@pytest.mark.parametrize("name", ["fast", "turbo"])
def test_every_preset_value_is_cited(name: str) -> None:
    preset = PRESETS[name]
    for field in SET_FIELDS + ("loras",):
        assert getattr(preset, field) not in (None, ""), field
        assert "https://" in preset.source(field), (name, field)
    assert '"infer_steps"' in preset.source("steps") and "shift" in preset.source("flow_shift")
    assert preset.source("nothing") == ""


def test_resolve_preset() -> None:
    assert resolve_preset("Turbo ") is PRESETS["turbo"]
    assert resolve_preset(None) is resolve_preset("") is PRESETS["quality"]
    with pytest.raises(ValueError, match=r"^preset: unknown preset 'warp'; choose one of quality, fast, turbo"):
        resolve_preset("warp")


def test_preset_cost_counts_transformer_passes() -> None:
    quality, fast, turbo = PRESETS["quality"], PRESETS["fast"], PRESETS["turbo"]
    assert passes_per_step(5.0) == 2 and passes_per_step(1.0) == 1
    assert preset_cost(quality, 50, 5.0) == 100.0  # Wan2.1 T2V: 50 steps, guidance 5
    assert preset_cost(quality, 50, 1.0) == 50.0
    assert preset_cost(fast, 50, 5.0) / preset_cost(quality, 50, 5.0) == pytest.approx(0.09)
    assert preset_cost(turbo, 40, 5.0) / preset_cost(quality, 40, 5.0) == pytest.approx(0.05)  # Wan2.1 I2V: 40 steps


# --- cache names and thresholds (pure) ---------------------------------------------------------


def test_parse_cache_defaults_thresholds_and_aliases() -> None:
    assert parse_cache("magcache") == CacheSpec("magcache", 0.06)
    assert parse_cache(" FBCache:0.1 ") == CacheSpec("fbcache", 0.1)
    assert parse_cache("fbc") == CacheSpec("fbcache", 0.05)
    assert parse_cache("taylorseer:3") == CacheSpec("taylorseer", 3.0) and str(parse_cache("taylor:3")) == "taylorseer:3"
    assert str(parse_cache("sea")) == "seacache:0.25"
    assert parse_cache("none") is parse_cache("off") is parse_cache("") is parse_cache(None) is None


@pytest.mark.parametrize("text,message", [
    ("blockcache", r"unknown cache 'blockcache'; choose one of fbcache, taylorseer, magcache, seacache or none"),
    ("pab", r"'pab' is not offered: Pyramid Attention Broadcast"),
    ("fastercache:0.1", r"'fastercache' is not offered"),
    ("fbcache:fast", r"the threshold of fbcache must be a number, got 'fast'"),
    ("magcache:0", r"the threshold of magcache must be a positive number"),
    ("seacache:nan", r"the threshold of seacache must be a positive number"),
    ("taylorseer:2.5", r"the threshold of taylorseer is a whole number of steps \(2 or more\)"),
    ("taylorseer:1", r"the threshold of taylorseer is a whole number of steps"),
    ("none:0.1", r"'none' takes no threshold"),
])
def test_parse_cache_errors_name_the_field(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"^cache: " + message):
        parse_cache(text)


def test_cache_table_and_help() -> None:
    text = cache_help()
    for info in CACHES.values():
        assert text.count(f"{info.name}[:") == 1 and info.meaning in text
        assert set(info.kinds) <= set(WAN_KINDS)
        for kind in WAN_KINDS:  # every kind either works or says why not
            reason = cache_support(info.name, kind)
            assert (reason is None) == (kind in info.kinds)
            assert reason is None or len(reason) > 20
    assert cache_support("fbcache", "vace") and "hint" in cache_support("fbcache", "vace")
    assert "WanImageToVideoPipeline" in cache_support("seacache", "i2v")
    assert "taylorseer[:5]" in text and set(NOT_OFFERED) == {"pab", "fastercache"}


# --- caches on the tiny models -----------------------------------------------------------------

W = H = 32
STEPS = 10
CLIP = dict(prompt="a red cat dances in the city", negative_prompt="blurry", num_frames=9, width=W, height=H,
            steps=STEPS, guidance=5.0, seed=7)
MODES = {"t2v": "t2v", "vace": "vace", "i2v": "i2v", "ti2v-5b": "t2v", "a14b-t2v": "t2v"}
# thresholds that skip on tiny random models (their first block changes a lot between steps)
TEST_SPECS = {"fbcache": CacheSpec("fbcache", 0.2), "taylorseer": CacheSpec("taylorseer", 3.0),
              "magcache": CacheSpec("magcache", 0.06), "seacache": CacheSpec("seacache", 0.25)}
SUPPORTED = [(kind, name) for kind in MODES for name in CACHES if cache_support(name, kind) is None]
UNSUPPORTED = [(kind, name) for kind in MODES for name in CACHES if cache_support(name, kind) is not None]


@pytest.fixture(scope="module")
def loaded(tiny_models: dict[str, Path]):
    from deforum_wan.renderer.loading import load_pipelines
    from deforum_wan.renderer.models import classify_model

    cache: dict[str, Any] = {}

    def get(kind: str):
        if kind not in cache:
            cache[kind] = load_pipelines(classify_model(tiny_models[kind]), device="cpu")
        return cache[kind]

    yield get
    for pipes in cache.values():
        pipes.free()


def transformers(pipes) -> list[Any]:
    from deforum_wan.renderer.caches import transformers_of

    return transformers_of(*pipes.pipes())


@contextlib.contextmanager
def block_work(modules: list[Any]) -> Iterator[list[int]]:
    """Count calls of the Linear layers inside the transformer blocks (and VACE's hint blocks)."""
    import torch

    count = [0]
    handles = [layer.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1))
               for module in modules for name, layer in module.named_modules()
               if isinstance(layer, torch.nn.Linear) and re.match(r"(vace_)?blocks\.\d+\.", name)]
    try:
        yield count
    finally:
        for handle in handles:
            handle.remove()


def clip(pipes, mode: str) -> np.ndarray:
    from deforum_wan.renderer.pipelines import ClipRequest

    if mode == "t2v":
        return pipes.t2v(ClipRequest(**CLIP))
    if mode == "i2v":
        image = np.random.default_rng(0).integers(0, 256, size=(H, W, 3), dtype=np.uint8)
        return pipes.i2v(ClipRequest(image=image, **CLIP))
    known = np.stack([np.full((H, W, 3), 40 * i, np.uint8) for i in range(3)])
    return pipes.vace(ClipRequest(known_frames=known, **CLIP))


_BASELINES: dict[str, tuple[int, np.ndarray]] = {}


def counted_clip(pipes, kind: str) -> tuple[int, np.ndarray]:
    with block_work(transformers(pipes)) as count:
        frames = clip(pipes, MODES[kind])
    return count[0], frames


def baseline(pipes, kind: str) -> tuple[int, np.ndarray]:
    if kind not in _BASELINES:
        _BASELINES[kind] = counted_clip(pipes, kind)
    return _BASELINES[kind]


def test_the_kind_of_every_tiny_transformer(loaded) -> None:
    from deforum_wan.renderer.caches import transformer_kind

    for kind in WAN_KINDS:
        modules = transformers(loaded(kind))
        assert len(modules) == (2 if kind.startswith("a14b") else 1)
        assert {transformer_kind(m, modules) for m in modules} == {kind}


@pytest.mark.parametrize("kind,name", SUPPORTED)
def test_cache_skips_block_work_and_removing_it_restores_the_clip(loaded, kind: str, name: str) -> None:
    from deforum_wan.renderer.caches import active_cache, apply_cache, remove_cache

    pipes = loaded(kind)
    modules = transformers(pipes)
    full, frames = baseline(pipes, kind)
    apply_cache(modules, TEST_SPECS[name], STEPS)
    try:
        assert {active_cache(m) for m in modules} == {CACHES[name].config}  # both experts of an A14B model
        cached, cached_frames = counted_clip(pipes, kind)
    finally:
        remove_cache(modules)
    assert cached < full * 0.85, f"{name} on {kind}: {cached} block-layer calls, {full} without"
    assert cached_frames.shape == frames.shape and cached_frames.std() > 0
    assert all(active_cache(m) is None for m in modules)
    again, again_frames = counted_clip(pipes, kind)
    assert again == full
    np.testing.assert_array_equal(again_frames, frames)  # nothing of the cache is left behind


@pytest.mark.parametrize("kind,name", UNSUPPORTED)
def test_cache_refused_where_it_does_not_work(loaded, kind: str, name: str) -> None:
    from deforum_wan.renderer.caches import CacheError, active_cache, apply_cache

    modules = transformers(loaded(kind))
    with pytest.raises(CacheError, match=rf"\({name}\) does not work on {kind} models: "):
        apply_cache(modules, TEST_SPECS[name], STEPS)
    assert all(active_cache(m) is None for m in modules)


def test_apply_replaces_and_none_removes(loaded) -> None:
    from deforum_wan.renderer.caches import active_cache, apply_cache

    modules = transformers(loaded("t2v"))
    apply_cache(modules, CacheSpec("fbcache", 0.2), STEPS)
    apply_cache(modules, parse_cache("taylorseer"), STEPS)
    assert active_cache(modules[0]) == "TaylorSeerCacheConfig"
    apply_cache(modules, parse_cache("none"), STEPS)
    assert active_cache(modules[0]) is None
    with pytest.raises(ValueError, match="steps"):
        apply_cache(modules, CacheSpec("fbcache", 0.2), 0)


def test_missing_cache_names_the_diffusers_version(loaded, monkeypatch: pytest.MonkeyPatch) -> None:
    import diffusers
    import diffusers.hooks

    from deforum_wan.renderer.caches import CacheError, active_cache, apply_cache

    modules = transformers(loaded("t2v"))
    monkeypatch.delattr(diffusers.hooks, "SeaCacheConfig")
    message = rf"SeaCache \(seacache\) needs diffusers 0\.41\.0 or newer .*has diffusers {re.escape(diffusers.__version__)}"
    with pytest.raises(CacheError, match=message):
        apply_cache(modules, parse_cache("seacache"), STEPS)
    assert active_cache(modules[0]) is None


def test_magcache_ratios_per_model() -> None:
    from types import SimpleNamespace

    from deforum_wan.renderer.caches import MAG_RATIOS, CacheError, mag_ratios_for

    assert {len(v) for k, v in MAG_RATIOS.items() if k.startswith("wan2.1-i2v")} == {40}  # 40 official steps
    assert {len(v) for k, v in MAG_RATIOS.items() if not k.startswith("wan2.1-i2v")} == {50}
    assert all(v[0] == 1.0 and 0.8 < min(v) and max(v) < 1.05 for v in MAG_RATIOS.values())
    small = SimpleNamespace(config={"num_attention_heads": 12, "attention_head_dim": 128})
    big = SimpleNamespace(config={"num_attention_heads": 40, "attention_head_dim": 128})
    assert mag_ratios_for(small, "t2v")[0] == "wan2.1-t2v-1.3b" and mag_ratios_for(big, "t2v")[0] == "wan2.1-t2v-14b"
    assert mag_ratios_for(big, "i2v")[0] == "wan2.1-i2v-14b-480p"
    assert mag_ratios_for(big, "i2v", 832 * 480)[0] == "wan2.1-i2v-14b-480p"
    assert mag_ratios_for(big, "i2v", 1280 * 720)[0] == "wan2.1-i2v-14b-720p"
    assert mag_ratios_for(big, "ti2v-5b")[0] == "wan2.2-ti2v-5b"
    with pytest.raises(CacheError, match="no magnitude ratios for flf2v"):
        mag_ratios_for(big, "flf2v")


# --- fp8 weight storage ---------------------------------------------------------------------------

GIB = 1024**3


def fake_model(tmp_path: Path, **gib: float):
    """A model folder whose component folders hold sparse files of the given sizes."""
    from deforum_wan.core.specs import model_spec
    from deforum_wan.renderer.models import ModelInfo

    for component, size in gib.items():
        (tmp_path / component).mkdir()
        with open(tmp_path / component / "weights.safetensors", "wb") as handle:
            os.ftruncate(handle.fileno(), int(size * GIB))
    return ModelInfo(path=tmp_path, kind="t2v", spec=model_spec("t2v"), size_bytes=0, name=tmp_path.name)


def test_choose_storage_only_when_fp8_changes_where_weights_live(tmp_path: Path) -> None:
    from deforum_wan.renderer.memory import FP8_STORAGE, choose_storage

    info = fake_model(tmp_path, transformer=28, text_encoder=11, vae=0.5)  # Wan2.1 T2V 14B in bf16, roughly
    assert choose_storage(info, "cuda", 48 * GIB) is None  # everything fits in bf16
    assert choose_storage(info, "cuda", 35 * GIB) == FP8_STORAGE  # resident in fp8 instead of per-model offload
    assert choose_storage(info, "cuda", 20 * GIB) == FP8_STORAGE  # per-model offload instead of group offload
    assert choose_storage(info, "cuda", 10 * GIB) is None  # group offload either way: keep bf16
    assert choose_storage(info, "cpu", 1 * GIB) is None and choose_storage(info, "cuda:0", None) is None


def test_two_experts_count_together(tmp_path: Path) -> None:
    from deforum_wan.renderer.memory import FP8_STORAGE, choose_storage

    info = fake_model(tmp_path, transformer=28, transformer_2=28, text_encoder=11, vae=0.5)
    assert choose_storage(info, "cuda", 72 * GIB) == FP8_STORAGE  # 67.5 GiB in bf16 does not fit, 39.5 in fp8 does
    assert choose_storage(info, "cuda", 80 * GIB) is None


def test_memory_profile_counts_fp8_transformers_at_half(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deforum_wan.renderer import memory

    info = fake_model(tmp_path, transformer=28, text_encoder=11, vae=0.5)
    monkeypatch.setattr(memory, "free_cuda_bytes", lambda device: 35 * GIB)
    assert memory.choose_memory_profile(info, "cuda") == "model"
    assert memory.choose_memory_profile(info, "cuda", storage=memory.FP8_STORAGE) == "none"
    assert memory.resolve_storage("auto", info, "cuda") == memory.FP8_STORAGE
    assert memory.resolve_storage("none", info, "cuda") is None and memory.resolve_storage("fp8", info, "cpu")
    with pytest.raises(ValueError, match="^storage: unknown weight storage 'fp4'"):
        memory.resolve_storage("fp4", info, "cuda")


def test_fp8_storage_renders_on_cpu(tiny_models: dict[str, Path]) -> None:
    """CPU has no fp8 matmul; layerwise casting stores fp8 and computes each layer in float32."""
    import torch

    from deforum_wan.renderer.loading import load_pipelines
    from deforum_wan.renderer.memory import FP8_STORAGE, apply_storage, stored_in
    from deforum_wan.renderer.models import classify_model
    from deforum_wan.renderer.pipelines import ClipRequest

    pipes = load_pipelines(classify_model(tiny_models["ti2v-5b"]), device="cpu")
    try:
        request = ClipRequest(**dict(CLIP, steps=3, width=32, height=32))
        before = pipes.t2v(request).astype(np.float64)
        done: set[int] = set()
        cast = apply_storage(pipes.main, FP8_STORAGE, done=done)
        assert len(cast) == 1 and apply_storage(pipes.image, FP8_STORAGE, done=done) == []  # one shared transformer
        transformer = pipes.main.transformer
        assert stored_in(transformer) == torch.float8_e4m3fn and transformer.dtype == torch.float32
        assert transformer.blocks[0].ffn.net[0].proj.weight.dtype == torch.float8_e4m3fn
        after = pipes.t2v(request).astype(np.float64)
        assert np.isfinite(after).all() and np.corrcoef(before.ravel(), after.ravel())[0, 1] > 0.99
        assert apply_storage(pipes.main, FP8_STORAGE) == []  # already stored in fp8
        assert apply_storage(pipes.main, None) == []
        with pytest.raises(ValueError, match="storage"):
            apply_storage(pipes.main, "int4")
    finally:
        pipes.free()
