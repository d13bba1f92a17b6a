"""One clip across several GPUs: torch.distributed ranks with diffusers' context parallelism.

`--gpus 0,1` (API `gpus`, the tab's GPUs box) makes the worker a launcher: it starts
torch's own launcher (`python -m torch.distributed.run`, i.e. torchrun) with one
process per GPU, each running `deforum-wan worker JOB.json` as a rank. Every rank
loads the model on its GPU and turns on diffusers' context parallelism on the
transformer(s) (`ContextParallelConfig` + `enable_parallelism`, diffusers >= 0.36):
each denoising step splits the video's tokens across the ranks and Ulysses (or ring)
attention exchanges them, so all ranks compute the same clip together and end with
the same frames. Rank 0 runs the ordinary render (renderer/render.py) and is the only
one that writes frames, tails, the plan and events; the other ranks follow the same
clips with the same seeds and inputs and write nothing (`follow`).

Stops are agreed on: every step each rank's stop wish (signal, stop file) is reduced
across ranks, so all stop at the same step and nobody waits in a collective for a
rank that has left. A rank that dies is torchrun's to notice: it ends the others and
exits non-zero, and the launcher turns its report into one error naming the rank;
the frames on disk stay and `--resume` continues (service/torchrun.py is the launcher).
torch and diffusers are imported inside the functions.
"""
from __future__ import annotations

import contextlib
import os
import re
from dataclasses import replace
from datetime import timedelta
from typing import Any, Callable, Iterator, Sequence

from .errors import RenderError

CP_MODES = ("ulysses", "ring")
# A collective that waits longer than this ends the job (a rank that hangs without dying). Generous:
# rank 0 writes frames and encodes between clips while the others wait at the next clip's first step.
COLLECTIVE_TIMEOUT = timedelta(minutes=10)
_GPUS = re.compile(r"^\s*\d{1,3}\s*(,\s*\d{1,3}\s*)*$")


class ParallelError(RenderError):
    """A multi-GPU request that cannot run as asked (bad list, ring on CPU, a step cache...)."""


def parse_gpus(value: Any, field: str = "gpus") -> tuple[int, ...]:
    """"0,1" (or [0, 1]) -> (0, 1); None or "" -> (). Device indices, each once."""
    if value is None or value == "" or value == []:
        return ()
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ParallelError(f"{field}: expected GPU indices such as [0, 1], got {value!r}")
        ids = tuple(value)
    elif isinstance(value, str) and _GPUS.match(value):
        ids = tuple(int(part) for part in value.split(","))
    else:
        raise ParallelError(f"{field}: expected GPU indices separated by commas, such as 0,1, got {value!r}")
    if any(i < 0 or i > 255 for i in ids):
        raise ParallelError(f"{field}: GPU indices are 0-255, got {value!r}")
    if len(set(ids)) != len(ids):
        raise ParallelError(f"{field}: each GPU once, got {value!r}")
    return ids


def check_request(gpus: Sequence[int], device: str | None, cp: str = "ulysses", cache: str | None = None,
                  memory_profile: str | None = None) -> None:
    """Refuse, before anything starts, what several ranks cannot do."""
    if len(gpus) < 2:
        return
    if memory_profile == "experts":
        raise ParallelError("memory profile experts puts an A14B model's two experts on two GPUs in one process; "
                            "with gpus every GPU runs both experts on its share of the clip: choose one of the two")
    if cp not in CP_MODES:
        raise ParallelError(f"context_parallel: choose one of {', '.join(CP_MODES)}, got {cp!r}")
    on_cpu = str(device or "").startswith("cpu")
    if device and not on_cpu and not str(device).startswith("cuda"):
        raise ParallelError(f"gpus: several ranks run on CUDA GPUs (or CPU ranks for testing), not on {device}")
    if device and ":" in str(device):
        raise ParallelError(f"gpus: give the GPUs with gpus alone, not also device {device!r}")
    if cp == "ring" and on_cpu:
        raise ParallelError("context_parallel ring needs an attention backend that returns the log-sum-exp "
                            "(flash-attn or cuDNN on CUDA); CPU attention does not: use ulysses on CPU ranks")
    if cache:
        # A step cache decides from each rank's own share of the tokens whether to skip a block; ranks that
        # decide differently would wait for each other in attention for ever.
        raise ParallelError(f"cache: step caches ({cache}) cannot run across several GPUs; drop --cache or --gpus")


def cp_config_args(world: int, heads: int, cp: str = "ulysses") -> dict[str, Any]:
    """ContextParallelConfig's arguments for `world` ranks over a transformer with `heads` attention heads.

    Ulysses splits the heads across ranks, so uneven heads (40 heads on 3 GPUs) need diffusers'
    `ulysses_anything`, which also takes token counts that do not divide evenly; ring splits the
    tokens only (`ring_anything` for uneven counts).
    """
    if world < 2:
        raise ParallelError("context parallelism needs at least two ranks")
    if cp == "ring":
        return {"ring_degree": world, "ring_anything": True}
    if cp != "ulysses":
        raise ParallelError(f"context_parallel: choose one of {', '.join(CP_MODES)}, got {cp!r}")
    return {"ulysses_degree": world, "ulysses_anything": heads % world != 0}


def in_rank() -> bool:
    """Whether this process is one of torchrun's ranks (torchrun sets these for each process it starts)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ and "RANK" in os.environ


def rank_device(device: str | None, local_rank: int) -> str:
    """This rank's device: its own GPU (torchrun's LOCAL_RANK within CUDA_VISIBLE_DEVICES), or the CPU."""
    return "cpu" if str(device or "").startswith("cpu") else f"cuda:{local_rank}"


@contextlib.contextmanager
def _cpu_accelerator_count() -> Iterator[None]:
    """diffusers' `_resolve_parallel_config` places each rank on `rank % torch.accelerator.device_count()`,
    which divides by zero on a machine without an accelerator. CPU ranks are part of the product (the
    multi-GPU path, gloo instead of NCCL, runs and is checked on any machine), so for the length of
    `enable_parallelism` alone, and only when there is no accelerator, the count reads 1: index 0 of
    device type cpu, which is the CPU."""
    import torch

    if torch.accelerator.device_count() > 0:
        yield
        return
    original = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.accelerator.device_count = original  # type: ignore[assignment]


def _cp_plan(transformer: Any) -> dict | None:
    """The context-parallel plan: diffusers' own for Wan (`WanTransformer3DModel._cp_plan`, diffusers 0.42
    transformer_wan.py); for VACE, which has none, the same split plus the control branch's first block
    (`vace_blocks.0` takes the tokens and the control tokens; the hints the VACE blocks return stay split
    and are added to the split tokens of the main blocks, see WanVACETransformer3DModel.forward)."""
    if getattr(transformer, "_cp_plan", None) is not None:
        return None
    if type(transformer).__name__ != "WanVACETransformer3DModel":
        raise ParallelError(f"{type(transformer).__name__} has no context-parallel plan in this diffusers")
    from diffusers.models._modeling_parallel import ContextParallelInput
    from diffusers.models.transformers.transformer_wan import WanTransformer3DModel

    plan = dict(WanTransformer3DModel._cp_plan)
    plan["vace_blocks.0"] = {
        "hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False),
        "control_hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False),
    }
    return plan


def enable_context_parallel(pipelines: Any, world: int, cp: str = "ulysses") -> list[Any]:
    """Turn on context parallelism on every transformer of the job's pipelines; returns them."""
    from diffusers import ContextParallelConfig

    transformers: list[Any] = []
    for pipe in pipelines.pipes():
        for key in ("transformer", "transformer_2"):
            module = getattr(pipe, key, None)
            if module is not None and all(module is not t for t in transformers):
                transformers.append(module)
    for transformer in transformers:
        if cp == "ring" and getattr(pipelines, "attention", "native") != "flash":
            transformer.set_attention_backend("_native_cudnn")  # SDPA's cuDNN kernel returns the log-sum-exp
        heads = int(transformer.config.num_attention_heads)
        config = ContextParallelConfig(**cp_config_args(world, heads, cp))
        with _cpu_accelerator_count():
            transformer.enable_parallelism(config=config, cp_plan=_cp_plan(transformer))
    return transformers


class Ranks:
    """This process's place among the ranks, and the few collectives the render needs."""

    def __init__(self, device: str | None):
        import torch
        import torch.distributed as dist

        self.rank, self.world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        self.local_rank = int(os.environ["LOCAL_RANK"])
        self.device = rank_device(device, self.local_rank)
        backend = "gloo" if self.device == "cpu" else "nccl"
        if backend == "nccl":
            torch.cuda.set_device(self.local_rank)
        dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
        self.backend = backend
        self._flag = torch.zeros(1, dtype=torch.int32, device=self.device)

    def agree_stop(self, wish: bool) -> bool:
        """True on every rank when any rank wants to stop; called at the same points on every rank."""
        import torch.distributed as dist

        self._flag.fill_(1 if wish else 0)
        dist.all_reduce(self._flag, op=dist.ReduceOp.MAX)
        return bool(self._flag.item())

    def share(self, value: Any) -> Any:
        """Rank 0's `value` on every rank."""
        import torch.distributed as dist

        box = [value if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def close(self) -> None:
        import torch.distributed as dist

        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def run_rank(job: Any, emit: Callable[[dict], None], should_stop: Callable[[], bool]) -> str:
    """This rank's part of a multi-GPU render: "done", "interrupted" (rank 0 emits the events)."""
    from pathlib import Path

    from .loading import load_pipelines
    from .models import find_model

    check_request(parse_gpus(job.gpus), job.device, job.context_parallel, job.options.cache, job.memory_profile)
    ranks = Ranks(job.device)
    stop_file = Path(job.stop_file) if job.stop_file else None

    def stopping() -> bool:
        return ranks.agree_stop(bool(should_stop() or (stop_file and stop_file.exists())))

    loaded: list[Any] = []

    def load() -> Any:
        """Every rank loads the model on its device once a clip needs it (after rank 0's prompt rewrite)."""
        info = find_model(job.model, job.models_dir)
        i2v_info = find_model(job.i2v_model, job.models_dir) if job.i2v_model else None
        loaded.append(load_pipelines(info, device=ranks.device, memory_profile=job.memory_profile,
                                     attention=job.attention, compile=job.compile, i2v_info=i2v_info,
                                     vae_tiling=job.vae_tiling, storage=job.storage))
        enable_context_parallel(loaded[0], ranks.world, job.context_parallel)
        pids = ranks.gather({"rank": ranks.rank, "pid": os.getpid(), "device": ranks.device})
        emit({"type": "status", "phase": "loaded", "ranks": pids, "backend": ranks.backend,
              "context_parallel": job.context_parallel,
              "message": f"{ranks.world} ranks ({ranks.backend}), {job.context_parallel} attention"})
        return loaded[0]

    try:
        if ranks.rank == 0:
            return _lead(job, load, ranks, emit, stopping)
        return follow(job, load, ranks, stopping)
    finally:
        if loaded:
            loaded[0].free()
        ranks.close()


def _lead(job: Any, load: Callable[[], Any], ranks: Ranks, emit: Callable[[dict], None],
          stopping: Callable[[], bool]) -> str:
    """Rank 0: the ordinary render; at its start event the others learn the folder and frames on disk."""
    from .render import render

    shared = {"done": False}

    def on_event(event: dict) -> None:
        if event.get("type") == "start" and not shared["done"]:
            shared["done"] = True
            ranks.share({"folder": event["folder"], "timestring": event["timestring"],
                         "frames_on_disk": int(event["frames_on_disk"])})
        emit(event)

    try:
        result = render(replace(job, stop_file=None), on_event=on_event, should_stop=stopping, pipelines=load)
    except BaseException as exc:
        if not shared["done"]:  # the others wait for the start: tell them there is none
            shared["done"] = True
            ranks.share({"error": f"{type(exc).__name__}: {exc}"})
        raise
    return result.status


def follow(job: Any, load: Callable[[], Any], ranks: Ranks, stopping: Callable[[], bool]) -> str:
    """Ranks 1..N-1: the clips rank 0 renders, computed alongside it, nothing written.

    The plan, seeds and prompts are rank 0's, read back from the plan and tails it saved (the
    same way a resume reads them); each clip gets the same inputs and the same continuity."""
    from pathlib import Path

    from . import render as r
    from .conditioning import ColorAnchor, render_clip
    from .models import find_model
    from .pipelines import Interrupted

    start = ranks.share(None)
    if "error" in start:  # rank 0 could not start and reports why; this rank ends cleanly, so torchrun names rank 0
        return "interrupted"
    info = find_model(job.model, job.models_dir)
    i2v_info = find_model(job.i2v_model, job.models_dir) if job.i2v_model else None
    extra = tuple(i2v_info.spec.modes) if i2v_info else ()
    if info.kind == "ti2v-5b":
        extra += ("i2v",)
    settings, plan, folder, timestring, _ = r.prepare(replace(job, resume=start["timestring"]), info.spec, extra)
    folder = Path(start["folder"])
    done = start["frames_on_disk"]
    pending = [c for c in plan.clips if c.output_end > done]
    if not pending:
        return "done"
    pipelines = load()  # where rank 0 loads too: the same clips are pending on both
    speedups = r._speedups(plan, info, job.models_dir)
    depth = r._depth(job, settings, plan.motion)
    anchor = ColorAnchor(plan, settings, folder, timestring)
    quiet: Callable[[dict], None] = lambda event: None  # noqa: E731
    previous = None
    try:
        speedups.apply(pipelines, quiet)
        if depth is not None:
            depth.emit = quiet
        for clip in pending:
            if stopping():
                return "interrupted"
            tail = previous if clip.index > 0 else None
            if clip.index > 0 and tail is None:
                tail = r._resume_tail(plan, clip, folder, timestring, quiet)
            speedups.clip(clip)
            frames = render_clip(pipelines, plan, clip, tail, settings, lambda step, steps: not stopping(),
                                 None, 0, depth)
            previous = r.next_tail(plan, clip, anchor.match(clip, frames))
    except Interrupted:
        return "interrupted"
    finally:
        speedups.close()
        if depth is not None:
            depth.free()
    return "done"
