"""Prompt enhancer: model discovery and choice, cleaning, cache, and the real tiny Qwen end to end."""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deforum_wan.enhance import cleaning, context, prompting
from deforum_wan.enhance import qwen as qwen_models
from deforum_wan.enhance.cache import EnhanceCache
from deforum_wan.enhance.cleaning import clean_output, clean_text
from deforum_wan.enhance.options import EnhanceError, EnhanceOptions, EnhanceRequest
from deforum_wan.enhance.qwen import download_qwen, estimate_params, find_qwen_models, resolve_qwen, select_qwen
from deforum_wan.enhance.rewrite import QwenEnhancer, clip_requests, enhance_plan
from deforum_wan.core.plan import PlanOptions, plan_clips
from deforum_wan.core.settings import settings_from_dict
from deforum_wan.core.specs import MODEL_SPECS

SHARED = Path(__file__).resolve().parents[2] / "shared" / "deforum-settings"
FORGE_DEFAULT = SHARED / "forge-deforum-default.txt"

MOVE = "fast dolly in, with moderate handheld shake, sustained"
ORIGINAL = "A cute white bunny sitting in a peaceful meadow, soft natural lighting, photorealistic"
BODY = ("A fluffy white bunny sits in a sunlit meadow of tall green grass and tiny yellow flowers, its ears twitching "
        "as a light breeze ripples through the field. Warm golden-hour light rims its soft fur, and dew sparkles on "
        "the blades around it. The bunny sniffs the air and nibbles a clover leaf. Photorealistic, shallow depth of "
        f"field, gentle film grain, {MOVE}.")
BODY_NO_MOVE = BODY.replace(f", {MOVE}", "")

# Published Qwen2.5-Instruct configs (the fields the estimate reads) and their parameter counts.
QWEN_CONFIGS = {
    "0.5B": ({"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
              "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True}, 0.494e9),
    "1.5B": ({"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
              "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True}, 1.54e9),
    "3B": ({"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
            "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True}, 3.09e9),
    "7B": ({"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
            "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False}, 7.62e9),
}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test reads or writes the user's caches or models folders."""
    monkeypatch.setenv("DEFORUM_WAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("DEFORUM_WAN_MODELS", str(tmp_path / "models" / "wan"))


def fake_qwen(folder: Path, size: str = "0.5B", chat_template: bool = True, weights: bool = True) -> Path:
    """A model folder with real config/tokenizer JSON and a sparse weights file (nothing is loaded)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "torch_dtype": "bfloat16",
              **QWEN_CONFIGS[size][0]}
    (folder / "config.json").write_text(json.dumps(config))
    tok = {"eos_token": "<|im_end|>"}
    if chat_template:
        tok["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (folder / "tokenizer_config.json").write_text(json.dumps(tok))
    (folder / "tokenizer.json").write_text("{}")
    if weights:
        with open(folder / "model.safetensors", "wb") as f:
            f.truncate(int(QWEN_CONFIGS[size][1] * 2))
    return folder


def small_settings(**kw):
    data = {"prompts": {"0": "a red fox in the snow", "8": "a blue bird on a branch", "16": "a red fox in the snow"},
            "max_frames": 24, "fps": 16, "W": 32, "H": 32, "seed": 11, "batch_name": "enh_{timestring}",
            "animation_mode": "3D", "translation_z": "0:(2)", "rotation_3d_y": "0:(0.5)"}
    data.update(kw)
    return settings_from_dict(data)


def small_plan(**kw):
    settings = small_settings(**kw)
    return settings, plan_clips(settings, MODEL_SPECS["t2v"], PlanOptions(seed=11, max_clip_frames=9, steps=1))


# ---------------------------------------------------------------- finding and choosing models


@pytest.mark.parametrize("size", list(QWEN_CONFIGS))
def test_parameter_estimate_matches_published_sizes(size):
    config, published = QWEN_CONFIGS[size]
    assert estimate_params(config) == pytest.approx(published, rel=0.02)


def test_finds_models_in_models_folders_and_hub_cache(tmp_path):
    wan = tmp_path / "models" / "wan"
    fake_qwen(wan / "qwen" / "Qwen2.5-0.5B-Instruct", "0.5B")
    fake_qwen(tmp_path / "models" / "LLM" / "Qwen2.5-3B-Instruct", "3B")
    fake_qwen(wan / "qwen" / "base-model", "1.5B", chat_template=False)  # no chat template: not usable
    broken = fake_qwen(wan / "qwen" / "half-download", "1.5B", weights=False)
    (broken / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    (broken / "model-00001-of-00002.safetensors").write_bytes(b"x")
    # The hub cache links snapshot files to blobs.
    repo = tmp_path / "hub" / "models--Qwen--Qwen2.5-7B-Instruct"
    staging = fake_qwen(tmp_path / "staging", "7B")
    snap = repo / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for f in staging.iterdir():
        blob = repo / "blobs" / f"sha-{f.name}"
        f.rename(blob)
        (snap / f.name).symlink_to(blob)

    models = find_qwen_models()
    assert [m.name for m in models] == ["Qwen/Qwen2.5-7B-Instruct", "Qwen2.5-3B-Instruct", "Qwen2.5-0.5B-Instruct"]
    assert [m.source for m in models] == ["hf-cache", "folder", "folder"]
    assert models[0].weight_bytes == int(7.62e9 * 2)  # sizes through the symlinks
    assert find_qwen_models(include_hub_cache=False)[0].name == "Qwen2.5-3B-Instruct"


def test_auto_select_takes_the_largest_model_that_fits(tmp_path):
    models = [qwen_models.inspect_qwen_folder(fake_qwen(tmp_path / s, s)) for s in QWEN_CONFIGS]
    small, _, three, seven = models
    for device in ("cpu", "cuda"):
        assert select_qwen(models, seven.memory_bytes(device), device) is seven
        assert select_qwen(models, seven.memory_bytes(device) - 1, device) is three
        assert select_qwen(models, small.memory_bytes(device) - 1, device) is None
    # fp32 on CPU needs about twice the memory of bf16 on a GPU
    assert seven.memory_bytes("cpu") > 1.8 * seven.memory_bytes("cuda") - qwen_models.GIB
    assert select_qwen(models, None, "cpu") is small  # unknown free memory: the smallest


def test_resolve_qwen_by_folder_name_or_auto(tmp_path, monkeypatch):
    wan = tmp_path / "models" / "wan"
    fake_qwen(wan / "qwen" / "Qwen2.5-0.5B-Instruct", "0.5B")
    fake_qwen(wan / "qwen" / "Qwen2.5-7B-Instruct", "7B")
    monkeypatch.setattr(qwen_models, "free_memory_bytes", lambda device: 20 * qwen_models.GIB)
    assert resolve_qwen(None, None, "cuda").name == "Qwen2.5-7B-Instruct"
    assert resolve_qwen(None, None, "cpu").name == "Qwen2.5-0.5B-Instruct"  # 7B in fp32 does not fit 20 GiB
    assert resolve_qwen("7B", None, "cpu").name == "Qwen2.5-7B-Instruct"  # an override is obeyed
    assert resolve_qwen(str(wan / "qwen" / "Qwen2.5-0.5B-Instruct"), None, "cuda").params < 1e9
    with pytest.raises(EnhanceError, match="no single found model"):
        resolve_qwen("Qwen2.5-14B", None, "cpu")
    monkeypatch.setattr(qwen_models, "free_memory_bytes", lambda device: qwen_models.GIB // 4)
    with pytest.raises(EnhanceError, match="fits"):
        resolve_qwen(None, None, "cpu")


def test_no_model_found_says_where_it_looked_and_how_to_download(tmp_path):
    with pytest.raises(EnhanceError) as info:
        resolve_qwen(None, str(tmp_path / "models" / "wan"), "cpu")
    message = str(info.value)
    assert str(tmp_path / "models" / "wan" / "qwen") in message and str(tmp_path / "models" / "LLM") in message
    assert "download Qwen/Qwen2.5-0.5B-Instruct" in message


def test_download_needs_the_exact_repo_id_and_fetches_only_it(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, local_dir, **kw):
        calls.append((repo_id, local_dir))
        fake_qwen(Path(local_dir), "0.5B")
        return local_dir

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    for vague in ("0.5B", "Qwen2.5-0.5B-Instruct", "Qwen/*", ""):
        with pytest.raises(EnhanceError, match="exact"):
            download_qwen(vague, tmp_path)
    assert calls == []
    folder = download_qwen("Qwen/Qwen2.5-0.5B-Instruct", tmp_path / "elsewhere")
    assert calls == [("Qwen/Qwen2.5-0.5B-Instruct", str(tmp_path / "elsewhere" / "Qwen2.5-0.5B-Instruct"))]
    assert folder == tmp_path / "elsewhere" / "Qwen2.5-0.5B-Instruct"
    # Without a target it lands where auto-select looks.
    folder = download_qwen("Qwen/Qwen2.5-0.5B-Instruct")
    assert folder == tmp_path / "models" / "wan" / "qwen" / "Qwen2.5-0.5B-Instruct"
    assert [m.path for m in find_qwen_models()] == [folder]


# ---------------------------------------------------------------- cleaning


@pytest.mark.parametrize("raw", [
    "Sure! Here is the rewritten prompt:\n\n" + BODY,
    "Certainly, here's an enhanced version of your prompt: \"" + BODY + "\"",
    "\"" + BODY + "\"",
    "“" + BODY + "”",
    "<think>The user wants a bunny in a meadow. I will add light and keep the camera.</think>\n\n" + BODY,
    "I should describe the fur first.</think>" + BODY,  # the template opened the think block
    "**Enhanced Prompt:**\n\n" + BODY + "\n\n---\n*Note: I kept the camera movement as given.*",
    "# Prompt\n```\n" + BODY + "\n```",
    "Prompt: " + BODY,
    BODY + "\n\nI hope this helps! Let me know if you want any changes.",
    BODY + " (68 words)",
])
def test_clean_output_keeps_only_the_prompt(raw):
    assert clean_output(raw, MOVE, ORIGINAL) == (BODY, None)


def test_missing_camera_words_are_appended_verbatim():
    text, reason, notes = clean_text("Here is the prompt:\n" + BODY_NO_MOVE, MOVE, ORIGINAL)
    assert reason is None and notes == ("camera words appended",)
    assert text.startswith("A fluffy white bunny") and text.endswith(f", {MOVE}.")
    assert text.count(MOVE) == 1
    paraphrased = BODY_NO_MOVE + " The camera quickly pushes toward the bunny with a slight handheld wobble."
    assert clean_output(paraphrased, MOVE, ORIGINAL)[0].endswith(f"{MOVE}.")


def test_long_output_is_cut_at_a_sentence_boundary_and_keeps_the_camera_words():
    extra = " ".join(f"Far behind, hill number {i} rolls gently under a pale sky with drifting clouds." for i in range(6))
    text, reason = clean_output(BODY_NO_MOVE + " " + extra, MOVE, ORIGINAL)
    assert reason is None
    words = text.split()
    assert len(words) <= cleaning.MAX_WORDS + len(MOVE.split())
    before_camera = text[: -len(MOVE) - 3]
    assert before_camera.endswith(("clouds", "leaf", "grain")) and "hill number 5" not in text
    assert text.endswith(f", {MOVE}.")


def test_quoted_text_must_survive():
    original = "A synthwave bunny holding a neon sign that says 'Deforum & Forge'"
    kept = "A synthwave bunny in a chrome jacket lifts a glowing neon sign that says 'Deforum & Forge' above a wet street."
    assert clean_output(kept + " The bunny grins.", "static camera", original)[1] is None
    assert clean_output('"' + kept + '"', "static camera", original)[0].startswith("A synthwave bunny")
    dropped = "A synthwave bunny in a chrome jacket lifts a glowing neon sign above a wet street at night."
    text, reason = clean_output(dropped, "static camera", original)
    assert text == original and "Deforum & Forge" in reason


def test_chinese_output_is_cleaned_and_keeps_chinese_camera_words():
    move = "镜头快速推进，伴有中等手持抖动"
    body = "一只毛茸茸的白色小兔坐在阳光明媚的草地上，耳朵随着微风轻轻抖动。金色的夕阳勾勒出它柔软的毛发，草叶上的露珠闪闪发光。小兔嗅着空气，啃着一片三叶草。写实风格，浅景深。"
    text, reason, notes = clean_text("好的，以下是改写后的提示词：\n\n「" + body + "」", move, "白色小兔")
    assert reason is None and notes == ("camera words appended",)
    assert text.startswith("一只毛茸茸") and text.endswith(move + "。") and "以下是" not in text
    long = body + ("远处是连绵起伏的青山，山顶覆盖着薄薄的白雪。天空中飘着几朵柔软的白云，一群飞鸟从画面左侧掠过。"
                   "溪水在石头间欢快地流淌，反射着点点金光。几只蝴蝶在野花丛中翩翩起舞，花瓣随风轻轻飘落。"
                   "草地尽头有一座古老的木屋，烟囱里升起袅袅炊烟，窗户透出温暖的灯光。")
    text, reason = clean_output(long, move, "白色小兔")
    assert reason is None and len(text) < len(long) and text.endswith(move + "。")
    assert cleaning._units(text) <= cleaning.MAX_WORDS + cleaning._units(move) + 1


@pytest.mark.parametrize(("raw", "reason"), [
    ("", "empty output"),
    ("\n\n\n\n", "empty output"),
    ("<think>Let me consider the lighting and the", "empty output"),  # never answered
    ("!!! ??? ... ,,, ;;; 123 456", "no letters in the output"),
    ("ĠĠĠ ## %% && ** (( )) 0x1f 0x2e {} [] <> ~~ ^^ $$", "output is mostly not text"),
    ("bunny bunny bunny bunny bunny bunny bunny bunny bunny bunny", "output repeats itself"),
    ("a bunny, a bunny, a bunny, a bunny, a bunny, in a meadow", "output repeats itself"),
    ("A bunny.", "output too short"),
    ("Sure! Here is the rewritten prompt:", "empty output"),
])
def test_garbage_falls_back_to_the_original_with_a_reason(raw, reason):
    assert clean_output(raw, MOVE, ORIGINAL) == (ORIGINAL, reason)


# ---------------------------------------------------------------- prompts, options, cache


def test_user_message_carries_prompt_camera_words_and_style():
    msg = prompting.user_message(EnhanceRequest("a fox", "slow pan left", "oil painting", 0.9))
    assert "a fox" in msg and "slow pan left" in msg and "oil painting" in msg and "strongly" in msg
    assert "oil painting" not in prompting.user_message(EnhanceRequest("a fox", "slow pan left", "oil painting", 0.0))
    zh = prompting.chat_messages(EnhanceRequest("一只狐狸", "镜头缓慢左摇", language="zh"))
    assert zh[0]["content"] == prompting.SYSTEM_PROMPTS["zh"] and "镜头缓慢左摇" in zh[1]["content"]
    assert "word for word" in prompting.SYSTEM_PROMPTS["en"] and "60 to 100 words" in prompting.SYSTEM_PROMPTS["en"]
    assert "一字不差" in prompting.SYSTEM_PROMPTS["zh"]


@pytest.mark.parametrize("bad", [{"target_language": "fr"}, {"style_strength": 1.5}, {"style_strength": "lots"},
                                 {"timeout_seconds": 0}, {"max_new_tokens": 2}, {"qwne": "x"},
                                 {"shared_context": "maybe"}, {"shared_context": 2}])
def test_bad_options_are_user_errors(bad):
    with pytest.raises(EnhanceError):
        EnhanceOptions.from_dict(bad)


def test_bad_options_leave_the_plan_unchanged_with_a_warning():
    settings, plan = small_plan()
    events = []
    assert enhance_plan(plan, settings, {"target_language": "fr"}, events.append) == plan
    assert [e["type"] for e in events] == ["warning"] and "target_language" in events[0]["message"]


def test_no_model_leaves_the_plan_unchanged_with_a_warning(tmp_path):
    settings, plan = small_plan()
    events = []
    out = enhance_plan(plan, settings, {"models_dir": str(tmp_path / "empty" / "wan"), "device": "cpu"}, events.append)
    assert out == plan
    assert any(e["type"] == "warning" and "no Qwen instruct model found" in e["message"] for e in events)


def test_cache_key_covers_every_input_and_the_system_prompt_version(monkeypatch):
    base = EnhanceRequest("a fox", "pan left", "ink", 0.5, "en")
    key = EnhanceCache.key("model-a", base, 256)
    variants = [EnhanceCache.key("model-b", base, 256), EnhanceCache.key("model-a", base, 128)]
    for change in ({"prompt": "a cat"}, {"movement": "pan right"}, {"style": "oil"}, {"style_strength": 0.6},
                   {"language": "zh"}, {"shared": "a red coat"}, {"previous": "a cat"}, {"next": "a cat"}):
        variants.append(EnhanceCache.key("model-a", EnhanceRequest(**{**base.__dict__, **change}), 256))
    monkeypatch.setattr(prompting, "SYSTEM_PROMPT_VERSION", "999")
    variants.append(EnhanceCache.key("model-a", base, 256))
    assert key not in variants and len(set(variants)) == len(variants)


def test_cache_round_trip_is_atomic_and_survives_damage(tmp_path):
    cache = EnhanceCache(tmp_path / "c")
    cache.put("ab" + "0" * 62, "raw output ✓", {"model": "m"})
    assert cache.get("ab" + "0" * 62) == "raw output ✓"
    assert cache.get("cd" + "0" * 62) is None
    assert [p.name for p in (tmp_path / "c").rglob("*")] == ["ab", "ab" + "0" * 62 + ".json"]  # no temp files left
    (tmp_path / "c" / "ab" / ("ab" + "0" * 62 + ".json")).write_text("{half a fi")
    assert cache.get("ab" + "0" * 62) is None  # a damaged entry is regenerated, not an error


# ---------------------------------------------------------------- the video's context

WOMAN = "a red-haired woman in a yellow coat"
STORY = [f"{WOMAN}, walking down a rainy street, neon lights, cinematic",
         "A Red-Haired Woman in a YELLOW coat, sitting in a small cafe, cinematic.",
         "a rainy street at night. empty, Neon Lights, cinematic",
         f"{WOMAN}, waving goodbye, cinematic"]
STORY_SHARED = f"{WOMAN}, neon lights, cinematic"


def test_shared_line_keeps_recurring_phrases_in_first_seen_order():
    assert context.shared_line(STORY) == STORY_SHARED  # first-seen spelling, compared case/space-insensitively
    assert context.shared_line(STORY[2:] + STORY[:2]).startswith("Neon Lights, cinematic, a red-haired woman")
    assert context.shared_line(["a fox, snow", "a bird, snow", "a fox, rain"]) == "a fox, snow"
    assert context.shared_line(["a  Red\tcoat , dawn", "A red coat, dusk"]) == "a Red coat"


def test_shared_line_leaves_out_one_off_phrases_and_a_single_prompt():
    line = context.shared_line(STORY)
    for one_off in ("walking down", "sitting in a small cafe", "rainy street", "empty", "waving goodbye"):
        assert one_off not in line
    assert context.shared_line([STORY[0]]) == ""
    assert context.shared_line([STORY[0], STORY[0].upper(), f"  {STORY[0]} "]) == ""  # one distinct prompt
    assert context.shared_line([]) == context.shared_line(["", " "]) == ""
    assert context.shared_line(["a fox, a fox, snow", "a bird"]) == ""  # repeated within one prompt only
    # A clip that spans two prompts ("A. Then B") does not make A's phrases shared with the clip "A".
    merged = ["a fox, deep snow", "a fox, deep snow. Then a bird, deep snow", "a bird, deep snow"]
    assert context.shared_line(merged) == "deep snow"


def test_shared_line_is_bounded_by_whole_phrases():
    phrases = [f"recurring phrase number {i} with extra words" for i in range(10)]
    prompts = [", ".join(phrases) + ", in the morning", ", ".join(phrases) + ", at night"]
    line = context.shared_line(prompts)
    kept = line.split(", ")
    assert 0 < len(line) <= context.SHARED_MAX_CHARS == 200
    assert kept == phrases[: len(kept)] and len(kept) < len(phrases)
    assert context.shared_line(prompts, max_chars=60) == phrases[0]
    too_long = "x" * 150 + " " + "y" * 100
    assert context.shared_line([f"{too_long}, a red coat, day", f"{too_long}, a red coat, night"]) == "a red coat"


def test_shared_line_handles_chinese_punctuation():
    assert context.split_phrases("一位红发女子，身穿黄色外套。坐在 1.5 米高的窗边") == [
        "一位红发女子", "身穿黄色外套", "坐在 1.5 米高的窗边"]
    zh = ["一位红发女子，身穿黄色外套，走在雨夜的街道上。", "一位红发女子，身穿黄色外套，坐在咖啡馆里。", "雨夜的街道，空无一人。"]
    assert context.shared_line(zh) == "一位红发女子，身穿黄色外套"
    assert context.shared_line(zh, max_chars=10) == "一位红发女子"


def test_neighbours_are_the_previous_and_next_distinct_scene():
    prompts = ["a fox", "A  Fox.", "a bird", "an owl", "an owl", "", "a fox"]
    assert context.neighbours(prompts) == [("", "a bird"), ("", "a bird"), ("a fox", "an owl"),
                                           ("a bird", "a fox"), ("a bird", "a fox"), ("", ""), ("an owl", "")]
    assert context.neighbours(["a fox"]) == [("", "")] and context.neighbours([]) == []
    long = ", ".join(f"detail number {i}" for i in range(40))
    previous, _ = context.neighbours(["a fox", long, "a bird"])[2]
    assert len(previous) <= context.NEIGHBOUR_MAX_CHARS and long.startswith(previous) and previous.endswith(
        tuple(f"detail number {i}" for i in range(40)))
    contexts = context.scene_contexts(STORY)
    assert {c.shared for c in contexts} == {STORY_SHARED}
    assert [(c.previous, c.next) for c in contexts] == [("", STORY[1]), (STORY[0], STORY[2].rstrip(".")),
                                                        (STORY[1], STORY[3]), (STORY[2], "")]


def test_user_message_carries_the_video_context():
    request = EnhanceRequest("a woman sits in a small cafe", "slow pan left", shared=STORY_SHARED,
                             previous="a woman walks down a rainy street", next="a woman waves goodbye")
    assert prompting.user_message(request).splitlines() == [
        f"Keep the same across the whole video: {STORY_SHARED}",
        "Before this scene: a woman walks down a rainy street",
        "After this scene: a woman waves goodbye",
        "Scene: a woman sits in a small cafe",
        "Camera movement (include word for word): slow pan left",
    ]
    zh = prompting.user_message(EnhanceRequest("女子坐在咖啡馆里", "镜头缓慢左摇", language="zh", shared="一位红发女子",
                                               previous="女子走在雨夜的街道上"))
    assert zh.splitlines()[:3] == ["整个视频中保持一致：一位红发女子", "本场景之前：女子走在雨夜的街道上", "画面：女子坐在咖啡馆里"]
    plain = prompting.user_message(EnhanceRequest("a fox", "slow pan left"))
    assert plain.splitlines()[0] == "Scene: a fox" and "whole video" not in plain and "this scene" not in plain
    assert "same words and details" in prompting.SYSTEM_PROMPTS["en"]
    assert "Do not describe or narrate them" in prompting.SYSTEM_PROMPTS["en"]
    assert "相同的词语和细节" in prompting.SYSTEM_PROMPTS["zh"] and "不要描写或叙述它们" in prompting.SYSTEM_PROMPTS["zh"]
    assert prompting.SYSTEM_PROMPT_VERSION != "1"  # the layout changed: old rewrites are not served


def test_shared_context_option():
    assert EnhanceOptions.from_dict({}).shared_context is True
    assert EnhanceOptions.from_dict({"shared_context": None}).shared_context is True
    for off in (False, 0, "false", "OFF", "no", "0"):
        assert EnhanceOptions.from_dict({"shared_context": off}).shared_context is False
    for on in (True, 1, "true", "on", "yes"):
        assert EnhanceOptions.from_dict({"shared_context": on}).shared_context is True
    clips = [type("Clip", (), {"prompt": p, "movement": "pan left"})() for p in STORY]
    on = clip_requests(clips, EnhanceOptions.from_dict({}))
    off = clip_requests(clips, EnhanceOptions.from_dict({"shared_context": False}))
    assert [r.shared for r in on] == [STORY_SHARED] * 4 and on[0].previous == "" and on[-1].next == ""
    assert all((r.shared, r.previous, r.next) == ("", "", "") for r in off)


def test_cache_key_differs_between_contexts():
    base = EnhanceRequest("a woman sits in a cafe", "pan left", shared=STORY_SHARED, previous="a street", next="a bus")
    keys = {EnhanceCache.key("m", base, 256)}
    for change in ({"shared": ""}, {"shared": "a red coat"}, {"previous": ""}, {"next": ""},
                   {"previous": "a bus", "next": "a street"}):
        keys.add(EnhanceCache.key("m", EnhanceRequest(**{**base.__dict__, **change}), 256))
    assert len(keys) == 6


def test_an_output_that_copies_the_neighbouring_scenes_is_rejected():
    move = "slow pan left"
    original = f"{WOMAN}, sitting in a small cafe"
    before = f"{WOMAN}, walking down a rainy street at night"
    after = f"{WOMAN}, waving goodbye at a train station"
    good = ("A red-haired woman in a yellow coat sits by the window of a small cafe, steam curling from her cup "
            "while rain streaks the glass behind her.")
    text, reason = clean_output(good, move, original, (before, after))
    assert reason is None and text == good[:-1] + f", {move}."
    copies = [after + ", " + move,  # the next scene instead of this one
              before,
              good + " Later, " + after + ".",  # narrates the next scene too
              "Before this scene: " + before + ". " + good,  # echoes the context lines
              good + " After this scene: she leaves."]
    for raw in copies:
        assert clean_output(raw, move, original, (before, after)) == (original, "output copies the neighbouring scenes")
    assert clean_output(after + ", " + move, move, original)[1] is None  # no neighbours given: nothing to check
    # A scene that continues its neighbour may repeat it.
    continued = before + ", then she stops under an awning"
    text, reason = clean_output(f"{good} Earlier, {before}.", move, continued, (before, after))
    assert reason is None
    zh_before = "一位红发女子身穿黄色外套走在雨夜的街道上"
    assert clean_output("本场景之前：" + zh_before + "。她撑着伞慢慢走过霓虹灯下的水洼，倒影闪烁。", "镜头左摇",
                        "女子坐在咖啡馆里", (zh_before,))[1] == "output copies the neighbouring scenes"


# ---------------------------------------------------------------- the real tiny model


@pytest.fixture
def qwen(tiny_models):
    return str(tiny_models["qwen"])


@pytest.fixture
def spy(monkeypatch):
    """Wraps the generate of every model QwenEnhancer loads: counts calls and rows; can script the output."""
    import torch

    state = {"calls": 0, "rows": [], "enhancers": [], "script": None, "fail": None, "slow": None, "chats": [],
             "inputs": []}
    original_load = QwenEnhancer.load

    def load(self):
        fresh = self.model is None
        original_load(self)
        if not fresh:
            return
        state["enhancers"].append(self)
        model, tok = self.model, self.tokenizer
        real_generate = model.generate
        real_template = tok.apply_chat_template

        def apply_chat_template(messages, *a, **kw):
            state["chats"].append([dict(m) for m in messages])  # what the real template is given
            return real_template(messages, *a, **kw)

        tok.apply_chat_template = apply_chat_template

        def generate(**kw):
            state["calls"] += 1
            state["rows"].append(int(kw["input_ids"].shape[0]))
            state["inputs"].append(tok.batch_decode(kw["input_ids"], skip_special_tokens=True))
            if state["fail"]:
                raise state["fail"]
            if state["slow"]:
                real_forward = model.forward

                def slow_forward(*a, **k):
                    time.sleep(state["slow"])
                    return real_forward(*a, **k)

                model.forward = slow_forward
            if not state["script"]:
                return real_generate(**kw)
            out = real_generate(**{**kw, "max_new_tokens": 1})  # the real call, then the scripted text
            prompts = tok.batch_decode(kw["input_ids"], skip_special_tokens=True)
            new = tok([state["script"](p) for p in prompts], return_tensors="pt", padding=True,
                      add_special_tokens=False)["input_ids"]
            return torch.cat([out[:, : kw["input_ids"].shape[1]], new], dim=1)

        model.generate = generate

    monkeypatch.setattr(QwenEnhancer, "load", load)
    return state


def scene_of(prompt_text: str) -> str:
    return prompt_text.split("Scene: ", 1)[1].split("\n", 1)[0]


def realistic(prompt_text: str) -> str:
    """What a real instruct model tends to answer: a preamble, quotes, and no camera words."""
    return (f'Sure! Here is the rewritten prompt:\n\n"{scene_of(prompt_text)}, shown in rich detail: soft '
            'golden light falls across the scene, mist drifts slowly and colours glow warmly, cinematic and '
            'photorealistic."')


def test_one_generate_call_for_all_clips_then_none_from_cache(qwen, spy, tmp_path):
    settings, plan = small_plan()
    assert len(plan.clips) >= 3
    options = {"qwen": qwen, "cache_dir": str(tmp_path / "c"), "max_new_tokens": 16, "device": "cpu"}
    unique = len(set(clip_requests(plan.clips, EnhanceOptions.from_dict(options))))
    # Without the video's context a repeated prompt shares a row (with it, only where its neighbours match too).
    no_context = EnhanceOptions.from_dict({**options, "shared_context": False})
    assert len(set(clip_requests(plan.clips, no_context))) == len({(c.prompt, c.movement) for c in plan.clips})
    spy["script"] = realistic
    events = []
    first = enhance_plan(plan, settings, options, events.append)
    assert spy["calls"] == 1 and spy["rows"] == [unique]
    assert all(c.enhanced_prompt for c in first.clips)
    assert spy["enhancers"][0].model is None  # freed before the video model loads
    assert any(e["type"] == "status" and e["phase"] == "enhancing" for e in events)

    second = enhance_plan(plan, settings, options, events.append)
    assert spy["calls"] == 1  # a re-render makes no model call
    assert [c.enhanced_prompt for c in second.clips] == [c.enhanced_prompt for c in first.clips]

    enhance_plan(plan, settings, {**options, "no_cache": True}, events.append)
    enhance_plan(plan, settings, {**options, "style": "ink wash painting"}, events.append)
    assert spy["calls"] == 3 and spy["rows"][1:] == [unique, unique]


def test_camera_words_survive_end_to_end(qwen, spy, tmp_path):
    settings, plan = small_plan()
    spy["script"] = realistic
    out = enhance_plan(plan, settings, {"qwen": qwen, "cache_dir": str(tmp_path), "max_new_tokens": 16}, lambda e: None)
    for clip in out.clips:
        assert clip.movement  # the settings move the camera
        assert clip.render_prompt == clip.enhanced_prompt
        assert clip.enhanced_prompt.startswith(clip.prompt + ", shown in rich detail")  # preamble and quotes gone
        assert clip.enhanced_prompt.endswith(f", {clip.movement}.")


def test_tiny_model_gibberish_keeps_original_prompts_with_a_warning(qwen, spy, tmp_path):
    settings, plan = small_plan()
    events = []
    out = enhance_plan(plan, settings, {"qwen": qwen, "cache_dir": str(tmp_path), "max_new_tokens": 16}, events.append)
    assert spy["calls"] == 1
    assert out == plan and all(c.render_prompt == f"{c.prompt}, {c.movement}" for c in out.clips)
    warnings = [e["message"] for e in events if e["type"] == "warning"]
    assert warnings and all("original prompt kept" in w for w in warnings)
    assert any("empty output" in w for w in warnings)


def test_model_that_raises_keeps_original_prompts_and_caches_nothing(qwen, spy, tmp_path):
    settings, plan = small_plan()
    spy["fail"] = RuntimeError("CUDA error: device-side assert triggered")
    events = []
    options = {"qwen": qwen, "cache_dir": str(tmp_path), "max_new_tokens": 16}
    assert enhance_plan(plan, settings, options, events.append) == plan
    warnings = [e["message"] for e in events if e["type"] == "warning"]
    assert len(warnings) == 1 and "device-side assert" in warnings[0] and "original prompts kept" in warnings[0]
    assert spy["enhancers"][0].model is None
    spy["fail"], spy["script"] = None, realistic
    assert all(c.enhanced_prompt for c in enhance_plan(plan, settings, options, events.append).clips)
    assert spy["calls"] == 2  # the failure was not cached


def test_slow_model_times_out_and_keeps_original_prompts(qwen, spy, tmp_path):
    settings, plan = small_plan()
    spy["slow"] = 0.05
    events = []
    options = {"qwen": qwen, "cache_dir": str(tmp_path), "max_new_tokens": 200, "timeout_seconds": 0.3}
    assert enhance_plan(plan, settings, options, events.append) == plan
    warnings = [e["message"] for e in events if e["type"] == "warning"]
    assert len(warnings) == 1 and "timed out after 0.3 s" in warnings[0]
    assert not list(Path(tmp_path).rglob("*.json"))  # a timeout is not a result to remember


def test_model_that_fails_to_load_keeps_original_prompts(tmp_path):
    settings, plan = small_plan()
    folder = fake_qwen(tmp_path / "Qwen2.5-0.5B-Instruct", "0.5B")  # valid JSON, empty weights file
    events = []
    assert enhance_plan(plan, settings, {"qwen": str(folder), "cache_dir": str(tmp_path / "c")}, events.append) == plan
    assert any(e["type"] == "warning" and "original prompts kept" in e["message"] for e in events)


def test_enhancer_batch_api(qwen, spy):
    with QwenEnhancer(qwen, device="cpu", max_new_tokens=16) as enhancer:
        spy["script"] = realistic
        results = enhancer.enhance_batch([EnhanceRequest("a red fox", "slow pan left"), EnhanceRequest("a cat", "")])
    assert enhancer.model is None and spy["calls"] == 1
    assert results[0].enhanced and results[0].text.endswith(", slow pan left.")
    assert results[1].enhanced and "slow pan left" not in results[1].text


def story_plan():
    """Four scenes of 3 s with the same woman in three of them and the same style throughout."""
    settings = small_settings(prompts={str(24 * i): p for i, p in enumerate(STORY)}, max_frames=96, fps=8)
    return settings, plan_clips(settings, MODEL_SPECS["t2v"], PlanOptions(seed=11, max_clip_frames=17, steps=1))


def user_fields(chat: list[dict]) -> dict[str, str]:
    assert [m["role"] for m in chat] == ["system", "user"]
    return dict(line.split(": ", 1) for line in chat[1]["content"].splitlines())


def test_every_clip_request_carries_the_shared_line_and_its_neighbours(qwen, spy, tmp_path):
    settings, plan = story_plan()
    scenes = [prompt for prompt, _ in itertools.groupby(c.prompt for c in plan.clips)]
    assert scenes == STORY and len(plan.clips) > len(scenes)  # some scenes span several clips
    spy["script"] = realistic
    events = []
    options = {"qwen": qwen, "cache_dir": str(tmp_path / "c"), "max_new_tokens": 16, "device": "cpu"}
    out = enhance_plan(plan, settings, options, events.append)
    assert spy["calls"] == 1 and spy["rows"] == [len(spy["chats"])]
    by_scene = {f["Scene"]: f for f in map(user_fields, spy["chats"])}
    assert set(by_scene) == set(STORY)  # clips of one scene share a row: the same prompt in the same context
    for clip in plan.clips:
        fields = by_scene[clip.prompt]
        i = scenes.index(clip.prompt)
        assert fields["Keep the same across the whole video"] == STORY_SHARED
        assert fields.get("Before this scene") == (scenes[i - 1] if i > 0 else None)
        assert fields.get("After this scene", "").rstrip(".") == (scenes[i + 1].rstrip(".") if i + 1 < len(scenes)
                                                                   else "")
        assert fields["Camera movement (include word for word)"] == clip.movement
    first, last = by_scene[STORY[0]], by_scene[STORY[-1]]
    assert "Before this scene" not in first and first["After this scene"] == STORY[1]
    assert "After this scene" not in last and last["Before this scene"] == STORY[2].rstrip(".")
    # What reaches generate: every row carries the same line, through the real chat template.
    assert all(f"Keep the same across the whole video: {STORY_SHARED}\n" in row for row in spy["inputs"][0])
    assert any(e["type"] == "status" and STORY_SHARED in e["message"] for e in events)
    assert [c.enhanced_prompt.split(", shown in rich detail")[0] for c in out.clips] == [c.prompt for c in out.clips]


def test_shared_context_off_removes_the_context_and_is_cached_apart(qwen, spy, tmp_path):
    settings, plan = story_plan()
    spy["script"] = realistic
    options = {"qwen": qwen, "cache_dir": str(tmp_path / "c"), "max_new_tokens": 16, "device": "cpu"}
    on = enhance_plan(plan, settings, options, lambda e: None)
    assert spy["calls"] == 1 and all("Keep the same" in chat[1]["content"] for chat in spy["chats"])
    spy["chats"].clear()
    off = enhance_plan(plan, settings, {**options, "shared_context": False}, lambda e: None)
    assert spy["calls"] == 2  # the same prompts without the context are not served the rewrites made with it
    assert [set(user_fields(chat)) for chat in spy["chats"]] == [
        {"Scene", "Camera movement (include word for word)"}] * len(STORY)
    assert not any(label in row for row in spy["inputs"][1] for label in prompting.CONTEXT_LABELS["en"])
    assert [c.enhanced_prompt for c in off.clips] == [c.enhanced_prompt for c in on.clips]
    enhance_plan(plan, settings, options, lambda e: None)
    enhance_plan(plan, settings, {**options, "shared_context": "false"}, lambda e: None)
    assert spy["calls"] == 2  # each context has its own cache entries


# ---------------------------------------------------------------- render and CLI


def test_render_with_enhance_records_enhanced_prompts_and_finishes(tiny_models, spy, tmp_path):
    from deforum_wan.renderer import outputs
    from deforum_wan.renderer.render import RenderJob, render

    settings = small_settings()
    spy["script"] = realistic
    job = RenderJob(settings=settings, model=str(tiny_models["t2v"]), outdir=str(tmp_path / "out"),
                    options=PlanOptions(steps=1, max_clip_frames=9), enhance=True,
                    enhance_options={"qwen": str(tiny_models["qwen"]), "cache_dir": str(tmp_path / "c"),
                                     "max_new_tokens": 16})
    events = []
    result = render(job, on_event=events.append)
    assert result.status == "done" and spy["calls"] == 1
    assert outputs.existing_frames(result.folder, result.timestring) == list(range(settings.max_frames))
    saved = json.loads(outputs.plan_file(result.folder, result.timestring).read_text())
    assert all(c["enhanced_prompt"].endswith(f", {c['movement']}.") for c in saved["clips"])
    types = [e["type"] for e in events]
    assert types.index("status") < types.index("start")  # enhanced before the video model loaded


def test_render_goes_on_when_the_enhancer_model_breaks(tiny_models, spy, tmp_path):
    from deforum_wan.renderer import outputs
    from deforum_wan.renderer.render import RenderJob, render

    settings = small_settings(max_frames=12)
    spy["fail"] = MemoryError("out of memory")
    job = RenderJob(settings=settings, model=str(tiny_models["t2v"]), outdir=str(tmp_path / "out"),
                    options=PlanOptions(steps=1, max_clip_frames=9), enhance=True,
                    enhance_options={"qwen": str(tiny_models["qwen"]), "cache_dir": str(tmp_path / "c")})
    events = []
    result = render(job, on_event=events.append)
    assert result.status == "done"
    assert outputs.existing_frames(result.folder, result.timestring) == list(range(12))
    assert all(c.enhanced_prompt is None for c in result.plan.clips)
    assert any(e["type"] == "warning" and "out of memory" in e["message"] for e in events)


def _cli(*args, env_extra: dict | None = None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "deforum_wan", "enhance", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600)


def test_cli_enhances_the_forge_default_settings(qwen, tmp_path):
    env = {"DEFORUM_WAN_CACHE": str(tmp_path / "cache")}
    out = _cli(FORGE_DEFAULT, "--qwen", qwen, "--seed", "5", "--min-clip-seconds", "0", env_extra=env)
    assert out.returncode == 0, out.stderr[-3000:]
    blocks = [b for b in out.stdout.split("\n\n") if b.lstrip().startswith(("clip ", "model: "))]
    assert len([b for b in out.stdout.splitlines() if b.startswith("clip ")]) == 18
    assert "clip 17  frames 324-333 (10)" in out.stdout and blocks
    assert "A cute white bunny sitting in a peaceful meadow" in out.stdout
    assert "fast dolly in" in out.stdout and "kept original: empty output" in out.stdout

    again = _cli(FORGE_DEFAULT, "--qwen", qwen, "--seed", "5", "--min-clip-seconds", "0", "--json", env_extra=env)
    assert again.returncode == 0, again.stderr[-3000:]
    data = json.loads(again.stdout)
    assert len(data["clips"]) == 18 and {c["source"] for c in data["clips"]} == {"cache"}
    first = data["clips"][0]
    assert first["enhanced"] is None and first["fallback_reason"] == "empty output"
    assert first["render_prompt"].startswith(first["prompt"]) and first["render_prompt"].endswith(first["movement"])

    missing = _cli(FORGE_DEFAULT, "--qwen", "Qwen2.5-72B", env_extra=env)
    assert missing.returncode == 2 and "error:" in missing.stderr and "Qwen2.5-72B" in missing.stderr
