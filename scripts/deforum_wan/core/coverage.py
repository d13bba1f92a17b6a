"""Which Deforum keys a Wan render uses, maps to something else, or ignores, and why.

Nothing a Deforum user sets may be dropped without a word. `key_report` lists every
Deforum key that changes how a Deforum render looks, each **used** (read as Deforum
reads it), **mapped** (turned into a Wan equivalent, the note says which) or **ignored**
(the note says why it has no effect). An ignored key set away from Deforum's default
yields exactly one warning line naming the key, its value and the reason;
`format_key_report` is the table `inspect` and `plan` show.

"Changed" means the value would make a *Deforum* render differ from one with Deforum's
default: a missing key is the default; schedules are compared without whitespace and
plain-number schedules by value (``0:(1.0)`` equals ``0: (1)``); numbers by value,
``"17"`` equals ``17``; booleans as booleans; ``"None"``, ``""`` and null alike. A value
Deforum itself does not read is no change (``steps_schedule`` with
``enable_steps_scheduling`` off, ``zoom`` in 3D, the mask keys with ``use_mask`` off).
``diffusion_cadence`` is compared with 1, every frame diffused, which is what Wan does.

Defaults are Deforum's own, from deforum-art/sd-webui-deforum at commit
322426851408ebca2cd49492bfeb1ec86e1dc869, ``scripts/deforum_helpers/args.py``
(``DeforumAnimArgs``, ``DeforumArgs``, ``LoopArgs``, ``ParseqArgs``,
``DeforumOutputArgs``), with ``defaults.py`` (guided images JSON),
``ui_elements.py`` (``animation_prompts_negative``), ``deforum_controlnet.py``
(``cn_N_enabled``) and ``video_audio_utilities.py`` (``get_ffmpeg_params``: crf 17,
preset "slow") of the same commit. Keys only the Forge fork saves (``scheduler``,
``keyframe_distribution``, ``wan_*``, ...) take the values of the fork's default
settings file (``forge-deforum-default.txt``); Camera Shakify's ``shake_name`` is
"None", as a file without it has no shake.

Pure and quick (`plan` runs on every UI change): no schedule is evaluated except to
tell a constant ``cfg_scale_schedule``/``steps_schedule`` from a varying one.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping

from .choices import wan_option
from .guided import LOOP_NOTES, STRENGTH_NOTE
from .settings import DEFAULT_SEED_SCHEDULE, DEFAULT_ZOOM, DeforumSettings

__all__ = ["DEFORUM_COMMIT", "DEFORUM_DEFAULTS", "IGNORED", "MAPPED", "STATUSES", "USED", "KeyReport", "KeyStatus",
           "deforum_default", "format_key_report", "key_report"]

DEFORUM_COMMIT = "322426851408ebca2cd49492bfeb1ec86e1dc869"
USED, MAPPED, IGNORED = "used", "mapped", "ignored"
STATUSES = (USED, MAPPED, IGNORED)

_GUIDED_IMAGES = ('{"0": "https://deforum.github.io/a1/Gi1.png", "max_f/4-5": "https://deforum.github.io/a1/Gi2.png", '
                  '"max_f/2-10": "https://deforum.github.io/a1/Gi3.png", '
                  '"3*max_f/4-15": "https://deforum.github.io/a1/Gi4.jpg", "max_f-20": "https://deforum.github.io/a1/Gi1.png"}')
_HYBRID = {
    "hybrid_comp_alpha_schedule": "0:(0.5)", "hybrid_comp_mask_blend_alpha_schedule": "0:(0.5)",
    "hybrid_comp_mask_contrast_schedule": "0:(1)", "hybrid_comp_mask_auto_contrast_cutoff_high_schedule": "0:(100)",
    "hybrid_comp_mask_auto_contrast_cutoff_low_schedule": "0:(0)", "hybrid_flow_factor_schedule": "0:(1)",
    "hybrid_generate_inputframes": False, "hybrid_generate_human_masks": "None",
    "hybrid_use_first_frame_as_init_image": True, "hybrid_motion_use_prev_img": False,
    "hybrid_flow_consistency": False, "hybrid_consistency_blur": 2, "hybrid_flow_method": "RAFT",
    "hybrid_use_init_image": False, "hybrid_comp_mask_type": "None", "hybrid_comp_mask_inverse": False,
    "hybrid_comp_mask_equalize": "None", "hybrid_comp_mask_auto_contrast": False, "hybrid_comp_save_extra_frames": False,
}
_VIDEO_INPUT = {"video_init_path": "https://deforum.github.io/a1/V1.mp4", "extract_nth_frame": 1, "extract_from_frame": 0,
                "extract_to_frame": -1, "overwrite_extracted_frames": False, "use_mask_video": False,
                "video_mask_path": "https://deforum.github.io/a1/VM1.mp4"}
# fill is saved as its index (args.py: type_param "index"): 1 is Deforum's default, "original".
_MASK = {"use_alpha_as_mask": False, "mask_file": "https://deforum.github.io/a1/M1.jpg", "invert_mask": False,
         "mask_contrast_adjust": 1.0, "mask_brightness_adjust": 1.0, "overlay_mask": True, "mask_overlay_blur": 4,
         "fill": 1, "full_res_mask": True, "full_res_mask_padding": 4, "mask_schedule": '0: ("{video_mask}")'}
_LOOP = {"init_images": _GUIDED_IMAGES, "image_strength_schedule": "0:(0.75)", "blendFactorMax": "0:(0.35)",
         "blendFactorSlope": "0:(0.25)", "tweening_frames_schedule": "0:(20)", "color_correction_factor": "0:(0.075)"}
_FRAME_INTERPOLATION = {"frame_interpolation_x_amount": 2, "frame_interpolation_slow_mo_enabled": False,
                        "frame_interpolation_slow_mo_amount": 2, "frame_interpolation_use_upscaled": False}
_UPSCALE = {"r_upscale_factor": "x2", "r_upscale_model": "realesr-animevideov3"}

#: Deforum's default of every key the report covers (see the module docstring for the sources).
DEFORUM_DEFAULTS: Mapping[str, Any] = MappingProxyType({
    # prompts, size, timeline, seeds
    "prompts": None, "animation_prompts": None, "positive_prompts": "", "negative_prompts": "nsfw, nude",
    "animation_prompts_positive": "", "animation_prompts_negative": "nsfw, nude",
    "W": 512, "H": 512, "fps": 15, "max_frames": 120, "animation_mode": "2D",
    "seed": -1, "seed_behavior": "iter", "seed_iter_N": 1, "seed_schedule": DEFAULT_SEED_SCHEDULE,
    "enable_subseed_scheduling": False, "subseed_schedule": "0: (1)", "subseed_strength_schedule": "0: (0)",
    "seed_resize_from_w": 0, "seed_resize_from_h": 0,
    # camera
    "angle": "0: (0)", "zoom": DEFAULT_ZOOM, "translation_x": "0: (0)", "translation_y": "0: (0)",
    "translation_z": "0: (1.75)", "rotation_3d_x": "0: (0)", "rotation_3d_y": "0: (0)", "rotation_3d_z": "0: (0)",
    "transform_center_x": "0: (0.5)", "transform_center_y": "0: (0.5)", "fov_schedule": "0: (70)",
    "near_schedule": "0: (200)", "far_schedule": "0: (10000)", "aspect_ratio_schedule": "0: (1)",
    "aspect_ratio_use_old_formula": False, "shake_name": "None", "shake_intensity": 1.0, "shake_speed": 1.0,
    "enable_perspective_flip": False, "flip_2d_perspective": False, "perspective_flip_theta": "0: (0)",
    "perspective_flip_phi": "0: (0)", "perspective_flip_gamma": "0: (0)", "perspective_flip_fv": "0: (53)",
    "border": "replicate", "use_depth_warping": True, "depth_algorithm": "Midas-3-Hybrid", "midas_weight": 0.2,
    "padding_mode": "border", "sampling_mode": "bicubic", "save_depth_maps": False,
    # diffusion
    "strength_schedule": "0: (0.65)", "keyframe_strength_schedule": "0: (0.20)", "cfg_scale_schedule": "0: (7)",
    "distilled_cfg_scale_schedule": "0: (3.5)", "pix2pix_img_cfg_scale_schedule": "0:(1.5)", "steps": 25,
    "enable_steps_scheduling": False, "steps_schedule": "0: (25)", "sampler": "Euler a",
    "enable_sampler_scheduling": False, "sampler_schedule": '0: ("Euler a")', "scheduler": "Simple",
    "enable_scheduler_scheduling": False, "scheduler_schedule": '0: ("Simple")', "enable_checkpoint_scheduling": False,
    "checkpoint_schedule": '0: ("model1.ckpt"), 100: ("model2.safetensors")', "enable_clipskip_scheduling": False,
    "clipskip_schedule": "0: (2)", "enable_noise_multiplier_scheduling": True, "noise_multiplier_schedule": "0: (1.05)",
    "enable_ddim_eta_scheduling": False, "ddim_eta_schedule": "0: (0)", "enable_ancestral_eta_scheduling": False,
    "ancestral_eta_schedule": "0: (1)", "noise_schedule": "0: (0.065)", "noise_type": "perlin", "perlin_w": 8,
    "perlin_h": 8, "perlin_octaves": 4, "perlin_persistence": 0.5, "contrast_schedule": "0: (1.0)",
    "amount_schedule": "0: (0.1)", "kernel_schedule": "0: (5)", "sigma_schedule": "0: (1)",
    "threshold_schedule": "0: (0)", "tiling": False, "restore_faces": False, "reroll_blank_frames": "ignore",
    "reroll_patience": 10, "motion_preview_mode": False, "keyframe_distribution": "Keyframes Only",
    "freeu_enabled": False, "kohya_hrfix_enabled": False,
    # colour, cadence
    "color_coherence": "LAB", "color_coherence_image_path": "", "color_coherence_video_every_N_frames": 1,
    "color_force_grayscale": False, "legacy_colormatch": False, "diffusion_cadence": 2, "optical_flow_cadence": "None",
    "cadence_flow_factor_schedule": "0: (1)", "optical_flow_redo_generation": "None",
    "redo_flow_factor_schedule": "0: (1)", "diffusion_redo": "0",
    # hybrid video, video input, masks, guided images, ControlNet, Parseq
    "hybrid_composite": "None", "hybrid_motion": "None", **_HYBRID, **_VIDEO_INPUT, "use_mask": False, **_MASK,
    "use_noise_mask": False, "noise_mask_schedule": '0: ("{video_mask}")', "use_looper": False, **_LOOP,
    "image_keyframe_strength_schedule": "0:(0.20)", **{f"cn_{i}_enabled": False for i in range(1, 6)},
    "parseq_manifest": None, "parseq_use_deltas": True, "parseq_non_schedule_overrides": True,
    # init image, output
    "use_init": False, "init_image": "https://deforum.github.io/a1/I1.png", "strength": 0.8,
    "strength_0_no_init": True, "batch_name": "Deforum_{timestring}", "resume_from_timestring": False,
    "resume_timestring": "20230129210106", "add_soundtrack": "None", "soundtrack_path": "https://deforum.github.io/a1/A1.mp3",
    "skip_video_creation": False, "ffmpeg_crf": 17, "ffmpeg_preset": "slow", "ffmpeg_mode": None, "ffmpeg_outdir": None,
    "make_gif": False, "delete_imgs": False, "r_upscale_video": False, **_UPSCALE, "frame_interpolation_engine": "None",
    **_FRAME_INTERPOLATION,
    # the Forge fork's Wan keys (forge-deforum-default.txt)
    "wan_prompts": None, "wan_resolution": "864x480", "wan_inference_steps": 20, "wan_steps": None,
    "wan_guidance_scale": 7.5, "wan_guidance": None, "wan_guidance_2": None, "wan_flow_shift": None,
    "wan_exact_size": False, "wan_max_clip_frames": None, "wan_frame_overlap": 2, "wan_overlap": None,
    "wan_t2v_model": "1.3B VACE", "wan_i2v_model": "Use Primary Model", "wan_auto_download": True,
    "wan_preferred_size": "1.3B VACE (Recommended)", "wan_model_path": "models/wan", "wan_seed": -1,
    "wan_strength_override": True, "wan_fixed_strength": 1.0, "wan_guidance_override": True,
    "wan_motion_strength": 1.0, "wan_enable_interpolation": True, "wan_interpolation_strength": 0.5,
    "wan_flash_attention_mode": "Auto (Recommended)",
})

# The wan_* keys core reads (choices.py, plan.py, prompts.py); the first of a pair wins when both are set.
_CARRY = "frames each VACE clip carries over from the one before (VACE continuity)"
_WAN_READ = {
    "wan_prompts": "the prompts Wan renders (instead of prompts)", "wan_steps": "Wan's sampling steps",
    "wan_resolution": "the render size (instead of W/H), nearest trained size unless exact",
    "wan_exact_size": "keeps the size as given instead of the nearest trained size",
    "wan_inference_steps": "Wan's sampling steps", "wan_guidance": "Wan's guidance", "wan_guidance_scale": "Wan's guidance",
    "wan_guidance_2": "the low-noise expert's guidance (two-expert models)", "wan_flow_shift": "the scheduler's flow shift",
    "wan_max_clip_frames": "the longest clip, in Wan frames", "wan_overlap": _CARRY, "wan_frame_overlap": _CARRY,
}
_WAN_FIRST = {"wan_inference_steps": "wan_steps", "wan_guidance_scale": "wan_guidance", "wan_frame_overlap": "wan_overlap"}
_MODEL, _STRENGTH, _BLEND = ("the model is chosen in the tab or with --model / --i2v-model",
                              "clips continue the previous clip's frames: there is no strength to set",
                              "in-between output frames blend two Wan frames (the blend option)")
_WAN_IGNORED = {
    "wan_t2v_model": _MODEL, "wan_i2v_model": _MODEL, "wan_preferred_size": _MODEL,
    "wan_auto_download": "models are downloaded from the tab's model list",
    "wan_model_path": "models are found in the models folder (--models-dir)",
    "wan_seed": "the seed comes from seed and seed_behavior", "wan_strength_override": _STRENGTH,
    "wan_fixed_strength": _STRENGTH, "wan_guidance_override": "wan_guidance_scale is used whenever it is set",
    "wan_motion_strength": "camera moves become prompt words (the sensitivity option scales them)",
    "wan_enable_interpolation": _BLEND, "wan_interpolation_strength": _BLEND,
    "wan_flash_attention_mode": "attention is chosen with --attention (it does not change the images)",
}

_NO_NOISE = "Wan adds no img2img noise: each clip is sampled from fresh noise"
_NO_DEPTH = "no depth warp with camera words (--motion guide warps with depth: use_depth_warping and --depth-model)"
_PLAIN = re.compile(r'^"?(\d+)"?:\(?"?([-+]?(?:\d+\.?\d*|\.\d+))"?\)?$')


@dataclass(frozen=True)
class KeyStatus:
    """One Deforum key: its value (the default when missing), Deforum's default, and what Wan does with it."""

    key: str
    value: Any
    default: Any
    status: str  # used | mapped | ignored
    note: str  # to what it is mapped, or why it has no effect
    changed: bool  # the value would change a Deforum render (see the module docstring)

    @property
    def warning(self) -> str | None:
        """The line a user sees when an ignored key was set away from Deforum's default, else None."""
        if self.status != IGNORED or not self.changed:
            return None
        shown = _show(self.value)
        default = "" if self.default is None or _same(self.value, self.default) else \
            f" (Deforum's default: {_show(self.default)})"
        return f"{self.key} is {shown}{default} but is ignored: {self.note}"


@dataclass(frozen=True)
class KeyReport:
    """Every covered key, in groups (prompts, timeline, seeds, camera, ..., output, wan_*)."""

    entries: tuple[KeyStatus, ...]

    @property
    def warnings(self) -> tuple[str, ...]:
        """One line per ignored key whose value differs from Deforum's default."""
        return tuple(e.warning for e in self.entries if e.warning)

    def get(self, key: str) -> KeyStatus | None:
        return next((e for e in self.entries if e.key == key), None)

    def by_status(self, status: str) -> tuple[KeyStatus, ...]:
        return tuple(e for e in self.entries if e.status == status)

    def to_dict(self) -> dict[str, Any]:
        return {"entries": [asdict(e) for e in self.entries], "warnings": list(self.warnings)}


def deforum_default(key: str) -> Any:
    """Deforum's default for `key` (KeyError for a key the report does not cover)."""
    return DEFORUM_DEFAULTS[key]


# ---------------------------------------------------------------- comparing values


def _norm(value: Any) -> Any:
    """A comparable form: numbers by value, plain schedules as (frame, value) pairs, text without whitespace."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value  # ints and floats compare by value; float() of a huge int would overflow
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    text = str(value).strip()
    if text.lower() in ("none", "null", ""):
        return ""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return float(text)
    except ValueError:
        pass
    if text[:1] in "{[":
        try:
            return json.dumps(json.loads(text), sort_keys=True)
        except ValueError:
            pass
    return _plain_pairs(text) or "".join(text.split())


def _plain_pairs(text: str) -> tuple[tuple[int, float], ...] | None:
    """`0: (1), 10: (2)` as ((0, 1.0), (10, 2.0)); one pair when all values are equal; None unless plain."""
    pairs = []
    for piece in "".join(text.split()).rstrip(",").split(","):
        match = _PLAIN.match(piece)
        if match is None:
            return None
        pairs.append((int(match[1]), float(match[2])))
    if len({v for _, v in pairs}) == 1:
        return ((0, pairs[0][1]),)
    return tuple(sorted(dict(pairs).items()))


def _same(value: Any, default: Any) -> bool:
    a, b = _norm(value), _norm(default)
    number = (int, float)  # bools are the ints that stay themselves here
    if isinstance(a, number) and not isinstance(a, bool) and isinstance(b, tuple):
        a = ((0, a),)
    if isinstance(b, number) and not isinstance(b, bool) and isinstance(a, tuple):
        b = ((0, b),)
    return a == b


def _constant(text: Any, settings: DeforumSettings) -> bool:
    """Whether a schedule has one value over the whole timeline (a cheap check first, else evaluated)."""
    pairs = _norm(text)
    if isinstance(pairs, float):
        return True
    if isinstance(pairs, tuple):
        return len({v for frame, v in pairs if frame < settings.max_frames} or {0}) == 1
    try:
        from .schedules import parse_schedule  # only for expressions: numpy stays out of the cheap path

        values = parse_schedule(str(text), settings.max_frames, max(settings.seed, 0), key="schedule")
        return float(values.min()) == float(values.max())
    except Exception:  # the plan reports a bad schedule; here it only counts as varying
        return False


def _show(value: Any, width: int = 48) -> str:
    if isinstance(value, Mapping):
        return f"{{{len(value)} entries}}"
    text = repr(" ".join(value.split()) if isinstance(value, str) else value)
    return text if len(text) <= width else text[: width - 2] + "…" + text[-1]


# ---------------------------------------------------------------- the groups


class _Report:
    """Builds the entries for one settings object; `add` marks a key and decides whether it changed."""

    def __init__(self, settings: DeforumSettings, motion: str = "words"):
        self.settings, self.raw, self.mode, self.motion = settings, settings.raw, settings.animation_mode, motion
        self.moving = self.mode in ("2D", "3D")
        self.entries: list[KeyStatus] = []

    def value(self, key: str) -> Any:
        return self.raw[key] if key in self.raw else DEFORUM_DEFAULTS.get(key)

    def on(self, key: str) -> bool:
        norm = _norm(self.value(key))
        return norm is True or (isinstance(norm, float) and norm != 0)

    def text(self, key: str) -> str:
        return str(self.value(key) or "").strip()

    def set(self, key: str) -> bool:
        """The key names something other than nothing ('None', '' and null are nothing)."""
        return _norm(self.value(key)) != ""

    def add(self, key: str, status: str, note: str, live: bool = True, reference: Any = None) -> None:
        """Mark `key`; it changed when `live` (Deforum reads it here) and it differs from `reference`."""
        value, default = self.value(key), DEFORUM_DEFAULTS.get(key)
        against = default if reference is None else reference
        changed = bool(live) and key in self.raw and not _same(value, against)
        self.entries.append(KeyStatus(key, value, default, status, note, changed))

    def when(self, key: str, read: bool, status: str, note: str, why_not: str) -> None:
        """`status` with `note` when Wan reads `key` here, else ignored as Deforum ignores it (no change)."""
        if read:
            return self.add(key, status, note)
        self.add(key, IGNORED, why_not, live=False)

    def ignore(self, keys: Any, note: str, live: bool = True, present_only: bool = False) -> None:
        for key in keys if isinstance(keys, (tuple, list, dict)) else (keys,):
            if not present_only or key in self.raw:
                self.add(key, IGNORED, note, live)


def _prompts(r: _Report) -> None:
    wan = r.settings.wan_value("prompts")
    if isinstance(wan, dict) and wan:
        r.add(r.settings.prompts_key, IGNORED, "wan_prompts (the Forge fork's Wan prompts) are rendered instead")
    else:
        r.add(r.settings.prompts_key, USED, "the keyframe prompts, A1111 syntax made plain for Wan")
    for new, old, note in (("positive_prompts", "animation_prompts_positive", "added to every prompt"),
                           ("negative_prompts", "animation_prompts_negative",
                            "added to every negative prompt (with none anywhere, Wan's official one is used)")):
        r.add(old if old in r.raw and new not in r.raw else new, USED, note)


def _timeline(r: _Report) -> None:
    video = r.mode == "Video Input"  # the frames extracted from video_init_path set the length, the source the fps
    r.add("max_frames", *((IGNORED, "the extracted frames' count") if video else (USED, "the timeline's length")))
    r.add("fps", *((IGNORED, "the source's fps / extract_nth_frame") if video else (USED, "the output frame rate")))
    resolution = wan_option(r.settings, "resolution")
    for key in ("W", "H"):
        r.add(key, *((IGNORED, f"wan_resolution {resolution} sets the render size") if resolution is not None else
                     (MAPPED, "the nearest size the model was trained for at this aspect ratio (exact size keeps it)")))
    mode = r.mode
    if mode in ("2D", "3D"):
        r.add("animation_mode", USED, f"{mode} camera schedules become camera words")
    elif mode in ("None", "Video Input"):
        r.add("animation_mode", USED, "no camera motion: clips get no camera words" if mode == "None" else
              "each output frame restyles its source video frame (VACE video-to-video), no camera words")
    else:
        r.add("animation_mode", IGNORED, f"{mode} is not supported: Wan renders the prompts as one continuous video, "
                                         "with no interpolation between prompt images; the camera stays still")


def _seeds(r: _Report) -> None:
    behavior = r.settings.seed_behavior
    r.add("seed", USED, "the first clip's seed (-1: drawn once and saved with the render)")
    r.add("seed_behavior", USED, "each clip takes Deforum's seed at its first frame")
    r.when("seed_iter_N", behavior == "iter", USED, "frames per seed step, as in Deforum",
           "read only with seed_behavior iter, as in Deforum")
    r.when("seed_schedule", behavior == "schedule", USED, "each clip takes the scheduled seed at its first frame",
           "read only with seed_behavior schedule, as in Deforum")
    r.add("enable_subseed_scheduling", IGNORED, "Wan has no subseed variation")
    r.ignore(("subseed_schedule", "subseed_strength_schedule"), "Wan has no subseed variation",
             live=r.on("enable_subseed_scheduling"))
    r.ignore(("seed_resize_from_w", "seed_resize_from_h"), "Wan has no seed resize")


_AXES = {"2D": ("angle", "zoom", "translation_x", "translation_y"),
         "3D": ("translation_x", "translation_y", "translation_z", "rotation_3d_x", "rotation_3d_y", "rotation_3d_z")}


def _camera(r: _Report) -> None:
    mode, moving = r.mode, r.moving
    for key in ("angle", "zoom", "translation_x", "translation_y", "translation_z", "rotation_3d_x", "rotation_3d_y",
                "rotation_3d_z"):
        r.when(key, key in _AXES.get(mode, ()), MAPPED, f"camera words in each clip's prompt ({mode} moves; "
               "Wan follows words, not values)", f"not read in {mode} mode, as in Deforum")
    r.ignore(("transform_center_x", "transform_center_y"), "the pivot of Deforum's 2D warp; camera words have none",
             live=mode == "2D")
    r.ignore(("fov_schedule", "near_schedule", "far_schedule", "aspect_ratio_schedule", "aspect_ratio_use_old_formula"),
             "the 3D warp's camera lens and depth range; camera words have none", live=mode == "3D")
    shake = r.text("shake_name") not in ("", "None")
    if not moving:
        r.ignore(("shake_name", "shake_intensity", "shake_speed"), f"no camera motion in {mode} mode", live=False)
    else:
        r.add("shake_name", MAPPED, "'handheld shake' camera words in every prompt" if shake else "no shake")
        for key in ("shake_intensity", "shake_speed"):
            r.when(key, shake, MAPPED, "how strong the shake words are (intensity x sqrt(speed))", "shake_name is None")
    flip = r.on("enable_perspective_flip") or r.on("flip_2d_perspective")
    r.add("enable_perspective_flip", IGNORED, "camera words have no perspective flip", live=moving)
    r.ignore("flip_2d_perspective", "camera words have no perspective flip", live=moving, present_only=True)
    r.ignore(("perspective_flip_theta", "perspective_flip_phi", "perspective_flip_gamma", "perspective_flip_fv"),
             "camera words have no perspective flip", live=moving and flip)
    r.add("border", IGNORED, "Wan draws whole frames: no warp edges to fill", live=mode == "2D" or (moving and flip))
    r.add("use_depth_warping", IGNORED, _NO_DEPTH, live=mode == "3D")
    r.ignore(("depth_algorithm", "midas_weight"), _NO_DEPTH, live=mode == "3D" and r.on("use_depth_warping"))
    r.ignore(("padding_mode", "sampling_mode"), _NO_DEPTH, live=mode == "3D")
    r.add("save_depth_maps", IGNORED, "no depth maps are made", live=mode == "3D")


def _relative(r: _Report, key: str, what: str, official: str) -> None:
    """A schedule whose changes relative to its start scale a Wan value; constant, it changes nothing."""
    r.add(key, MAPPED, f"constant: no effect, the {official} is kept" if _constant(r.value(key), r.settings) else
          f"relative changes scale the {what} per clip (a constant schedule keeps the {official})")


def _diffusion(r: _Report) -> None:
    strength = "each clip continues from the previous clip's frames (I2V/VACE), with no img2img strength"
    guide = f"the {'source video' if r.mode == 'Video Input' else 'motion guide'}'s weight: VACE conditioning scale = "
    r.add("strength_schedule", *((MAPPED, guide + "mean strength over the clip / 0.65") if r.motion != "words" or
                                 r.mode == "Video Input" else (IGNORED, strength + " (--motion guide maps it)")))
    r.ignore("keyframe_strength_schedule", strength, present_only=True)
    _relative(r, "cfg_scale_schedule", "model's guidance", "official guidance (or wan_guidance_scale)")
    r.ignore("distilled_cfg_scale_schedule", "Flux's distilled guidance; Wan has none", present_only=True)
    r.add("pix2pix_img_cfg_scale_schedule", IGNORED, "for InstructPix2Pix checkpoints; Wan has none")
    given = next((k for k in ("wan_steps", "wan_inference_steps") if wan_option(r.settings, k) is not None), None)
    how = f"with {given} = {r.value(given)} steps" if given else "with the model's official steps"
    r.add("steps", IGNORED, f"Wan samples {how}; steps only times [from:to:when] prompt edits")
    if r.on("enable_steps_scheduling"):
        r.add("enable_steps_scheduling", MAPPED, "steps_schedule scales Wan's steps")
        _relative(r, "steps_schedule", "model's steps", "official steps (or wan_inference_steps)")
    else:
        r.add("enable_steps_scheduling", IGNORED, "off: steps_schedule is not read")
        r.add("steps_schedule", IGNORED, "enable_steps_scheduling is off (Deforum ignores it too)", live=False)
    sampler = "Wan samples with its model's own flow-matching scheduler"
    for name in ("sampler", "scheduler"):
        enable, schedule = f"enable_{name}_scheduling", f"{name}_schedule"
        r.ignore((name, enable), sampler, present_only=name == "scheduler")
        r.ignore(schedule, sampler, live=r.on(enable), present_only=name == "scheduler")
    for enable, schedule, note in (
        ("enable_checkpoint_scheduling", "checkpoint_schedule", "the Wan model renders every clip"),
        ("enable_clipskip_scheduling", "clipskip_schedule", "Wan's UMT5 text encoder has no CLIP skip"),
        ("enable_noise_multiplier_scheduling", "noise_multiplier_schedule", _NO_NOISE),
        ("enable_ddim_eta_scheduling", "ddim_eta_schedule", "Wan's sampler has no eta"),
        ("enable_ancestral_eta_scheduling", "ancestral_eta_schedule", "Wan's sampler has no eta"),
    ):
        r.add(enable, IGNORED, note)
        r.add(schedule, IGNORED, note, live=r.on(enable))
    r.ignore(("noise_schedule", "noise_type"), _NO_NOISE)
    perlin = r.text("noise_type").lower() == "perlin"
    r.ignore(("perlin_w", "perlin_h", "perlin_octaves", "perlin_persistence"), _NO_NOISE, live=perlin)
    r.add("contrast_schedule", IGNORED, "Wan applies no per-frame contrast")
    r.add("amount_schedule", IGNORED, "Wan applies no anti-blur sharpening")
    blur = not _same(r.value("amount_schedule"), 0)  # amount 0: Deforum's anti-blur is off
    r.ignore(("kernel_schedule", "sigma_schedule", "threshold_schedule"), "Wan applies no anti-blur sharpening",
             live=blur)
    r.ignore(("tiling", "restore_faces"), "Wan renders its frames as they are (no tiling, no face restoration)")
    r.add("reroll_blank_frames", IGNORED, "Wan does not re-roll blank frames")
    r.add("reroll_patience", IGNORED, "Wan does not re-roll blank frames", live=r.text("reroll_blank_frames") != "ignore")
    r.add("motion_preview_mode", IGNORED, "Wan always renders the full frames (no motion preview)")
    r.ignore("keyframe_distribution", "Wan renders every frame", present_only=True)
    r.ignore(("freeu_enabled", "kohya_hrfix_enabled"), "an SD/Flux UNet patch; Wan has none", present_only=True)


_MATCH = {"RGB", "HSV", "LAB"}


def _color(r: _Report) -> None:
    value = r.text("color_coherence")
    space = value.split()[-1] if value.startswith("Match Frame 0 ") else value
    if value in ("", "None"):
        r.add("color_coherence", MAPPED, "colour matching off")
    elif space in _MATCH:
        r.add("color_coherence", MAPPED, f"each clip matched to frame 0 (or the init image) in {space}")
    elif value == "Image":
        r.add("color_coherence", MAPPED, "matched to color_coherence_image_path")
    else:
        r.add("color_coherence", IGNORED, f"{value} needs an input video, which Wan does not follow")
    r.when("color_coherence_image_path", value == "Image", USED, "the image every clip's colours are matched to",
           "read only with color_coherence Image")
    r.add("color_coherence_video_every_N_frames", IGNORED, "Wan follows no input video",
          live=value == "Video Input")
    r.add("color_force_grayscale", IGNORED, "frames keep their colours (ask for black and white in the prompt)")
    r.add("legacy_colormatch", IGNORED, "colour matching has one method", live=value not in ("", "None"))


def _cadence(r: _Report) -> None:
    cadence = _norm(r.value("diffusion_cadence"))
    cadence = cadence if isinstance(cadence, float) else 1.0
    r.add("diffusion_cadence", IGNORED, "Wan diffuses every frame, as cadence 1 does (only the seed sequence "
                                        "follows it, as Deforum's does)", reference=1)
    flow = r.set("optical_flow_cadence")
    r.add("optical_flow_cadence", IGNORED, "Wan has no cadence frames to blend", live=cadence > 1)
    r.add("cadence_flow_factor_schedule", IGNORED, "Wan has no cadence frames to blend", live=cadence > 1 and flow)
    r.add("optical_flow_redo_generation", IGNORED, "Wan renders each clip once (no optical-flow redo)")
    r.add("redo_flow_factor_schedule", IGNORED, "Wan renders each clip once", live=r.set("optical_flow_redo_generation"))
    r.add("diffusion_redo", IGNORED, "Wan renders each clip once (no redo passes)")


def _inputs(r: _Report) -> None:
    """Hybrid video, video input, masks, guided images, ControlNet (features Wan does not have) and Parseq."""
    hybrid = r.moving and (r.set("hybrid_composite") or r.set("hybrid_motion"))
    r.add("hybrid_composite", IGNORED, "Wan does not composite a hybrid video", live=r.moving)
    r.add("hybrid_motion", IGNORED, "Wan does not follow a hybrid video's motion", live=r.moving)
    extra = [k for k in r.raw if isinstance(k, str) and k.startswith("hybrid_") and k not in DEFORUM_DEFAULTS]
    r.ignore((*_HYBRID, *extra), "part of hybrid video, which Wan does not do", live=hybrid)
    video = r.mode == "Video Input"
    for key in _VIDEO_INPUT:  # Video Input mode reads them (core/video_input.py), the mask path with use_mask_video
        read = video and key != "overwrite_extracted_frames" and (key != "video_mask_path" or r.on("use_mask_video"))
        r.add(key, *((USED, "the source (or mask) video and Deforum's extraction, restyled frame for frame") if read
                     else (IGNORED, "read in Video Input mode at each render (the mask path with use_mask_video)")),
              live=read or (video or hybrid) and "mask" not in key)
    r.add("use_mask", IGNORED, "Wan renders whole frames: no inpainting masks")
    r.ignore(_MASK, "no mask files or mask adjustments in Wan", live=r.on("use_mask") or r.on("use_mask_video"))
    r.add("use_noise_mask", IGNORED, "Wan renders whole frames: no noise masks")
    r.add("noise_mask_schedule", IGNORED, "Wan renders whole frames: no noise masks", live=r.on("use_noise_mask"))
    for key, (status, note) in LOOP_NOTES.items():  # guided images: core/guided.py maps each key
        r.add(key, status, note, live=key == "use_looper" or r.on("use_looper") and r.mode in ("2D", "3D"))
    for i in range(1, 6):
        model = r.text(f"cn_{i}_model")
        named = f" ({model})" if model not in ("", "None") else ""
        r.add(f"cn_{i}_enabled", IGNORED, f"ControlNet unit {i}{named} has no Wan equivalent")
    pq = r.settings.parseq  # core/parseq.py: what the manifest drives; its two switches read as Deforum reads them
    for key in ("parseq_manifest", "parseq_use_deltas", "parseq_non_schedule_overrides"):
        r.when(key, bool(pq), USED, pq.describe() if pq and key.endswith("manifest") else "as in Deforum", "none")


def _init(r: _Report) -> None:
    use = r.settings.use_init
    r.add("use_init", USED, "the first clip starts from init_image (I2V, or VACE's first frame)")
    r.when("init_image", use, USED, "the first clip's start image", "use_init is off")
    r.add("strength", MAPPED, STRENGTH_NOTE, live=use)
    r.add("strength_0_no_init", IGNORED, "without an init image the first clip starts from text", live=not use)


def _output(r: _Report) -> None:
    r.add("batch_name", USED, "the output folder's name ({timestring} and other {keys} filled in)")
    r.add("resume_from_timestring", USED, "continues the render named by resume_timestring")
    r.when("resume_timestring", r.settings.resume_from_timestring, USED, "the render to continue",
           "resume_from_timestring is off")
    sound = r.settings.add_soundtrack
    r.add("add_soundtrack", USED, {"File": "soundtrack_path is added to the mp4", "Init Video": "video_init_path's "
                                   "audio is added to the mp4, from its start, as Deforum"}.get(sound, "no soundtrack"))
    r.when("soundtrack_path", sound == "File", USED, "the mp4's soundtrack (file or URL)", "add_soundtrack is not File")
    r.add("skip_video_creation", MAPPED, "no mp4, frames only" + ("" if r.on("skip_video_creation") else " (if true)"))
    for key in ("ffmpeg_crf", "ffmpeg_preset"):
        r.add(key, MAPPED, "mp4 encoding (libx264 -crf/-preset)")
    r.ignore(("ffmpeg_mode", "ffmpeg_outdir"), "the mp4 is made by Deforum Wan's own encoder, beside the frames",
             present_only=True)
    r.add("make_gif", IGNORED, "no GIF is made (the mp4 is)")
    r.add("delete_imgs", IGNORED, "the frames are kept (a resume needs them)")
    r.add("r_upscale_video", IGNORED, "no Real-ESRGAN upscale (render at a larger size instead)")
    r.ignore(_UPSCALE, "no Real-ESRGAN upscale", live=r.on("r_upscale_video"))
    r.add("frame_interpolation_engine", IGNORED, "no RIFE/FILM pass: Wan's frames already fill every output frame")
    r.ignore(_FRAME_INTERPOLATION, "no RIFE/FILM pass", live=r.set("frame_interpolation_engine"))


def _wan(r: _Report) -> None:
    for key in r.settings.wan:
        first = _WAN_FIRST.get(key)
        if key in _WAN_READ and first and wan_option(r.settings, first) is not None:
            r.add(key, IGNORED, f"{first} is set and wins")
        elif key in _WAN_READ:
            read = key != "wan_prompts" or bool(r.settings.wan[key])  # prompts.py skips an empty wan_prompts
            r.when(key, read, USED, _WAN_READ[key], "empty: prompts are rendered")
        else:
            r.add(key, IGNORED, _WAN_IGNORED.get(key, "not an option Deforum Wan reads"))


_GROUPS: tuple[Callable[[_Report], None], ...] = (_prompts, _timeline, _seeds, _camera, _diffusion, _color, _cadence,
                                                    _inputs, _init, _output, _wan)


def key_report(settings: DeforumSettings, motion: str = "words") -> KeyReport:
    """Every covered Deforum key of `settings`: used, mapped (to what) or ignored (why); `motion` is the plan's."""
    report = _Report(settings, motion)
    for group in _GROUPS:
        group(report)
    return KeyReport(tuple(report.entries))


def format_key_report(report: KeyReport, changed_only: bool = False) -> str:
    """The report as a table grouped by status; `*` marks a value set away from Deforum's default."""
    counts = ", ".join(f"{len(report.by_status(s))} {s}" for s in STATUSES)
    lines = [f"Deforum keys: {counts}; {len(report.warnings)} set but ignored (* = not Deforum's default)"]
    for status in STATUSES:
        rows = [e for e in report.by_status(status) if e.changed or not changed_only]
        if not rows:
            continue
        width = min(max(len(e.key) for e in rows), 34)
        lines += ["", f"{status}:"]
        for e in rows:
            lines.append(f" {'*' if e.changed else ' '} {e.key:<{width}}  {_show(e.value, 28):<28}  {e.note}")
    if report.warnings:
        lines += ["", "warnings:"] + [f"  {w}" for w in report.warnings]
    return "\n".join(lines)
