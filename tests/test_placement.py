"""Wan 2.2 A14B's two experts on two GPUs (memory profile experts): the placement decision, and its refusals.

No GPU here: which module goes where is a pure function of sizes and free memory, tested
for the cases that matter; the moving itself (accelerate's device hooks) is checked on
the CPU to leave the frames unchanged, and a machine with fewer than two GPUs refuses it.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import require_render_stack
from deforum_wan.renderer.memory import GIB
from deforum_wan.renderer.parallel import ParallelError, check_request
from deforum_wan.renderer.placement import ExpertPlacement, PlacementError, expert_sizes, experts_note, place_experts

# Wan2.2-T2V-A14B-Diffusers in bf16: two 14B experts (about 27 GiB each), UMT5-XXL (about 11 GiB), the VAE.
A14B = {"transformer": 27 * GIB, "transformer_2": 27 * GIB, "text_encoder": 11 * GIB, "vae": GIB // 2}


def test_two_48gb_gpus_hold_one_expert_each_and_the_rest_beside_the_first():
    placement = place_experts(A14B, [("cuda:0", 46 * GIB), ("cuda:1", 46 * GIB)])
    assert placement == ExpertPlacement(transformer="cuda:0", transformer_2="cuda:1", others="cuda:0")
    assert placement.describe() == "high-noise expert, text encoder and VAE on cuda:0; low-noise expert on cuda:1"


def test_the_gpus_with_most_free_memory_are_chosen_and_the_rest_goes_where_it_fits():
    free = [("cuda:0", 10 * GIB), ("cuda:1", 33 * GIB), ("cuda:2", 46 * GIB)]
    assert place_experts(A14B, free) == ExpertPlacement("cuda:2", "cuda:1", "cuda:2")
    # the rest fits only beside the low-noise expert's GPU
    lopsided = {"transformer": 30 * GIB, "transformer_2": 20 * GIB, "text_encoder": 11 * GIB}
    assert place_experts(lopsided, [("cuda:0", 37 * GIB), ("cuda:1", 40 * GIB)]) == \
        ExpertPlacement(transformer="cuda:0", transformer_2="cuda:1", others="cuda:1")


def test_two_24gb_gpus_need_fp8_storage_and_the_error_says_so():
    free = [("cuda:0", 23 * GIB), ("cuda:1", 23 * GIB)]
    with pytest.raises(PlacementError, match="do not fit on cuda:0 .*fp8"):
        place_experts(A14B, free)
    fp8 = dict(A14B, transformer=A14B["transformer"] // 2, transformer_2=A14B["transformer_2"] // 2)
    with pytest.raises(PlacementError):  # 13.5 + 11.5 GiB and room to run is still more than 23 GiB
        place_experts(fp8, free)
    assert place_experts(fp8, [("cuda:0", 32 * GIB), ("cuda:1", 23 * GIB)]).transformer_2 == "cuda:1"


def test_one_gpu_or_none_or_one_expert_is_refused_with_what_to_choose():
    with pytest.raises(PlacementError, match="two GPUs; this machine has 1 CUDA GPU.*cuda:0.*model or group"):
        place_experts(A14B, [("cuda:0", 80 * GIB)])
    with pytest.raises(PlacementError, match="has 0 CUDA GPU"):
        place_experts(A14B, [])
    with pytest.raises(PlacementError, match="two experts"):
        place_experts({"transformer": GIB, "vae": GIB}, [("cuda:0", 80 * GIB), ("cuda:1", 80 * GIB)])
    with pytest.raises(ParallelError, match="experts"):
        check_request((0, 1), "cuda", memory_profile="experts")


def test_model_sizes_and_notes_come_from_the_model_folder(tiny_models):
    sizes = expert_sizes(type("Info", (), {"path": tiny_models["a14b-t2v"]})())
    assert {"transformer", "transformer_2", "text_encoder", "vae"} <= set(sizes)
    half = expert_sizes(type("Info", (), {"path": tiny_models["a14b-t2v"]})(), "float8_e4m3fn")
    assert half["transformer"] == sizes["transformer"] // 2 and half["vae"] == sizes["vae"]
    info = type("Info", (), {"path": tiny_models["a14b-t2v"]})()
    assert experts_note(info, [("cuda:0", 8 * GIB), ("cuda:1", 8 * GIB)]) == \
        "memory profile experts: high-noise expert, text encoder and VAE on cuda:0; low-noise expert on cuda:1"


@pytest.mark.slow
def test_on_a_machine_without_two_gpus_a_render_refuses_experts_and_the_hooks_keep_the_frames(tiny_models, tmp_path):
    require_render_stack()
    from deforum_wan.core.plan import PlanOptions
    from deforum_wan.core.settings import settings_from_dict
    from deforum_wan.renderer.loading import load_pipelines
    from deforum_wan.renderer.models import find_model
    from deforum_wan.renderer.pipelines import ClipRequest
    from deforum_wan.renderer.placement import apply_experts
    from deforum_wan.renderer.render import RenderError, RenderJob, render

    settings = settings_from_dict({"prompts": {"0": "a fox"}, "max_frames": 5, "fps": 16, "W": 32, "H": 32, "seed": 3})
    job = RenderJob(settings=settings, model=str(tiny_models["a14b-t2v"]), outdir=str(tmp_path), device="cpu",
                    memory_profile="experts", options=PlanOptions(steps=2), make_video=False)
    with pytest.raises((PlacementError, RenderError), match="two GPUs"):
        render(job)
    assert not any(tmp_path.rglob("*.png"))

    info = find_model(str(tiny_models["a14b-t2v"]))
    request = ClipRequest(prompt="a fox", negative_prompt="", num_frames=5, width=32, height=32, steps=4,
                          guidance=4.0, guidance_2=3.0, seed=3)
    plain = load_pipelines(info, device="cpu")
    expected = plain.t2v(request)
    plain.free()
    placed = load_pipelines(info, device="cpu")
    apply_experts(placed.main, ExpertPlacement("cpu", "cpu", "cpu"))
    assert all(hasattr(getattr(placed.main, k), "_hf_hook") for k in ("transformer", "transformer_2"))
    np.testing.assert_array_equal(placed.t2v(request), expected)
