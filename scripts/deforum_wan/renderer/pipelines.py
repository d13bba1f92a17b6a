"""The thin layer between the renderer and diffusers: one call renders one clip.

`Pipelines` holds the diffusers pipelines loaded once by `loading.load_pipelines`
and is reused for every clip of a job. Each per-mode method (t2v / i2v / vace)
takes one `ClipRequest` of plain values (prompt, size, frame count, seed, the
start image or known frames, ...) and returns the clip as one uint8 array
[F, H, W, 3], so nothing above this layer touches torch or diffusers.

Interrupts: `on_step(step, total)` is called after every denoising step. When it
returns False (or raises `Interrupted` itself) the clip stops between steps and
the method raises `Interrupted`; a method only returns frames for a finished
clip. Raising, rather than setting diffusers' `_interrupt` flag, skips the VAE
decode of a half-denoised clip, which is the slow part the user wants to avoid.

Previews: with `on_preview` and `preview_every` > 0, every `preview_every`th step
(and the last) hands `on_preview(step, total, image)` a small picture of the
current prediction of the finished clip: its middle latent frame, projected to
uint8 RGB [H, W, 3] (the clip's aspect, at most preview.MAX_SIDE on its long side)
by the map fitted from the pipeline's own VAE (`preview_map`, once per load). If
that fit fails, the job renders without previews after one warning.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import types
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from . import preview
from .memory import apply_memory_profile

if TYPE_CHECKING:  # pragma: no cover
    import PIL.Image
    import torch

    from .models import ModelInfo

log = logging.getLogger(__name__)

StepCallback = Callable[[int, int], "bool | None"]
PreviewCallback = Callable[[int, int, np.ndarray], None]


_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "UniPCMultistepScheduler")  # what presets may switch to


class Interrupted(Exception):
    """Raised when `on_step` asked to stop; the clip was not finished and has no frames."""

    def __init__(self, step: int, total: int) -> None:
        super().__init__(f"interrupted after step {step} of {total}")
        self.step = step
        self.total = total


class ModeError(ValueError):
    """The loaded model cannot render the requested clip mode (e.g. VACE on a T2V model)."""


@dataclass(frozen=True, eq=False)
class ClipRequest:
    """Everything one clip's pipeline call needs, in plain values.

    The first eight fields apply to every mode. The conditioning fields are read
    by the mode that uses them: `image` (required) and `last_image` by i2v,
    `known_frames` (the frames the clip continues from; may be empty) by vace.
    `guidance_2` is the low-noise expert's guidance scale; models with one
    expert ignore it. `on_preview` gets a preview image every `preview_every` steps (0: never).
    """

    prompt: str
    negative_prompt: str | None
    num_frames: int
    width: int
    height: int
    steps: int
    guidance: float
    seed: int
    flow_shift: float | None = None
    on_step: StepCallback | None = None
    guidance_2: float | None = None
    image: np.ndarray | PIL.Image.Image | None = None
    last_image: np.ndarray | PIL.Image.Image | None = None
    known_frames: np.ndarray | Sequence[Any] | None = None
    on_preview: PreviewCallback | None = None
    preview_every: int = 0
    scheduler: str | None = None  # a diffusers scheduler class for this call (a speed preset's), else the model's
    scheduler_options: tuple[tuple[str, Any], ...] = ()  # its keyword arguments, e.g. stochastic_sampling
    guide_frames: np.ndarray | Sequence[Any] | None = None  # vace: pictures for the frames after the known ones
    conditioning_scale: float | None = None  # vace: weight of the known frames and the guide (1.0: VACE's default)
    guide_masks: Sequence[Any] | None = None  # vace: per guide frame, [H, W] uint8 (255 generate, 0 keep); None: 255
    keep_at: tuple[tuple[int, Any], ...] = ()  # vace: (clip frame, image) pairs given and kept, e.g. guided images


def patch_prompt_cleaning() -> None:
    """Let Wan's I2V/VACE pipelines run without the optional `ftfy` package.

    diffusers (0.42 and its main branch) guards `ftfy.fix_text` in pipeline_wan.py
    but calls it unconditionally in the I2V, VACE and video-to-video pipelines, so
    they fail with NameError when ftfy is not installed. Without ftfy we only skip
    its mojibake repair; html unescaping and whitespace cleanup still run.
    """
    import importlib

    for name in ("pipeline_wan_i2v", "pipeline_wan_vace", "pipeline_wan_video2video"):
        try:
            module = importlib.import_module(f"diffusers.pipelines.wan.{name}")
        except ImportError:
            continue
        if not hasattr(module, "ftfy"):
            module.ftfy = types.SimpleNamespace(fix_text=lambda text: text)  # type: ignore[attr-defined]


def to_uint8_frames(frames: Any) -> np.ndarray:
    """diffusers' np output (float in [0, 1], [B, F, H, W, 3] or [F, H, W, 3]) -> uint8 [F, H, W, 3]."""
    array = np.asarray(frames)
    if array.ndim == 5:
        array = array[0]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"expected frames shaped [F, H, W, 3], got {array.shape}")
    if array.dtype == np.uint8:
        return array
    return (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def to_pil(image: Any, width: int, height: int) -> PIL.Image.Image:
    """An HxWx3 array (uint8, or float in [0, 1]) or PIL image -> RGB PIL image of the clip's size."""
    import PIL.Image

    if isinstance(image, PIL.Image.Image):
        pil = image.convert("RGB")
    else:
        array = np.asarray(image)
        if array.ndim == 3 and array.shape[-1] == 4:
            array = array[..., :3]
        if array.ndim != 3 or array.shape[-1] != 3:
            raise ValueError(f"expected an image shaped [H, W, 3], got {array.shape}")
        if array.dtype != np.uint8:
            array = (np.clip(array.astype(np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)
        pil = PIL.Image.fromarray(array, "RGB")
    if pil.size != (width, height):
        pil = pil.resize((width, height), PIL.Image.LANCZOS)
    return pil


def vace_conditioning(
    known_frames: np.ndarray | Sequence[Any], num_frames: int, width: int, height: int,
    guide_frames: np.ndarray | Sequence[Any] | None = None, guide_masks: Sequence[Any] | None = None,
    keep_at: Sequence[tuple[int, Any]] = (),
) -> tuple[list[PIL.Image.Image], list[PIL.Image.Image]]:
    """Video and mask for VACE, following WanVACEPipeline's documented recipe.

    Known frames come first and are kept (mask black, 0); the remaining frames are
    generated (mask white, 255): grey (128), or the guide's pictures (the motion guide,
    a source video), which VACE then takes as a hint; `guide_masks` narrow where each
    guide frame is regenerated (a Deforum mask video: white = change). `keep_at` puts
    given images at given clip frames and keeps them (guided images).
    """
    import PIL.Image

    known = [to_pil(frame, width, height) for frame in known_frames]
    if len(known) > num_frames:
        raise ValueError(f"{len(known)} known frames do not fit in a clip of {num_frames} frames")
    grey = PIL.Image.new("RGB", (width, height), (128, 128, 128))
    black = PIL.Image.new("L", (width, height), 0)
    white = PIL.Image.new("L", (width, height), 255)
    rest = num_frames - len(known)
    if guide_frames is None:
        video, mask = known + [grey] * rest, [black] * len(known) + [white] * rest
    else:
        if len(guide_frames) != rest:
            raise ValueError(f"{len(guide_frames)} guide frames for the {rest} frames after the known ones")
        video = known + [to_pil(frame, width, height) for frame in guide_frames]
        mask = [black] * len(known) + [white] * rest
    if guide_masks is not None:
        if len(guide_masks) != rest:
            raise ValueError(f"{len(guide_masks)} guide masks for the {rest} frames after the known ones")
        mask[len(known):] = [_mask_image(m, width, height) for m in guide_masks]
    for at, image in keep_at:
        if not 0 <= at < num_frames:
            raise ValueError(f"a kept frame at {at} is outside the clip's {num_frames} frames")
        video[at], mask[at] = to_pil(image, width, height), black
    return video, mask


def _mask_image(mask: Any, width: int, height: int) -> PIL.Image.Image:
    """An [H, W] (or [H, W, 3]) array or PIL image -> an L mask of the clip's size, 255 where VACE generates."""
    import PIL.Image

    if isinstance(mask, PIL.Image.Image):
        pil = mask.convert("L")
    else:
        array = np.asarray(mask)
        if array.ndim == 3:
            array = array[..., :3].mean(axis=-1)
        if array.ndim != 2:
            raise ValueError(f"expected a mask shaped [H, W], got {array.shape}")
        pil = PIL.Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "L")
    return pil if pil.size == (width, height) else pil.resize((width, height), PIL.Image.NEAREST)


@dataclass(eq=False)
class Pipelines:
    """Loaded diffusers pipelines for one job, built by `loading.load_pipelines`.

    `main` is the pipeline of the chosen model folder. `image` is the pipeline for
    I2V clips when that is not `main`: for TI2V-5B it is a WanImageToVideoPipeline
    over the same components; for a T2V/VACE model it is another I2V folder loaded
    with the text encoder, tokenizer and VAE shared.
    """

    info: ModelInfo
    main: Any
    image: Any = None
    image_info: ModelInfo | None = None
    device: str = "cpu"
    dtype: Any = None
    memory_profile: str = "none"
    attention: str = "native"
    compiled: bool = False
    vae_tiling: bool = False
    max_sequence_length: int = 512  # prompt tokens; Wan uses 512, a tokenizer may declare fewer
    _active: Any = field(default=None, repr=False)
    _freed: bool = field(default=False, repr=False)
    _preview_maps: dict = field(default_factory=dict, repr=False)  # id(vae) -> its LatentRGB, None if the fit failed

    # -- what this object can do -------------------------------------------------

    @property
    def kind(self) -> str:
        return self.info.kind

    @property
    def modes(self) -> tuple[str, ...]:
        """Clip modes available: t2v / i2v / vace, from the pipelines actually loaded."""
        modes = []
        if self._t2v_pipe(required=False) is not None:
            modes.append("t2v")
        if self._i2v_pipe(required=False) is not None:
            modes.append("i2v")
        if _is_vace(self.main):
            modes.append("vace")
        return tuple(modes)

    def supports(self, mode: str) -> bool:
        return mode in self.modes

    # -- one clip per call --------------------------------------------------------

    def t2v(self, request: ClipRequest) -> np.ndarray:
        """Text to video: a uint8 array [num_frames, height, width, 3]."""
        return self._run(self._t2v_pipe(), {}, request)

    def i2v(self, request: ClipRequest) -> np.ndarray:
        """Image to video: the clip starts from `request.image` (usually the previous clip's last frame)."""
        pipe = self._i2v_pipe()
        if request.image is None:
            raise ValueError("an i2v clip needs a start image")
        extra: dict[str, Any] = {"image": to_pil(request.image, request.width, request.height)}
        if request.last_image is not None:
            extra["last_image"] = to_pil(request.last_image, request.width, request.height)
        with self._flf2v_single_image(pipe, request.last_image is None):
            return self._run(pipe, extra, request)

    def vace(self, request: ClipRequest) -> np.ndarray:
        """VACE continuation: the first len(request.known_frames) frames are given, the rest generated.

        The returned clip has num_frames frames and includes (the model's version of)
        the known frames at its start; the caller drops that overlap when joining.
        """
        if not _is_vace(self.main):
            raise ModeError(f"{self.info.name} ({self.info.kind}) is not a VACE model; it cannot continue clips")
        known = request.known_frames if request.known_frames is not None else []
        video, mask = vace_conditioning(known, request.num_frames, request.width, request.height, request.guide_frames,
                                        request.guide_masks, request.keep_at)
        extra: dict[str, Any] = {"video": video, "mask": mask}
        if request.conditioning_scale is not None:
            extra["conditioning_scale"] = float(request.conditioning_scale)
        return self._run(self.main, extra, request)

    # -- housekeeping -------------------------------------------------------------

    def pipes(self) -> list[Any]:
        """The distinct diffusers pipelines held (main first)."""
        found: list[Any] = []
        for pipe in (self.main, self.image):
            if pipe is not None and all(pipe is not other for other in found):
                found.append(pipe)
        return found

    def free(self) -> None:
        """Drop every model and return cached GPU memory; the object is unusable afterwards."""
        if self._freed:
            return
        for pipe in self.pipes():
            with contextlib.suppress(Exception):
                pipe.remove_all_hooks()
        self.main = None
        self.image = None
        self._active = None
        self._preview_maps.clear()
        self._freed = True
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
                torch.cuda.ipc_collect()
        except ImportError:  # pragma: no cover
            pass

    def preview_map(self, pipe: Any = None) -> preview.LatentRGB | None:
        """The latent -> RGB map of `pipe`'s VAE (main's by default), fitted or read from the cache once per load.

        None if that failed: one warning, and the job renders without previews.
        """
        pipe = self.main if pipe is None else pipe
        vae = getattr(pipe, "vae", None)
        if id(vae) not in self._preview_maps:
            try:
                if vae is None:
                    raise ValueError("the pipeline has no VAE")
                self._preview_maps[id(vae)] = preview.map_for_vae(vae, self.device)
            except Exception as exc:
                log.warning("live previews off: no latent -> RGB map from the VAE of %s (%s: %s)",
                            self.info.name, type(exc).__name__, exc)
                log.debug("preview map fit", exc_info=True)
                self._preview_maps[id(vae)] = None
            finally:
                with contextlib.suppress(Exception):
                    pipe.maybe_free_model_hooks()  # with per-model offload, the VAE goes back to the CPU
        return self._preview_maps[id(vae)]

    # -- internals ------------------------------------------------------------------

    def _check_alive(self) -> None:
        if self._freed:
            raise RuntimeError("these pipelines were freed; load the model again")

    def _t2v_pipe(self, required: bool = True) -> Any:
        self._check_alive()
        name = type(self.main).__name__
        if name in ("WanPipeline", "WanVACEPipeline"):
            return self.main
        if required:
            raise ModeError(f"{self.info.name} ({self.info.kind}) is an image-to-video model; it cannot render t2v")
        return None

    def _i2v_pipe(self, required: bool = True) -> Any:
        self._check_alive()
        if type(self.main).__name__ == "WanImageToVideoPipeline":
            return self.main
        if self.image is not None:
            return self.image
        if required:
            raise ModeError(
                f"{self.info.name} ({self.info.kind}) cannot render i2v clips; "
                "choose an I2V model for them or use a VACE model for continuation"
            )
        return None

    def _activate(self, pipe: Any) -> None:
        """Model/sequential offload hooks chain one pipeline's modules; re-hook when switching pipelines.

        Two pipelines share the text encoder and VAE, and diffusers' offload hooks
        belong to one pipeline, so the pipeline about to run gets them.
        """
        if self._active is pipe:
            return
        if self.memory_profile in ("model", "sequential") and self._active is not None:
            with contextlib.suppress(Exception):
                self._active.remove_all_hooks()
            apply_memory_profile(pipe, self.memory_profile, self.device)
        self._active = pipe

    @contextlib.contextmanager
    def _flow_shift(self, pipe: Any, flow_shift: float | None, scheduler: str | None = None,
                    options: tuple[tuple[str, Any], ...] = ()) -> Iterator[None]:
        """Use a scheduler with `flow_shift` (and a preset's scheduler class) for this call only; keep the model's
        otherwise."""
        if flow_shift is None and scheduler is None:
            yield
            return
        import diffusers

        original = pipe.scheduler
        config = original.config
        if scheduler is not None and scheduler not in _SCHEDULERS:
            raise ModeError(f"scheduler {scheduler!r} is not one of {', '.join(_SCHEDULERS)}")
        kind = getattr(diffusers, scheduler) if scheduler else type(original)
        extra = dict(options)
        if flow_shift is None:
            pipe.scheduler = kind.from_config(config, **extra)
        elif "flow_shift" in kind.from_config(config).config:
            pipe.scheduler = kind.from_config(config, **{**extra, "flow_shift": float(flow_shift)})
        elif "shift" in kind.from_config(config).config:
            pipe.scheduler = kind.from_config(config, **{**extra, "shift": float(flow_shift)})
        else:
            log.warning("scheduler %s has no flow shift; ignoring flow_shift=%s", type(original).__name__, flow_shift)
        try:
            yield
        finally:
            pipe.scheduler = original

    @contextlib.contextmanager
    def _flf2v_single_image(self, pipe: Any, single: bool) -> Iterator[None]:
        """FLF2V expects CLIP tokens of two images; with only a first frame, give it that image twice."""
        transformer = getattr(pipe, "transformer", None)
        pos_len = getattr(getattr(transformer, "config", None), "pos_embed_seq_len", None)
        if not single or pos_len is None or getattr(pipe, "image_encoder", None) is None:
            yield
            return
        original = pipe.encode_image

        def encode_twice(image: Any, device: Any = None) -> Any:
            return original([image, image] if not isinstance(image, list) else image, device)

        pipe.encode_image = encode_twice
        try:
            yield
        finally:
            del pipe.encode_image  # back to the class method

    def _run(self, pipe: Any, extra: dict[str, Any], request: ClipRequest) -> np.ndarray:
        import torch

        r = request
        self._check_sizes(pipe, r.num_frames, r.width, r.height, r.steps)
        self._activate(pipe)
        kwargs: dict[str, Any] = dict(
            prompt=r.prompt,
            negative_prompt=r.negative_prompt or None,
            num_frames=int(r.num_frames),
            width=int(r.width),
            height=int(r.height),
            num_inference_steps=int(r.steps),
            guidance_scale=float(r.guidance),
            # CPU generator: the same seed gives the same noise on any device.
            generator=torch.Generator(device="cpu").manual_seed(int(r.seed) % 2**64),
            output_type="np",
            return_dict=True,
            max_sequence_length=int(self.max_sequence_length),
        )
        if r.guidance_2 is not None and getattr(pipe.config, "boundary_ratio", None) is not None:
            kwargs["guidance_scale_2"] = float(r.guidance_2)
        on_preview = r.on_preview if r.preview_every > 0 else None
        rgb_map = self.preview_map(pipe) if on_preview is not None else None
        if rgb_map is None:
            on_preview = None
        if r.on_step is not None or on_preview is not None:
            kwargs["callback_on_step_end"] = _step_callback(r.on_step, int(r.steps), on_preview, int(r.preview_every),
                                                            rgb_map, (int(r.width), int(r.height)))
            kwargs["callback_on_step_end_tensor_inputs"] = ["latents"]
        kwargs.update(extra)
        with self._flow_shift(pipe, r.flow_shift, r.scheduler, r.scheduler_options):
            try:
                output = pipe(**kwargs)
            except Interrupted:
                with contextlib.suppress(Exception):
                    pipe.maybe_free_model_hooks()
                raise
        frames = to_uint8_frames(output.frames)
        if frames.shape[0] != r.num_frames:  # diffusers rounds bad counts with only a warning
            raise RuntimeError(f"asked for {r.num_frames} frames, the pipeline returned {frames.shape[0]}")
        return frames

    def _check_sizes(self, pipe: Any, num_frames: int, width: int, height: int, steps: int) -> None:
        """Fail early and clearly where diffusers would round silently or fail deep inside."""
        if num_frames < 1 or (num_frames - 1) % 4 != 0:
            raise ValueError(f"num_frames must be 4n+1 (1, 5, 9, ..., 81), got {num_frames}")
        multiple = self.info.spec.size_multiple
        if width % multiple or height % multiple or width <= 0 or height <= 0:
            raise ValueError(f"{self.info.label} needs width and height in multiples of {multiple}, got {width}x{height}")
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")


def _is_vace(pipe: Any) -> bool:
    return type(pipe).__name__ == "WanVACEPipeline"


def _step_callback(on_step: StepCallback | None, steps: int, on_preview: PreviewCallback | None = None,
                   every: int = 0, rgb_map: preview.LatentRGB | None = None,
                   size: tuple[int, int] | None = None) -> Callable[..., dict]:
    """Adapt on_step(step, total) -> bool, and the previews (projected with `rgb_map`), to callback_on_step_end."""
    failed = [False]

    def callback(pipe: Any, i: int, t: Any, callback_kwargs: dict) -> dict:
        total = int(getattr(pipe, "_num_timesteps", None) or steps)
        step = i + 1
        if on_step is not None and on_step(step, total) is False:
            raise Interrupted(step, total)
        if (on_preview is not None and rgb_map is not None and preview.due(step, total, every)
                and callback_kwargs.get("latents") is not None):
            try:
                latent = _preview_latent(pipe, callback_kwargs["latents"])
                on_preview(step, total, preview.preview_image(latent, rgb_map, size))
            except Exception as exc:  # a preview never stops a clip
                if not failed[0]:
                    log.warning("no preview at step %d: %s", step, exc, exc_info=True)
                failed[0] = True
        return {}

    return callback


def _preview_latent(pipe: Any, latents: Any) -> np.ndarray:
    """The middle frame of the scheduler's latest prediction of the clean latents, as float32 [C, h, w].

    `latents` are still noisy until the last step; UniPC (Wan's scheduler, with
    predict_x0) and DPM-Solver++ keep their latest clean prediction (x0) in
    `model_outputs`, the less noisy picture to preview. Other schedulers: the
    noisy latents. Only one frame leaves the device.
    """
    scheduler = getattr(pipe, "scheduler", None)
    config = getattr(scheduler, "config", {}) or {}
    x0 = latents
    holds_x0 = config.get("predict_x0", False) is True or str(config.get("algorithm_type", "")).endswith("dpmsolver++")
    outputs = getattr(scheduler, "model_outputs", None) if holds_x0 else None
    if outputs and outputs[-1] is not None and tuple(outputs[-1].shape) == tuple(latents.shape):
        x0 = outputs[-1]
    return preview.middle_frame(x0).detach().float().cpu().numpy()
