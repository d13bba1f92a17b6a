"""What each kind of Wan model can do, and how its makers run it.

The plan needs these facts to cut a Deforum timeline into clips, and it must stay
pure, so they live here as plain data rather than on loaded pipelines. `models.py`
maps a folder on disk to one of these specs (`spec_for_transformer`).

Every sampling default (steps, guidance, flow shift, negative prompt) and every
trained size is the official one, read from the model makers' repositories at
Wan-Video/Wan2.1 9737cba and Wan-Video/Wan2.2 42bf4cf; the comment beside each
value names the file and the value there, and `ModelSpec.sources` carries the same
citation to `deforum-wan plan`. `trained_size` maps a Deforum W/H onto the nearest
size a model was trained for, keeping the aspect ratio.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

T2V = "t2v"
I2V = "i2v"
VACE = "vace"
MODES = (T2V, I2V, VACE)

# The model kind used when none is named: the CLI's --model default and the job queue's first
# choice. VACE because chained clips continue each other by design: VACE carries the previous
# clip's last frames into the next (and renders the first clip as T2V), so one model gives the
# continuous render the plan is built for; a T2V-only model renders independent clips.
DEFAULT_MODEL_KIND = VACE
# Which model a job or the tab takes when none is named: the default first, then the best continuity.
DEFAULT_KIND_ORDER = (DEFAULT_MODEL_KIND,) + tuple(
    k for k in ("vace", "ti2v-5b", "t2v", "a14b-t2v", "i2v", "a14b-i2v", "flf2v") if k != DEFAULT_MODEL_KIND)

# Wan's default negative prompt: Wan2.1 and Wan2.2 wan/configs/shared_config.py, `sample_neg_prompt`
# (the same text in both). Wan2.1 wan/configs/wan_i2v_14B.py prepends "镜头晃动，" (camera shake) for
# I2V, and wan/configs/__init__.py prepends "镜头切换，" (shot cut) to that for FLF2V.
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，"
    "残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
    "三条腿，背景人很多，倒着走")
NEG_SHARED = "Wan2.1/Wan2.2 wan/configs/shared_config.py sample_neg_prompt"

# Trained sizes, (width, height): Wan's SIZE_CONFIGS keys are "width*height" (Wan2.1 and Wan2.2
# wan/configs/__init__.py), and SUPPORTED_SIZES lists which of them each task was trained for.
SIZES_480P = ((832, 480), (480, 832))
SIZES_720P = ((1280, 720), (720, 1280))
AREA_480P, AREA_720P = 832 * 480, 1280 * 720
# A W/H whose shape is within this of a trained size's is rendered at that size as it is (864x480,
# Forge's Wan default, is 832x480); any other shape gets the trained area at its own aspect ratio.
ASPECT_SNAP = 0.05
_MIN_SIDE, _MAX_SIDE = 16, 4096


@dataclass(frozen=True)
class ModelSpec:
    """Limits and official sampling defaults of one Wan model kind, as the plan sees them."""

    kind: str
    label: str
    native_fps: int
    max_frames: int  # largest clip, a 4n+1 count
    size_multiple: int  # width and height must be multiples of this
    modes: tuple[str, ...]  # which clip modes this model can render
    default_guidance: float = 5.0  # the high-noise expert's on a two-expert model
    default_flow_shift: float = 5.0  # at 720p, and at 480p unless flow_shift_480p says otherwise
    default_steps: int = 50
    default_guidance_2: float | None = None  # the low-noise expert's (two-expert models only)
    flow_shift_480p: float | None = None
    sizes: tuple[tuple[int, int], ...] = ()  # trained (width, height); empty: none known, W/H used as given
    negative_prompt: str = WAN_NEGATIVE_PROMPT
    sources: tuple[tuple[str, str], ...] = ()  # (field, citation) for `plan`

    def supports(self, mode: str) -> bool:
        return mode in self.modes

    def source(self, name: str) -> str:
        return dict(self.sources).get(name, "")

    def flow_shift_at(self, width: int, height: int) -> tuple[float, str]:
        """The official flow shift at a render size, and its citation."""
        if self.flow_shift_480p is not None and is_480p(width, height):
            return self.flow_shift_480p, self.source("flow_shift_480p")
        return self.default_flow_shift, self.source("flow_shift")


def is_480p(width: int, height: int) -> bool:
    """Nearer Wan's 480p area (832x480) than its 720p area (1280x720), by ratio."""
    area = width * height
    return abs(math.log(area / AREA_480P)) <= abs(math.log(area / AREA_720P))


W21 = "Wan2.1 generate.py"
_W21_SHIFT = f"{W21} _validate_args: sample_shift 5.0"
_W21_STEPS_T2V = f"{W21} _validate_args: sample_steps 50"
_W21_GUIDE = f"{W21}: --sample_guide_scale default 5.0"
_W21_SIZES = "Wan2.1 wan/configs/__init__.py SUPPORTED_SIZES"
_T2V_A14B, _I2V_A14B = "Wan2.2 wan/configs/wan_t2v_A14B.py", "Wan2.2 wan/configs/wan_i2v_A14B.py"


def _sources(**cites: str) -> tuple[tuple[str, str], ...]:
    return tuple(cites.items())


MODEL_SPECS: dict[str, ModelSpec] = {
    spec.kind: spec
    for spec in (
        ModelSpec(
            "t2v", "Wan2.1 T2V", 16, 81, 16, (T2V,),
            default_guidance=5.0,  # Wan2.1 generate.py: --sample_guide_scale default=5.0
            default_flow_shift=5.0,  # Wan2.1 generate.py _validate_args: sample_shift = 5.0 (t2v, any size)
            default_steps=50,  # Wan2.1 generate.py _validate_args: sample_steps = 50 (40 only for "i2v" tasks)
            # Wan2.1 wan/configs/__init__.py: SUPPORTED_SIZES['t2v-14B'] = ('720*1280', '1280*720', '480*832', '832*480')
            sizes=SIZES_480P + SIZES_720P,
            sources=_sources(guidance=_W21_GUIDE, flow_shift=f"{_W21_SHIFT} for t2v",
                             steps=f"{_W21_STEPS_T2V} for t2v", sizes=f"{_W21_SIZES}['t2v-14B']"),
        ),
        ModelSpec(
            "i2v", "Wan2.1 I2V", 16, 81, 16, (I2V,),
            default_guidance=5.0,  # Wan2.1 generate.py: --sample_guide_scale default=5.0
            default_flow_shift=5.0,  # Wan2.1 generate.py _validate_args: sample_shift = 5.0 (i2v at 720p)
            flow_shift_480p=3.0,  # Wan2.1 generate.py: sample_shift = 3.0 if "i2v" in task and size is 832*480/480*832
            default_steps=40,  # Wan2.1 generate.py _validate_args: sample_steps = 40 if "i2v" in task
            # Wan2.1 wan/configs/__init__.py: SUPPORTED_SIZES['i2v-14B'] = ('720*1280', '1280*720', '480*832', '832*480')
            sizes=SIZES_480P + SIZES_720P,
            # Wan2.1 wan/configs/wan_i2v_14B.py: sample_neg_prompt = "镜头晃动，" + the shared one
            negative_prompt="镜头晃动，" + WAN_NEGATIVE_PROMPT,
            sources=_sources(guidance=_W21_GUIDE, flow_shift=f"{_W21_SHIFT} for i2v at 720p",
                             flow_shift_480p=f"{W21} _validate_args: sample_shift 3.0 for i2v at 832*480/480*832",
                             steps=f"{W21} _validate_args: sample_steps 40 for i2v", sizes=f"{_W21_SIZES}['i2v-14B']",
                             negative_prompt="Wan2.1 wan/configs/wan_i2v_14B.py sample_neg_prompt"),
        ),
        ModelSpec(
            "flf2v", "Wan2.1 FLF2V", 16, 81, 16, (I2V,),
            default_guidance=5.0,  # Wan2.1 generate.py: --sample_guide_scale default=5.0 (passed to WanFLF2V.generate)
            default_flow_shift=16.0,  # Wan2.1 generate.py _validate_args: sample_shift = 16 for flf2v and vace
            default_steps=50,  # Wan2.1 generate.py _validate_args: sample_steps = 50 ("flf2v-14B" is no "i2v" task)
            # Wan2.1 wan/configs/__init__.py: SUPPORTED_SIZES['flf2v-14B'] = ('720*1280', '1280*720', '480*832', '832*480')
            sizes=SIZES_480P + SIZES_720P,
            # Wan2.1 wan/configs/__init__.py: flf2v_14B.sample_neg_prompt = "镜头切换，" + i2v_14B's
            negative_prompt="镜头切换，镜头晃动，" + WAN_NEGATIVE_PROMPT,
            sources=_sources(guidance=_W21_GUIDE, flow_shift=f"{W21} _validate_args: sample_shift 16 for flf2v",
                             steps=f"{_W21_STEPS_T2V} for flf2v", sizes=f"{_W21_SIZES}['flf2v-14B']",
                             negative_prompt="Wan2.1 wan/configs/__init__.py flf2v_14B.sample_neg_prompt"),
        ),
        ModelSpec(
            "vace", "Wan2.1 VACE", 16, 81, 16, (T2V, VACE),
            default_guidance=5.0,  # Wan2.1 generate.py: --sample_guide_scale default=5.0
            default_flow_shift=16.0,  # Wan2.1 generate.py _validate_args: sample_shift = 16 for flf2v and vace
            default_steps=50,  # Wan2.1 generate.py _validate_args: sample_steps = 50
            # Wan2.1 wan/configs/__init__.py: SUPPORTED_SIZES['vace-14B'] = ('720*1280', '1280*720', '480*832', '832*480')
            sizes=SIZES_480P + SIZES_720P,
            sources=_sources(guidance=_W21_GUIDE, flow_shift=f"{W21} _validate_args: sample_shift 16 for vace",
                             steps=f"{_W21_STEPS_T2V} for vace", sizes=f"{_W21_SIZES}['vace-14B']"),
        ),
        ModelSpec(
            "ti2v-5b", "Wan2.2 TI2V-5B", 24, 121, 32, (T2V, I2V),
            default_guidance=5.0,  # Wan2.2 wan/configs/wan_ti2v_5B.py: sample_guide_scale = 5.0
            default_flow_shift=5.0,  # Wan2.2 wan/configs/wan_ti2v_5B.py: sample_shift = 5.0
            default_steps=50,  # Wan2.2 wan/configs/wan_ti2v_5B.py: sample_steps = 50
            # Wan2.2 wan/configs/__init__.py: SUPPORTED_SIZES['ti2v-5B'] = ('704*1280', '1280*704')
            sizes=((1280, 704), (704, 1280)),
            sources=_sources(guidance="Wan2.2 wan/configs/wan_ti2v_5B.py sample_guide_scale 5.0",
                             flow_shift="Wan2.2 wan/configs/wan_ti2v_5B.py sample_shift 5.0",
                             steps="Wan2.2 wan/configs/wan_ti2v_5B.py sample_steps 50",
                             sizes="Wan2.2 wan/configs/__init__.py SUPPORTED_SIZES['ti2v-5B']"),
        ),
        ModelSpec(
            "a14b-t2v", "Wan2.2 T2V-A14B", 16, 81, 16, (T2V,),
            # Wan2.2 wan/configs/wan_t2v_A14B.py: sample_guide_scale = (3.0, 4.0)  # low noise, high noise.
            # diffusers' WanPipeline: guidance_scale is the high-noise `transformer`'s, guidance_scale_2 the
            # low-noise `transformer_2`'s.
            default_guidance=4.0,
            default_guidance_2=3.0,
            default_flow_shift=12.0,  # Wan2.2 wan/configs/wan_t2v_A14B.py: sample_shift = 12.0
            default_steps=40,  # Wan2.2 wan/configs/wan_t2v_A14B.py: sample_steps = 40
            # Wan2.2 wan/configs/__init__.py: SUPPORTED_SIZES['t2v-A14B'] = ('720*1280', '1280*720', '480*832', '832*480')
            sizes=SIZES_480P + SIZES_720P,
            sources=_sources(guidance=f"{_T2V_A14B} sample_guide_scale (3.0, 4.0): high noise 4.0",
                             guidance_2=f"{_T2V_A14B} sample_guide_scale (3.0, 4.0): low noise 3.0",
                             flow_shift=f"{_T2V_A14B} sample_shift 12.0",
                             steps=f"{_T2V_A14B} sample_steps 40",
                             sizes="Wan2.2 wan/configs/__init__.py SUPPORTED_SIZES['t2v-A14B']"),
        ),
        ModelSpec(
            "a14b-i2v", "Wan2.2 I2V-A14B", 16, 81, 16, (I2V,),
            default_guidance=3.5,  # Wan2.2 wan/configs/wan_i2v_A14B.py: sample_guide_scale = (3.5, 3.5)  # low, high
            default_guidance_2=3.5,  # the same pair's low-noise value
            default_flow_shift=5.0,  # Wan2.2 wan/configs/wan_i2v_A14B.py: sample_shift = 5.0
            default_steps=40,  # Wan2.2 wan/configs/wan_i2v_A14B.py: sample_steps = 40
            # Wan2.2 wan/configs/__init__.py: SUPPORTED_SIZES['i2v-A14B'] = ('720*1280', '1280*720', '480*832', '832*480')
            sizes=SIZES_480P + SIZES_720P,
            sources=_sources(guidance=f"{_I2V_A14B} sample_guide_scale (3.5, 3.5): high noise 3.5",
                             guidance_2=f"{_I2V_A14B} sample_guide_scale (3.5, 3.5): low noise 3.5",
                             flow_shift=f"{_I2V_A14B} sample_shift 5.0",
                             steps=f"{_I2V_A14B} sample_steps 40",
                             sizes="Wan2.2 wan/configs/__init__.py SUPPORTED_SIZES['i2v-A14B']"),
        ),
    )
}

# The 1.3B Wan2.1 models were trained at 480p only: Wan2.1 configs SUPPORTED_SIZES['t2v-1.3B'] and
# ['vace-1.3B'] = ('480*832', '832*480'). Their defaults are the 14B ones (generate.py does not tell
# them apart; its README suggests trying guidance 6 and shift 8-12 for T2V-1.3B).
SMALL_SPECS: dict[str, ModelSpec] = {
    kind: replace(MODEL_SPECS[kind], label=MODEL_SPECS[kind].label + " 1.3B", sizes=SIZES_480P,
                  sources=MODEL_SPECS[kind].sources + (("sizes", f"{_W21_SIZES}['{kind}-1.3B']"),))
    for kind in (T2V, VACE)
}
# Transformer widths (attention heads x head size) of the official checkpoints: Wan2.1 configs
# wan_t2v_1_3B.py dim = 1536, wan_t2v_14B.py / wan_i2v_14B.py dim = 5120; Wan2.2 configs
# wan_t2v_A14B.py / wan_i2v_A14B.py dim = 5120, wan_ti2v_5B.py dim = 3072.
OFFICIAL_WIDTHS = {"t2v": (1536, 5120), "vace": (1536, 5120), "i2v": (5120,), "flf2v": (5120,),
                   "ti2v-5b": (3072,), "a14b-t2v": (5120,), "a14b-i2v": (5120,)}


def spec_for_transformer(kind: str, width: int | None) -> ModelSpec:
    """The spec of a model folder of `kind` whose transformer is `width` wide (None: not declared).

    A 1.3B transformer gets its 480p-only sizes. A width none of the official checkpoints has (a
    tiny test model, a community variant) keeps the kind's defaults but no trained sizes: nothing
    says what it was trained at, so W/H are used as given.
    """
    spec = model_spec(kind)
    if width is None or width in OFFICIAL_WIDTHS.get(kind, (width,)):
        return SMALL_SPECS[kind] if width == 1536 and kind in SMALL_SPECS else spec
    return replace(spec, sources=spec.sources + (("sizes", f"none known: a {width}-wide transformer is not an "
                                                           f"official {spec.label} checkpoint"),), sizes=())


def trained_size(spec: ModelSpec, width: int, height: int) -> tuple[int, int]:
    """The nearest size `spec` was trained for with the aspect ratio of width x height.

    The trained area nearest W*H (by ratio) is the resolution; a trained size of nearly the
    same shape (within ASPECT_SNAP) is taken as it is; any other shape gets that area at its own
    aspect ratio in multiples of `size_multiple`, no larger than the area, as Wan's own I2V and
    TI2V do for an image of any shape (`max_area`, Wan2.2 wan/utils/utils.py best_output_size).
    Without trained sizes, W/H come back unchanged.
    """
    if not spec.sizes:
        return width, height
    areas = sorted({w * h for w, h in spec.sizes})
    area = min(areas, key=lambda a: abs(math.log(width * height / a)))
    ratio = width / height
    shape = lambda w, h: abs(math.log(w / h / ratio))  # noqa: E731
    nearest = min((s for s in spec.sizes if s[0] * s[1] == area), key=lambda s: shape(*s))
    if shape(*nearest) <= math.log(1 + ASPECT_SNAP):
        return nearest
    m = spec.size_multiple
    best: tuple[float, int, int] | None = None
    for h in range(m, min(_MAX_SIDE, area // m) + 1, m):
        w = min(max(m, round(h * ratio / m) * m), _MAX_SIDE)
        if w * h > area:
            continue
        # the shape first; a small shortfall of area weighs a quarter as much
        cost = shape(w, h) + 0.25 * math.log(area / (w * h))
        if best is None or cost < best[0]:
            best = (cost, w, h)
    assert best is not None  # h = m, w <= area // m always fits
    return best[1], best[2]


def model_spec(kind: str) -> ModelSpec:
    """Look up a kind by name, with an error that lists the known ones."""
    try:
        return MODEL_SPECS[kind]
    except KeyError:
        known = ", ".join(sorted(MODEL_SPECS))
        raise ValueError(f"unknown model kind {kind!r}; known kinds: {known}") from None


def default_models_dir() -> Path:
    """Where Wan models live unless told otherwise: $DEFORUM_WAN_MODELS, else ./models/wan.

    Here rather than beside the model loader because the enhancer and the web UI
    look for models too, and neither should import the renderer for a path.
    """
    env = os.environ.get("DEFORUM_WAN_MODELS")
    return Path(env).expanduser() if env else Path("models") / "wan"


def cache_root() -> Path:
    """$DEFORUM_WAN_CACHE, else $XDG_CACHE_HOME or ~/.cache, /deforum-wan: the enhancer and the previews keep
    their caches in folders below it."""
    env = os.environ.get("DEFORUM_WAN_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "deforum-wan"
