"""The render loop: a ClipPlan becomes frames, settings, a plan file and an mp4.

It loads the model once per job, renders clip after clip (T2V or I2V first, then
I2V from the last frame or VACE from the last K frames), drops the repeated
overlap at each join, matches colours to the previous clip, resamples onto the
output timeline and hands frames to a background writer as soon as a clip is
decoded. Everything it reports goes through one `on_event(dict)` callback that the
CLI, the worker, the web UI and the API share.

Resume: frames are written atomically and each clip's last Wan frames are kept
beside them, so a render killed at any moment continues from its last complete
frame with the same seeds and the same continuity as if it had never stopped.

Previews: every `preview_every`th denoising step a small image made from the
latents (preview.py, no VAE decode) is written beside the frames under a hidden name and
announced as {"type": "preview", "clip", "step", "steps", "path"}; it is removed
when the render ends.
"""
from __future__ import annotations

import errno
import logging
import os
import queue
import random
import shutil
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import outputs
from . import preview
from .conditioning import ColorAnchor, check_images, render_clip
from .errors import RenderError
from .frames import resample
from .kept_images import pin_outputs
from .pipelines import Interrupted
from ..core.plan import Clip, ClipPlan, PlanOptions, plan_clips
from ..core.seeds import resolve_seed
from ..core.settings import DeforumSettings
from ..core.specs import I2V, ModelSpec
from ..core.video_input import with_source

log = logging.getLogger(__name__)

EventCallback = Callable[[dict], None]


@dataclass(frozen=True)
class RenderJob:
    """Everything one render needs; JSON-able so the worker process can receive it."""

    settings: DeforumSettings
    model: str  # model folder, or a name/kind under models_dir
    outdir: str = "outputs"
    options: PlanOptions = PlanOptions()
    i2v_model: str | None = None
    models_dir: str | None = None
    resume: str | None = None  # timestring to continue
    device: str | None = None
    memory_profile: str = "auto"
    storage: str = "auto"  # transformer weights: auto (fp8 when that avoids offloading), none, fp8
    attention: str = "auto"
    compile: bool = False
    vae_tiling: bool = False
    stop_file: str | None = None
    make_video: bool = True
    enhance: bool = False
    enhance_options: dict = field(default_factory=dict)
    preview_every: int = preview.DEFAULT_EVERY  # a latent preview every N denoising steps; 0: none
    depth_model: str | None = None  # depth model folder, or a name under <models_dir>/depth/ (guide depth warping)
    gpus: tuple[int, ...] = ()  # several: one clip across these GPUs (renderer/parallel.py); one: that GPU
    context_parallel: str = "ulysses"  # with several gpus: ulysses or ring attention across them
    # The GPU group the queue pinned this job to ("2,3", physical ids as in DEFORUM_WAN_GPUS); the worker process
    # sees them as cuda:0..n-1 (CUDA_VISIBLE_DEVICES) and splits each clip across all of them. None: not pinned.
    gpu_group: str | None = None


@dataclass(frozen=True)
class RenderResult:
    status: str  # done | interrupted
    folder: Path
    timestring: str
    frames_on_disk: int
    frames_total: int
    video: Path | None
    plan: ClipPlan
    pipeline_seconds: float  # time inside diffusers calls
    wall_seconds: float
    load_seconds: float  # importing the libraries and loading the model
    encode_seconds: float  # writing the mp4
    model_loads: int
    warnings: tuple[str, ...] = ()


class Stopped(Exception):
    """Raised inside the loop when a stop was asked for between steps or clips."""


class _Writer:
    """Writes frames on a background thread so the next clip renders meanwhile."""

    def __init__(self, folder: Path, timestring: str, on_written: Callable[[int, Path], None]):
        self.folder, self.timestring, self.on_written = folder, timestring, on_written
        self.queue: queue.Queue = queue.Queue(maxsize=256)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="deforum-wan-writer", daemon=True)
        self.thread.start()

    def put(self, index: int, frame: np.ndarray) -> None:
        if self.error:
            raise RenderError(f"writing frames to {self.folder} failed: {self.error}") from self.error
        self.queue.put((index, frame))

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            index, frame = item
            try:
                path = outputs.write_frame(self.folder, self.timestring, index, frame)
                self.on_written(index, path)
            except BaseException as exc:  # reported on the next put() or close()
                self.error = exc

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error:
            raise RenderError(f"writing frames to {self.folder} failed: {self.error}") from self.error


def _same_layout(a: ClipPlan, b: ClipPlan) -> bool:
    key = lambda p: [(c.output_start, c.output_end, c.num_frames, c.mode, c.seed, c.sources,  # noqa: E731
                      c.kept, c.keep_scale) for c in p.clips]
    return (a.width, a.height, a.max_frames) == (b.width, b.height, b.max_frames) and key(a) == key(b)


def _unused_timestring(outdir: str, settings: DeforumSettings) -> tuple[str, Path]:
    """A timestring no other render in the batch folder uses: two jobs started in the same
    second with a fixed batch_name must not write into each other's frames.

    The settings file is created exclusively to take it, so two renders started at
    once (GPU groups, farm machines on one shared folder) cannot both get it.
    """
    now = time.time()
    for offset in range(3600):
        timestring = outputs.new_timestring(now + offset)
        folder = outputs.batch_dir(outdir, settings, timestring)
        if outputs.settings_file(folder, timestring).exists() or outputs.existing_frames(folder, timestring):
            continue
        folder.mkdir(parents=True, exist_ok=True)
        try:
            outputs.settings_file(folder, timestring).open("x").close()
        except FileExistsError:
            continue
        return timestring, folder
    raise RenderError(f"no free timestring in {folder}")


def prepare(job: RenderJob, spec: ModelSpec, extra_modes: tuple[str, ...],
            source: Any = None) -> tuple[DeforumSettings, ClipPlan, Path | None, str | None, bool]:
    """Seed and plan for a job, with its folder and timestring on resume (the saved plan checked against a
    re-plan); a new render's are None: `render` takes them once the checks that write nothing have passed.
    `source` is Video Input's opened source video (renderer/source_video.py), else None."""
    settings = job.settings
    resume = job.resume
    if not resume and settings.resume_from_timestring and settings.resume_timestring:
        resume = settings.resume_timestring
    saved, folder, timestring = None, None, None
    if resume:
        timestring = outputs.check_timestring(resume)
        folder = outputs.batch_dir(job.outdir, settings, timestring)
        plan_path = outputs.plan_file(folder, timestring)
        if not folder.is_dir():
            raise RenderError(f"cannot resume {timestring}: no folder {folder}")
        if plan_path.is_file():
            saved = ClipPlan.from_json(plan_path.read_text(encoding="utf-8"))
    seed = job.options.seed
    if seed is None:
        seed = saved.seed if saved is not None else resolve_seed(settings.seed, random.Random())
    video = source.source if source is not None else None  # Video Input: the probed source video
    options = replace(job.options, seed=seed, extra_modes=tuple(extra_modes), video=video)
    plan = plan_clips(settings, spec, options)
    if saved is not None:
        if not _same_layout(plan, saved):
            raise RenderError(
                f"cannot resume {timestring}: the settings or options changed since it started "
                "(clips, sizes or seeds differ); render it anew or restore the settings"
            )
        plan = plan.with_prompts({c.index: c.enhanced_prompt for c in saved.clips if c.enhanced_prompt})
    # Deforum saves the seed it actually used, so a re-render of the saved file matches.
    settings = replace(settings, seed=seed) if settings.seed == -1 else settings
    settings = with_source(settings, video) if video is not None else settings  # as Deforum saves max_frames
    return settings, plan, folder, timestring, saved is not None


def render(
    job: RenderJob,
    *,
    on_event: EventCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    pipelines: Any = None,
) -> RenderResult:
    """Render `job`; returns when done or stopped. Frames already on disk are kept and skipped.

    `pipelines` may be passed in (already loaded, or a function that loads them when
    a clip needs them; the caller frees either); otherwise the model is loaded
    once, only if some clip still needs rendering, and freed at the end. A render
    that fails before its first frame removes the folder it made (there is
    nothing to resume); a full disk raises DiskFullError, which a resume fixes
    once space is free.
    """
    from .models import find_model

    started = time.perf_counter()
    emit = on_event or (lambda event: None)
    info = find_model(job.model, job.models_dir)
    i2v_info = find_model(job.i2v_model, job.models_dir) if job.i2v_model else None
    extra_modes = tuple(i2v_info.spec.modes) if i2v_info else ()
    if info.kind == "ti2v-5b":
        extra_modes += (I2V,)
    from .source_video import open_source

    source = open_source(job.settings)  # Video Input: the source (and mask) video, read and checked first
    try:
        settings, plan, folder, timestring, resumed = prepare(job, info.spec, extra_modes, source)
        depth = _depth(job, settings, plan.motion)  # a depth model that is not there fails before anything is written
        if folder is None or timestring is None:
            timestring, folder = _unused_timestring(job.outdir, job.settings)
    except BaseException:
        if source is not None:
            source.close()
        raise
    # A folder that holds nothing but the settings file taken for this render is new too.
    new_folder = not folder.exists() or (not resumed and [p.name for p in folder.iterdir()]
                                         == [outputs.settings_file(folder, timestring).name])
    try:
        speedups = _speedups(plan, info, job.models_dir)  # a LoRA that cannot be used fails before any load
        check_images(plan, settings)  # and so does an image that cannot be read
        return _render_prepared(job, info, i2v_info, settings, plan, folder, timestring, resumed, emit=emit,
                                should_stop=should_stop, pipelines=pipelines, started=started, speedups=speedups,
                                depth=depth, source=source)
    except Exception as exc:
        if not resumed:
            _clean_failed_start(folder, timestring, new_folder, emit)
        full = _disk_full(exc, folder, timestring)
        if full is not None:
            raise full from exc
        raise
    finally:
        if source is not None:
            source.close()  # its readers and downloaded copies


def _render_prepared(job: RenderJob, info: Any, i2v_info: Any, settings: DeforumSettings, plan: ClipPlan, folder: Path,
                     timestring: str, resumed: bool, *, emit: EventCallback, should_stop: Callable[[], bool] | None,
                     pipelines: Any, started: float, speedups: Any, depth: Any = None,
                     source: Any = None) -> RenderResult:
    stop_file = Path(job.stop_file) if job.stop_file else None

    def stopping() -> bool:
        return bool((should_stop and should_stop()) or (stop_file and stop_file.exists()))

    warnings = list(plan.warnings)
    folder.mkdir(parents=True, exist_ok=True)
    outputs.remove_stale_temp_files(folder)
    preview_files = preview.PreviewFiles(folder, timestring)
    preview_files.remove()  # left by a killed run
    preview_every = max(0, int(job.preview_every or 0))
    showing = {"preview": False}  # the last image announced is a preview (removed at the end), not a frame

    if depth is not None:
        depth.emit = emit
    if job.enhance and not resumed:
        from ..enhance.rewrite import enhance_plan  # frees its model before the video model loads

        emit({"type": "status", "phase": "enhancing", "message": "enhancing prompts"})
        plan = enhance_plan(plan, settings, job.enhance_options, emit)
    outputs.save_settings(settings, folder, timestring)
    outputs.save_json(outputs.plan_file(folder, timestring), plan.to_dict())

    done = outputs.contiguous_frames(folder, timestring)
    total = plan.max_frames
    emit({
        "type": "start", "folder": str(folder), "timestring": timestring, "clips": len(plan.clips),
        "frames_total": total, "frames_on_disk": done, "resumed": resumed, "width": plan.width,
        "height": plan.height, "model": info.name, "model_kind": info.kind,
    })
    for w in warnings:
        emit({"type": "warning", "message": w})

    written = {"count": done, "last": None}
    lock = threading.Lock()

    def on_written(index: int, path: Path) -> None:
        with lock:
            written["count"] += 1
            written["last"] = str(path)

    pending = [c for c in plan.clips if c.output_end > done]
    loads = 0
    load_seconds = encode_seconds = 0.0
    pipeline_seconds = 0.0
    status = "done"
    own_pipelines = pipelines is None
    writer = _Writer(folder, timestring, on_written)
    step_times: list[float] = []
    steps_total = sum(c.steps for c in pending)
    steps_done = 0
    try:
        if pending and (pipelines is None or callable(pipelines)):
            from .loading import load_pipelines

            emit({"type": "status", "phase": "loading", "message": f"loading {info.name}"})
            load_start = time.perf_counter()
            pipelines = pipelines() if callable(pipelines) else load_pipelines(
                info, device=job.device, memory_profile=job.memory_profile, attention=job.attention,
                compile=job.compile, i2v_info=i2v_info, vae_tiling=job.vae_tiling, storage=job.storage,
            )
            loads += 1
            load_seconds = time.perf_counter() - load_start
            emit({"type": "status", "phase": "loaded", "message": f"{info.name}: attention {pipelines.attention}, "
                  f"memory profile {pipelines.memory_profile}, {pipelines.device}"})
        if pending:
            speedups.apply(pipelines, emit)
        previous_tail: np.ndarray | None = None
        anchor = ColorAnchor(plan, settings, folder, timestring)
        for clip in pending:
            if stopping():
                raise Stopped()
            tail = previous_tail if clip.index > 0 else None
            if clip.index > 0 and tail is None:
                tail = _resume_tail(plan, clip, folder, timestring, emit)
            emit({"type": "clip", "clip": clip.index, "clips": len(plan.clips), "mode": clip.mode,
                  "output_start": clip.output_start, "output_end": clip.output_end, "seed": clip.seed,
                  "prompt": clip.render_prompt})
            clip_start = time.perf_counter()
            last_step = [clip_start]

            def on_step(step: int, steps: int, _clip: Clip = clip) -> bool:
                nonlocal steps_done
                now = time.perf_counter()
                step_times.append(now - last_step[0])
                last_step[0] = now
                steps_done += 1
                median = float(np.median(step_times[-20:]))
                emit({"type": "step", "clip": _clip.index, "clips": len(plan.clips), "step": step, "steps": steps,
                      "eta_seconds": round(median * max(steps_total - steps_done, 0), 1),
                      "frames_written": written["count"], "frames_total": total})
                return not stopping()

            def on_preview(step: int, steps: int, image: np.ndarray, _clip: Clip = clip) -> None:
                path = preview_files.write(image)  # projected by the pipelines with the VAE's fitted map
                if path is not None:
                    showing["preview"] = True
                    emit({"type": "preview", "clip": _clip.index, "step": step, "steps": steps, "path": str(path)})

            speedups.clip(clip)
            frames = render_clip(pipelines, plan, clip, tail, settings, on_step,
                                  on_preview if preview_every else None, preview_every, depth, source)
            pipeline_seconds += time.perf_counter() - clip_start
            frames = anchor.match(clip, frames)
            previous_tail = next_tail(plan, clip, frames)
            outputs.save_tail(folder, timestring, clip.index, previous_tail)
            out = pin_outputs(clip, frames, _onto_timeline(plan, clip, frames))  # guided images shown as given
            for offset, frame in enumerate(out):
                index = clip.output_start + offset
                if index >= done:
                    writer.put(index, frame)
            emit({"type": "frames", "clip": clip.index, "frames_written": written["count"], "frames_total": total,
                  "preview": str(folder / outputs.frame_name(timestring, clip.output_end - 1))})
            showing["preview"] = False
    except (Stopped, Interrupted, KeyboardInterrupt):
        status = "interrupted"
    except BaseException:
        writer.close()  # whatever was rendered stays on disk
        raise
    finally:
        speedups.close()
        if depth is not None:
            depth.free()
        if own_pipelines and pipelines is not None:
            pipelines.free()
        preview_files.remove()
    writer.close()

    on_disk = outputs.contiguous_frames(folder, timestring)
    if showing["preview"]:  # stopped mid-clip: point the viewers at the newest frame, not the removed preview
        emit({"type": "preview", "clip": None, "step": None, "steps": None,
              "path": str(folder / outputs.frame_name(timestring, on_disk - 1)) if on_disk else None})
    video = None
    if status == "done" and job.make_video and not plan.video:
        emit({"type": "warning", "message": "no mp4: the settings ask for none (skip_video_creation)"})
    if status == "done" and job.make_video and plan.video:
        emit({"type": "status", "phase": "encoding", "message": f"encoding {outputs.video_file(folder, timestring).name}"})
        encode_start = time.perf_counter()
        notes: list[str] = []
        wanted = source.soundtrack(settings) if source is not None else outputs.soundtrack_of(settings)
        soundtrack = outputs.local_soundtrack(wanted, folder, timestring, notes)
        try:
            video, encoded = outputs.stitch_video(folder, timestring, settings.fps, total, soundtrack=soundtrack,
                                                  crf=plan.crf, preset=plan.ffmpeg_preset)
        finally:
            if soundtrack and soundtrack != wanted:
                Path(soundtrack).unlink(missing_ok=True)  # the fetched copy
        notes += encoded
        encode_seconds = time.perf_counter() - encode_start
        warnings += notes
        for note in notes:
            emit({"type": "warning", "message": note})
    if status == "done":
        # Every frame is on disk (and the video, if asked for): nothing will continue from the tails.
        shutil.rmtree(outputs.tails_dir(folder, timestring), ignore_errors=True)
    result = RenderResult(
        status=status, folder=folder, timestring=timestring, frames_on_disk=on_disk, frames_total=total,
        video=video, plan=plan, pipeline_seconds=pipeline_seconds, wall_seconds=time.perf_counter() - started,
        load_seconds=load_seconds, encode_seconds=encode_seconds, model_loads=loads, warnings=tuple(warnings),
    )
    emit({"type": "done" if status == "done" else "interrupted", "folder": str(folder), "timestring": timestring,
          "frames_on_disk": on_disk, "frames_total": total, "video": str(video) if video else None,
          "resume": None if status == "done" else f"--resume {timestring}"})
    return result


def _onto_timeline(plan: ClipPlan, clip: Clip, frames: np.ndarray) -> np.ndarray:
    """The clip's output frames: Wan frames as they are, with motion-compensated in-betweens (timing
    interpolate) or crossfades (timing blend) where an output frame falls between two."""
    if plan.timing != "interpolate":
        return resample(frames, clip.sources)
    from .interpolate import InterpolationError, motion_resample

    try:
        return motion_resample(frames, clip.sources)
    except InterpolationError as exc:
        raise RenderError(f"clip {clip.index}: the in-between frames could not be made ({exc}); the frames so far "
                          "are kept: resume once ffmpeg works, or choose timing blend or nearest") from exc


def next_tail(plan: ClipPlan, clip: Clip, frames: np.ndarray) -> np.ndarray:
    """The Wan frames the next clip continues from: those up to the last frame shown, not the surplus
    after it (unless the clip shows fewer frames than the next one repeats: then the first ones)."""
    keep = _tail_length(plan, clip)
    end = max(clip.tail_end, min(keep, len(frames)))
    return frames[max(0, end - keep):end]


def _tail_length(plan: ClipPlan, clip: Clip) -> int:
    """How many of this clip's last frames the next clip continues from."""
    following = [c for c in plan.clips if c.index == clip.index + 1]
    return max(1, following[0].overlap) if following else 1


def _resume_tail(plan: ClipPlan, clip: Clip, folder: Path, timestring: str, emit: EventCallback) -> np.ndarray | None:
    """The previous clip's last Wan frames after a restart: saved tails, else the last frame on disk."""
    if clip.overlap == 0:
        return None
    tail = outputs.load_tail(folder, timestring, clip.index - 1, max(clip.overlap, 1))
    if tail is not None:
        return tail
    from PIL import Image

    last = folder / outputs.frame_name(timestring, clip.output_start - 1)
    if not last.is_file():
        raise RenderError(f"cannot continue clip {clip.index}: neither its saved tail nor frame {clip.output_start - 1} is on disk")
    emit({"type": "warning", "message": f"clip {clip.index} continues from output frame {clip.output_start - 1} "
          "(the previous clip's saved Wan frames are missing)"})
    frame = np.asarray(Image.open(last).convert("RGB"))
    return np.repeat(frame[None], clip.overlap, axis=0)


def _depth(job: RenderJob, settings: DeforumSettings, motion: str) -> Any:
    """The job's depth model, checked now, loaded at the first guide that uses it; None without one."""
    if not job.depth_model:
        return None
    from .depth import DepthModelError, LazyDepth, depth_wanted

    try:
        return LazyDepth(job.depth_model, job.models_dir, job.device, depth_wanted(settings, motion))
    except DepthModelError as exc:
        raise RenderError(str(exc)) from None


def _speedups(plan: ClipPlan, info: Any, models_dir: str | None) -> Any:
    from .loras import LoraError
    from .speedups import Speedups

    try:
        return Speedups(plan, getattr(info, "path", None), models_dir)
    except LoraError as exc:
        raise RenderError(str(exc)) from None


def _clean_failed_start(folder: Path, timestring: str, new_folder: bool, emit: EventCallback) -> None:
    """A render that failed before its first frame leaves nothing to resume: remove what it wrote."""
    try:
        if outputs.existing_frames(folder, timestring):
            return
        outputs.settings_file(folder, timestring).unlink(missing_ok=True)
        outputs.plan_file(folder, timestring).unlink(missing_ok=True)
        shutil.rmtree(outputs.tails_dir(folder, timestring), ignore_errors=True)
        outputs.remove_stale_temp_files(folder)
        if new_folder:
            try:
                folder.rmdir()  # only if empty: another render may share a fixed batch folder
            except OSError:
                pass
    except OSError:
        log.debug("cleaning %s after a failed start", folder, exc_info=True)
        return
    emit({"type": "warning", "message": f"the render failed before its first frame; removed its settings and plan "
          f"from {folder}" + (" and the folder" if new_folder and not folder.exists() else "")})


class DiskFullError(RenderError):
    """The disk filled up. Not the settings' fault: free space and resume (the frames on disk are kept)."""


_DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _disk_full(exc: BaseException, folder: Path, timestring: str) -> DiskFullError | None:
    """A DiskFullError if `exc` (or what it wraps) is a full disk or quota."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, DiskFullError):
            return None
        code = seen.errno if isinstance(seen, OSError) and seen.errno in _DISK_FULL_ERRNOS else None
        if code is None and os.strerror(errno.ENOSPC) in str(seen):  # e.g. ffmpeg's own message
            code = errno.ENOSPC
        if code is not None:
            return DiskFullError(f"{os.strerror(code)} while writing to {folder}: free some space, then resume "
                                 f"{timestring} (the frames on disk are kept)")
        seen = seen.__cause__ or seen.__context__
    return None
