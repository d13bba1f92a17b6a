"""Prompt keyframes resolve to the prompt Deforum would use at each frame."""
from __future__ import annotations

from pathlib import Path

import pytest

from deforum_wan.core.prompts import prompt_at, prompt_keyframes, split_negative
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
