"""Faster renders: step-distillation presets, step caches, and what each costs.

Pure data and parsing (stdlib only), shared by the plan, the command line and the
web UI; `renderer/caches.py` applies a cache to the loaded transformers.

A *preset* sets steps, guidance, flow shift and sampler to the values a
step-distillation LoRA was published with. "quality" keeps the model's official
values (the plan's own choice). "fast" and "turbo" are only meaningful with their
LoRA loaded: a base Wan model sampled in 4 or 9 steps without guidance gives a blur.
Every value carries the file and the line it comes from (`Preset.sources`).

A *step cache* skips transformer work on steps whose result it can predict from
earlier steps. Only diffusers' own hooks are used; `CACHES` says which Wan model
kinds each works on and why not the others, and which diffusers version has it.

Cost is counted in transformer passes: one per step, two with classifier-free
guidance (diffusers' Wan pipelines run the unconditional pass when
`guidance_scale > 1`, for both experts of a two-expert model).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

# --- distillation presets ---------------------------------------------------------------------

LIGHTX2V = "https://github.com/ModelTC/LightX2V/blob/29c8504c1487d886673d415784bea7a4ffc95352"
LIGHTX2V_SCHEDULER = ("https://github.com/ModelTC/LightX2V/blob/21ef47a4dcc237bb7e839e46ba08bf3300fb7823/"
                      "lightx2v/models/schedulers/wan/step_distill/scheduler.py")
LIGHTNING_CONFIG = ("https://github.com/yliuls/Wan2.2-Lightning/blob/a7fb0999dc4c092df130a9fd7ba6dbb8d6d8551f/"
                    "wan/configs/wan_t2v_A14B.py")  # a copy of ModelTC/Wan2.2-Lightning
CAUSVID_CONFIG = f"{LIGHTX2V}/configs/causvid/wan_t2v_causvid.json"
WAN21_DISTILL_CONFIG = f"{LIGHTX2V}/configs/distill/wan21/wan_t2v_distill_lora_4step_cfg.json"
WAN22_DISTILL_CONFIG = f"{LIGHTX2V}/configs/distill/wan22/wan_moe_t2v_distill_lora.json"
EULER = "FlowMatchEulerDiscreteScheduler"


@dataclass(frozen=True)
class Preset:
    """Sampling values for one kind of step-distilled render; None keeps the plan's choice.

    `guidance` 1.0 means no unconditional pass. `stochastic` is
    FlowMatchEulerDiscreteScheduler's `stochastic_sampling` on one-expert models (predict
    the clean latent, then re-noise it to the next step's level), `stochastic_2` the same
    on two-expert Wan2.2 A14B models. `timesteps` are the ones the LoRA was distilled at,
    for reference: diffusers spaces N steps from 1000 to about 0 and applies the shift,
    so the shift is what carries over.
    """

    name: str
    label: str
    steps: int | None = None
    guidance: float | None = None
    guidance_2: float | None = None
    flow_shift: float | None = None
    scheduler: str | None = None
    stochastic: bool | None = None
    stochastic_2: bool | None = None
    timesteps: tuple[int, ...] | None = None
    loras: str = ""
    sources: tuple[tuple[str, str], ...] = ()

    @property
    def needs_lora(self) -> bool:
        return bool(self.loras)

    def source(self, field: str) -> str:
        """Where the value of `field` comes from ("" if the preset does not set it)."""
        return dict(self.sources).get(field, "")

    def scheduler_options(self, two_experts: bool = False) -> dict[str, object]:
        """Keyword arguments for the scheduler class named by `scheduler` ({} when the preset keeps the model's)."""
        if self.scheduler is None:
            return {}
        options: dict[str, object] = {}
        stochastic = self.stochastic_2 if two_experts else self.stochastic
        if stochastic is not None:
            options["stochastic_sampling"] = stochastic
        if self.flow_shift is not None:
            options["shift"] = self.flow_shift
        return options


PRESETS: dict[str, Preset] = {
    "quality": Preset(
        name="quality",
        label="Quality: the model's official steps, guidance and flow shift",
        sources=(("all", "the model's official values: core/specs.py (Wan2.1/Wan2.2 generate.py and configs)"),),
    ),
    "fast": Preset(
        name="fast",
        label="Fast: CausVid LoRA, 9 steps without guidance",
        steps=9,  # wan_t2v_causvid.json: "infer_steps": 9
        guidance=1.0,  # wan_t2v_causvid.json: "enable_cfg": false (its "sample_guide_scale": 6 is then unused)
        guidance_2=1.0,  # the same file: one guidance for the whole run
        flow_shift=8.0,  # wan_t2v_causvid.json: "sample_shift": 8
        scheduler=EULER,  # LightX2V's CausVid runner samples with WanStepDistillScheduler (see `stochastic`)
        stochastic=True,  # WanStepDistillScheduler.step_post: x0 = x - sigma * v, then re-noised to the next sigma
        stochastic_2=True,
        timesteps=(999, 934, 862, 756, 603, 410, 250, 140, 74),  # wan_t2v_causvid.json: "denoising_step_list"
        loras="CausVid (lightx2v/Wan2.1-T2V-14B-CausVid; LoRAs extracted from it: Kijai/WanVideo_comfy "
              "Wan21_CausVid_14B_T2V_lora_rank32*)",
        sources=(
            ("steps", f'{CAUSVID_CONFIG}: "infer_steps": 9'),
            ("guidance", f'{CAUSVID_CONFIG}: "enable_cfg": false (no unconditional pass)'),
            ("guidance_2", f'{CAUSVID_CONFIG}: "enable_cfg": false (no unconditional pass)'),
            ("flow_shift", f'{CAUSVID_CONFIG}: "sample_shift": 8'),
            ("timesteps", f'{CAUSVID_CONFIG}: "denoising_step_list": [999, 934, 862, 756, 603, 410, 250, 140, 74]'),
            ("scheduler", "ModelTC/LightX2V lightx2v/models/runners/wan/wan_causvid_runner.py init_scheduler: "
                          f"WanStepDistillScheduler; {LIGHTX2V_SCHEDULER} step_post: x0 = latents - sigma * flow_pred, "
                          "add_noise(x0, noise, next sigma) = diffusers FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)"),
            ("loras", "https://huggingface.co/Kijai/WanVideo_comfy README: 'CausVid LoRAs are experimental extractions "
                      "from the CausVid finetunes'; CausVid 14B: https://huggingface.co/lightx2v/Wan2.1-T2V-14B-CausVid"),
        ),
    ),
    "turbo": Preset(
        name="turbo",
        label="Turbo: lightx2v 4-step LoRAs (Wan2.1 StepDistill-CfgDistill, Wan2.2 Lightning), no guidance",
        steps=4,  # Wan2.1: "infer_steps": 4; Wan2.2-Lightning wan_t2v_A14B.py: sample_steps = 4
        guidance=1.0,  # Wan2.1: "enable_cfg": false; Wan2.2-Lightning: sample_guide_scale = (1.0, 1.0)
        guidance_2=1.0,  # Wan2.2-Lightning: sample_guide_scale = (1.0, 1.0)  # low noise, high noise
        flow_shift=5.0,  # Wan2.1: "sample_shift": 5; Wan2.2-Lightning: sample_shift = 5.0
        scheduler=EULER,
        stochastic=True,  # Wan2.1 4-step: WanStepDistillScheduler (re-noises after every step)
        stochastic_2=False,  # Wan2.2 A14B 4-step: Wan22StepDistillScheduler.step_post, a plain Euler step
        timesteps=(1000, 750, 500, 250),  # both LightX2V configs: "denoising_step_list": [1000, 750, 500, 250]
        loras="lightx2v 4-step: Wan2.1 lightx2v/Wan2.1-Distill-Loras (StepDistill-CfgDistill), "
              "Wan2.2 A14B lightx2v/Wan2.2-Lightning or lightx2v/Wan2.2-Distill-Loras (high and low noise)",
        sources=(
            ("steps", "https://huggingface.co/lightx2v/Wan2.1-T2V-14B-StepDistill-CfgDistill: 'significantly fewer "
                      f'inference steps (4 steps) and without classifier-free guidance\'; {WAN21_DISTILL_CONFIG}: '
                      f'"infer_steps": 4; {LIGHTNING_CONFIG}: sample_steps = 4'),
            ("guidance", f'{WAN21_DISTILL_CONFIG}: "enable_cfg": false; {LIGHTNING_CONFIG}: '
                         "sample_guide_scale = (1.0, 1.0)"),
            ("guidance_2", f"{LIGHTNING_CONFIG}: sample_guide_scale = (1.0, 1.0)  # low noise, high noise"),
            ("flow_shift", f'{WAN21_DISTILL_CONFIG}: "sample_shift": 5; {WAN22_DISTILL_CONFIG}: "sample_shift": 5.0; '
                           f"{LIGHTNING_CONFIG}: sample_shift = 5.0"),
            ("timesteps", f'{WAN21_DISTILL_CONFIG} and {WAN22_DISTILL_CONFIG}: "denoising_step_list": [1000, 750, 500, 250]'),
            ("scheduler", f"{LIGHTX2V_SCHEDULER}: WanStepDistillScheduler.step_post re-noises the predicted clean latent "
                          "(Wan2.1: FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)); "
                          "Wan22StepDistillScheduler.step_post takes a plain Euler step (Wan2.2 A14B: stochastic_sampling=False)"),
            ("loras", "https://huggingface.co/lightx2v/Wan2.1-Distill-Loras, https://huggingface.co/lightx2v/Wan2.2-Lightning, "
                      f'{WAN22_DISTILL_CONFIG} "lora_configs" (high_noise_model and low_noise_model)'),
        ),
    ),
}
DEFAULT_PRESET = "quality"


def resolve_preset(name: str | None) -> Preset:
    """The preset called `name` (any case; None or "" is "quality"); ValueError naming `preset` otherwise."""
    key = (name or DEFAULT_PRESET).strip().lower()
    if key not in PRESETS:
        raise ValueError(f"preset: unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[key]


def passes_per_step(guidance: float) -> int:
    """Transformer passes per step: two with classifier-free guidance (guidance > 1), one without."""
    return 2 if guidance > 1.0 else 1


def preset_cost(preset: Preset, steps: int, guidance: float) -> float:
    """Relative cost of a clip: transformer passes, steps x (2 if guidance > 1 else 1).

    `steps` and `guidance` are the plan's values, used where the preset keeps the plan's
    choice, so `preset_cost(PRESETS["quality"], 50, 5.0)` is 100 and the turbo preset 4.
    """
    n = preset.steps if preset.steps is not None else steps
    g = preset.guidance if preset.guidance is not None else guidance
    return float(int(n) * passes_per_step(float(g)))


# --- step caches -----------------------------------------------------------------------------

WAN_KINDS = ("t2v", "i2v", "flf2v", "vace", "ti2v-5b", "a14b-t2v", "a14b-i2v")
_VACE_HINTS = ("diffusers' hooks skip the transformer blocks, but WanVACETransformer3DModel still adds the "
               "control hints between them, so a skipped step would count every hint twice")
_NO_STEP_INFO = ("diffusers' {pipeline} passes no step or sigma to the cache context, so SeaCache never skips "
                 "(only WanPipeline does, from diffusers 0.41)")


@dataclass(frozen=True)
class CacheInfo:
    """One of diffusers' step caches as this extension offers it."""

    name: str
    label: str
    config: str  # the diffusers config class
    default: float  # the threshold used when none is given
    meaning: str  # what the threshold means, one line for --help
    kinds: tuple[str, ...]  # the Wan model kinds it works on
    not_on: tuple[tuple[str, str], ...]  # kind -> why not
    min_diffusers: str  # the first diffusers release that has it
    source: str
    integer: bool = False  # the threshold is a whole number

    def reason_not(self, kind: str) -> str | None:
        """Why this cache does not work on `kind` (None if it does)."""
        if kind in self.kinds:
            return None
        return dict(self.not_on).get(kind, f"not tested on {kind!r} models")


CACHES: dict[str, CacheInfo] = {
    "fbcache": CacheInfo(
        name="fbcache", label="First Block Cache", config="FirstBlockCacheConfig",
        default=0.05,  # diffusers FirstBlockCacheConfig: threshold: float = 0.05
        meaning="skip the other blocks while the first block's output changed less than this "
                "(relative mean) since the last full step; higher is faster and lossier",
        kinds=("t2v", "i2v", "flf2v", "ti2v-5b", "a14b-t2v", "a14b-i2v"),
        not_on=(("vace", _VACE_HINTS),),
        min_diffusers="0.35.0",
        source="diffusers hooks/first_block_cache.py (FirstBlockCacheConfig, threshold default 0.05)",
    ),
    "taylorseer": CacheInfo(
        name="taylorseer", label="TaylorSeer (lite)", config="TaylorSeerCacheConfig",
        default=5,  # diffusers TaylorSeerCacheConfig: cache_interval: int = 5
        meaning="run the transformer fully every N steps (after 3 warm-up steps) and extrapolate its output "
                "in between; a whole number, higher is faster",
        kinds=WAN_KINDS,
        not_on=(),
        min_diffusers="0.36.0",
        source="diffusers hooks/taylorseer_cache.py (TaylorSeerCacheConfig, cache_interval default 5, "
               "disable_cache_before_step 3, use_lite_mode)",
        integer=True,
    ),
    "magcache": CacheInfo(
        name="magcache", label="MagCache", config="MagCacheConfig",
        default=0.06,  # diffusers MagCacheConfig: threshold: float = 0.06 (MagCache's Wan2.2 examples: E006)
        meaning="skip all blocks while the error accumulated from the model's calibrated magnitude ratios "
                "stays below this (at most 3 steps in a row); higher is faster",
        kinds=("t2v", "i2v", "ti2v-5b"),
        not_on=(
            ("vace", _VACE_HINTS),
            ("flf2v", "no published magnitude ratios (MagCache calibration) for Wan2.1 FLF2V, and diffusers "
                      "ships none for Wan; calibrate with MagCacheConfig(calibrate=True)"),
            ("a14b-t2v", "MagCache's Wan2.2 A14B ratios run across both experts in one sequence; diffusers' hooks "
                         "count steps per expert, and the split depends on the scheduler's boundary step"),
            ("a14b-i2v", "MagCache's Wan2.2 A14B ratios run across both experts in one sequence; diffusers' hooks "
                         "count steps per expert, and the split depends on the scheduler's boundary step"),
        ),
        min_diffusers="0.37.0",
        source="diffusers hooks/mag_cache.py (MagCacheConfig; only FLUX_MAG_RATIOS ship with it); Wan ratios from "
               "https://github.com/Zehong-Ma/MagCache (MagCache4Wan2.1/ and MagCache4Wan2.2/magcache_generate.py)",
    ),
    "seacache": CacheInfo(
        name="seacache", label="SeaCache", config="SeaCacheConfig",
        default=0.25,  # diffusers SeaCacheConfig: threshold: float = 0.25
        meaning="reuse the blocks' cached residual while the accumulated relative change of the "
                "spectrum-filtered latent stays below this; higher is faster",
        kinds=("t2v", "ti2v-5b", "a14b-t2v"),
        not_on=(
            ("i2v", _NO_STEP_INFO.format(pipeline="WanImageToVideoPipeline")),
            ("flf2v", _NO_STEP_INFO.format(pipeline="WanImageToVideoPipeline")),
            ("a14b-i2v", _NO_STEP_INFO.format(pipeline="WanImageToVideoPipeline")),
            ("vace", _NO_STEP_INFO.format(pipeline="WanVACEPipeline")),
        ),
        min_diffusers="0.41.0",
        source="diffusers hooks/sea_cache.py (SeaCacheConfig, threshold default 0.25; built-in Wan T2V adapter); "
               "TI2V-5B's image-to-video clips run uncached",
    ),
}
# diffusers caches that are not offered, and why (parse_cache says so when asked for one).
NOT_OFFERED: dict[str, str] = {
    "pab": "Pyramid Attention Broadcast keeps one cache per attention layer, not one per cache context, so with "
           "guidance the unconditional pass would reuse the conditional pass's attention",
    "fastercache": "FasterCache expects the conditional and unconditional inputs in one batch; diffusers' Wan "
                   "pipelines run them as two calls",
}
_ALIASES = {"fbc": "fbcache", "first-block": "fbcache", "firstblock": "fbcache", "first_block": "fbcache",
            "taylor": "taylorseer", "mag": "magcache", "sea": "seacache",
            "pyramid": "pab", "pyramid-attention-broadcast": "pab", "faster": "fastercache"}
NO_CACHE = ("", "none", "off")


@dataclass(frozen=True)
class CacheSpec:
    """A chosen step cache and its threshold."""

    name: str
    threshold: float

    @property
    def info(self) -> CacheInfo:
        return CACHES[self.name]

    def __str__(self) -> str:
        value = f"{self.threshold:g}" if not self.info.integer else str(int(self.threshold))
        return f"{self.name}:{value}"


def parse_cache(text: str | None) -> CacheSpec | None:
    """`NAME[:THRESHOLD]` -> CacheSpec; "none", "off" or "" -> None (no cache).

    ValueError naming `cache` for an unknown name, a cache that is not offered, or a
    threshold that is not a positive number (a whole number of steps >= 2 for taylorseer).
    """
    raw = "" if text is None else str(text).strip()
    name, sep, value = raw.partition(":")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key in NO_CACHE:
        if sep:
            raise ValueError(f"cache: {name.strip() or 'none'!r} takes no threshold, got {raw!r}")
        return None
    if key in NOT_OFFERED:
        raise ValueError(f"cache: {name.strip()!r} is not offered: {NOT_OFFERED[key]}")
    if key not in CACHES:
        raise ValueError(f"cache: unknown cache {name.strip()!r}; choose one of {', '.join(CACHES)} or none")
    info = CACHES[key]
    if not sep:
        return CacheSpec(key, float(info.default))
    value = value.strip()
    try:
        threshold = float(value)
    except ValueError:
        raise ValueError(f"cache: the threshold of {key} must be a number, got {value!r}") from None
    if not math.isfinite(threshold) or threshold <= 0:
        raise ValueError(f"cache: the threshold of {key} must be a positive number, got {value!r}")
    if info.integer and (threshold != int(threshold) or threshold < 2):
        raise ValueError(f"cache: the threshold of {key} is a whole number of steps (2 or more), got {value!r}")
    return CacheSpec(key, threshold)


def cache_support(name: str, kind: str) -> str | None:
    """Why cache `name` does not work on a `kind` model, or None if it does."""
    return CACHES[name].reason_not(kind)


def cache_help() -> str:
    """One line per cache for --help: name, default threshold, what the threshold means, the model kinds."""
    lines = []
    for info in CACHES.values():
        default = str(int(info.default)) if info.integer else f"{info.default:g}"
        lines.append(f"{info.name}[:{default}]  {info.label}: {info.meaning} ({', '.join(info.kinds)}; "
                     f"diffusers >= {info.min_diffusers})")
    return "\n".join(lines)
