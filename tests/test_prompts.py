"""Prompt keyframes resolve to the prompt Deforum would use at each frame."""
from __future__ import annotations

from pathlib import Path

import pytest

from deforum_wan.core.prompts import plain_prompt, prompt_at, prompt_keyframes, split_negative
from deforum_wan.core.schedules import ScheduleError
from deforum_wan.core.settings import SettingsError, load_settings, settings_from_dict

SHARED = Path(__file__).resolve().parents[2] / "shared" / "deforum-settings"


def _s(prompts, **kw):
    return settings_from_dict({"prompts": prompts, "max_frames": kw.pop("max_frames", 100), **kw})


def test_a1111_default_wrappers_and_neg():
    s = load_settings(SHARED / "a1111-deforum-default.txt")
    p = prompt_at(s, 0)
    assert p.positive.startswith("tiny cute swamp bunny") and p.positive.endswith("landscape")
    # The keyframe's own --neg and the global negative_prompts are both kept, as Deforum does.
    assert p.negative == "nsfw, nude nsfw, nude"
    assert prompt_at(s, 59).positive.startswith("anthropomorphic clean cat")
    assert prompt_at(s, 60).positive == "a beautiful coconut"


def test_global_positive_and_negative_wrap_every_prompt():
    s = _s({"0": "a cat", "10": "a dog --neg blurry"}, positive_prompts="masterpiece,", negative_prompts="ugly")
    assert prompt_at(s, 3) == split_negative("masterpiece, a cat --neg ugly")
    assert prompt_at(s, 3).positive == "masterpiece, a cat" and prompt_at(s, 3).negative == "ugly"
    assert prompt_at(s, 10).negative == "blurry ugly"


def test_keyframes_held_and_sorted_and_expression_keys():
    s = _s({"max_f/2": "middle", "20": "early", "90": "late"}, max_frames=101)
    frames = [kf.frame for kf in prompt_keyframes(s)]
    assert frames == [20, 50, 90]
    assert prompt_at(s, 0).positive == "early"  # held backwards before the first key
    assert prompt_at(s, 49).positive == "early"
    assert prompt_at(s, 50).positive == "middle"
    assert prompt_at(s, 100).positive == "late"


def test_keys_outside_timeline_are_dropped():
    s = _s({"0": "a", "500": "never", "max_f-200": "negative key"}, max_frames=100)
    assert [kf.frame for kf in prompt_keyframes(s)] == [0]


def test_backtick_expressions_use_t_max_f_and_s():
    s = _s({"0": "cat:`1+t/10` glow:`sqrt(t)` end:`max_f` seed:`s`"}, max_frames=11, seed=42)
    assert prompt_at(s, 4).positive == "cat:1.4 glow:2 end:10 seed:42"


def test_wan_prompts_win_when_present():
    s = load_settings(SHARED / "forge-deforum-default.txt")
    assert prompt_at(s, 0).positive.startswith("A cute white bunny sitting in a peaceful meadow")


@pytest.mark.parametrize(
    "prompts, key",
    [
        ({"ten": "a"}, "prompts['ten']"),
        ({"-3": "a"}, "prompts['-3']"),
        ({"10.5": "a"}, "prompts['10.5']"),
        ({"0": "a `sqrt(`"}, "prompts['0']"),
    ],
)
def test_bad_prompt_keys_are_named(prompts, key):
    with pytest.raises((ScheduleError, SettingsError)) as err:
        prompt_at(_s(prompts), 0)
    assert key in str(err.value) and "\n" not in str(err.value)


def test_no_prompt_inside_timeline():
    with pytest.raises(SettingsError, match="no prompt keyframe falls inside the 10 frames"):
        prompt_keyframes(_s({"50": "a"}, max_frames=10))


def test_wan_prompts_over_the_limit_are_named():
    from deforum_wan.core.settings import MAX_PROMPT_CHARS

    s = _s({"0": "a"}, wan_prompts={"0": "ok", "30": "w" * (MAX_PROMPT_CHARS + 1)})
    with pytest.raises(SettingsError, match=r"wan_prompts\['30'\]: at most \d+ characters per prompt"):
        prompt_keyframes(s)


def test_bad_backtick_in_a_later_prompt_is_refused_before_planning():
    s = _s({"0": "a", "50": "b `t.real`"})
    with pytest.raises(ScheduleError, match=r"prompts\['50'\]: cannot evaluate \"t.real\" at frame 50: attribute"):
        prompt_keyframes(s)


# ---------------------------------------------------------------- A1111 syntax -> plain words for Wan

PLAIN = [
    # (prompt, what Wan reads, what was taken out, LoRA tags)
    ("a cat on a mat", "a cat on a mat", (), ()),
    ("a (cat:1.5) on a mat", "a cat on a mat", ("(cat:1.5)",), ()),
    ("((cat)), dog", "cat, dog", ("((cat))",), ()),
    ("[cat] in rain", "cat in rain", ("[cat]",), ()),
    ("(red:0.8) (big cat:1.2)", "red big cat", ("(red:0.8)", "(big cat:1.2)"), ()),
    ("(a photo (35mm))", "a photo 35mm", ("(a photo (35mm))",), ()),
    # prompt editing: the part in force for most of the steps (25, Deforum's default)
    ("[sunny:rainy:0.5] day", "rainy day", ("[sunny:rainy:0.5]",), ()),
    ("[sunny:rainy:0.7] day", "sunny day", ("[sunny:rainy:0.7]",), ()),
    ("[sunny:rainy:20] day", "sunny day", ("[sunny:rainy:20]",), ()),  # step 20 of 25
    ("[sunny:rainy:5] day", "rainy day", ("[sunny:rainy:5]",), ()),
    ("a [hat:0.2] cat", "a hat cat", ("[hat:0.2]",), ()),  # added early: kept
    ("a [hat:0.8] cat", "a cat", ("[hat:0.8]",), ()),  # added late: dropped
    ("a [hat::0.8] cat", "a hat cat", ("[hat::0.8]",), ()),  # removed late: kept
    ("[cat|dog|bird] running", "cat running", ("[cat|dog|bird]",), ()),  # alternation: the first
    ("(a [b:c:0.9]:1.2) d", "a b d", ("(a [b:c:0.9]:1.2)",), ()),
    ("a cat AND a dog", "a cat, a dog", ("AND",), ()),
    ("a cat :1.2 AND a dog :0.8", "a cat, a dog", (":1.2 AND", ":0.8"), ()),
    ("a cat BREAK a dog", "a cat, a dog", ("BREAK",), ()),
    ("photo <lora:x:0.8> of a cat", "photo of a cat", ("<lora:x:0.8>",), (("x", 0.8),)),
    ("<lora:detail tweaker:1.5:0.5> cat, <lyco:y>", "cat", ("<lora:detail tweaker:1.5:0.5>", "<lyco:y>"),
     (("detail tweaker", 1.5), ("y", 1.0))),
    ("<hypernet:anime:1> cat", "cat", ("<hypernet:anime:1>",), ()),
    ("cat, EasyNegative, (bad-hands-5:1.2)", "cat", ("(bad-hands-5:1.2)", "EasyNegative", "bad-hands-5"), ()),
    ("embedding:my_style a cat", "a cat", ("embedding:my_style",), ()),
    ("\\(literal\\) parens", "(literal) parens", ("\\(", "\\)"), ()),
    ("a (cat", "a cat", ("(",), ()),
    ("a cat) sits", "a cat sits", (")",), ()),
    ("(a:b) c", "a:b c", ("(a:b)",), ()),  # `:` is a weight only before a number
    ("cat:1.4 glow:2, 3:4", "cat:1.4 glow:2, 3:4", (), ()),  # outside brackets: plain text
    ("一只猫（可爱）, 雨天", "一只猫（可爱）, 雨天", (), ()),  # full-width brackets are words
    ("", "", (), ()),
]


@pytest.mark.parametrize("text, plain, stripped, loras", PLAIN, ids=[p[0] or "empty" for p in PLAIN])
def test_a1111_syntax_becomes_plain_words(text, plain, stripped, loras):
    result = plain_prompt(text)
    assert (result.text, result.stripped, result.loras) == (plain, stripped, loras)


def test_prompt_editing_counts_steps_in_the_settings_steps():
    assert plain_prompt("[a:b:10]", steps=15).text == "a"  # step 10 of 15: `a` for two thirds
    assert plain_prompt("[a:b:10]", steps=40).text == "b"


def test_plan_prompts_have_no_syntax_left_for_deforum_wrappers_and_backticks():
    s = _s({"0": "(cat:`1+t/10`) --neg (blurry:1.2)"}, positive_prompts="<lora:style:0.6> masterpiece,", max_frames=11)
    p = prompt_at(s, 4)
    assert p.positive == "<lora:style:0.6> masterpiece, (cat:1.4)"  # prompt_at stays Deforum's text
    assert plain_prompt(p.positive).text == "masterpiece, cat" and plain_prompt(p.negative).text == "blurry"
