"""GPU groups: which GPUs the queue renders on, one job per group at a time.

`DEFORUM_WAN_GPUS` (or the web UI's setting) names them: `0,1;2,3` is two
groups of two GPUs, `0;1;2;3` four groups of one. The queue runs one job per
group at once; each job's worker process sees only its group's GPUs
(CUDA_VISIBLE_DEVICES, which CUDA and PyTorch's ROCm builds both honour), so two
jobs never share a GPU, and the group's ids travel with the job (`gpu_group`) so a
group of several GPUs splits each clip across them (renderer/parallel.py). Empty means one group
that is not pinned: one job at a time on whatever the worker finds, as before.

Pure functions; nothing heavy is imported (this runs in the web UI's process).
"""
from __future__ import annotations

import os
import re
from typing import Mapping

ENV = "DEFORUM_WAN_GPUS"
VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"
# A device as CUDA_VISIBLE_DEVICES takes it: an index, or a GPU/MIG UUID as `nvidia-smi -L` prints it.
_DEVICE = re.compile(r"^(\d+|(GPU|MIG)-[0-9A-Za-z-]+)$")

Groups = tuple["str | None", ...]


def parse_gpu_groups(text: str | None, *, source: str = ENV) -> Groups:
    """`"0,1;2,3"` -> `("0,1", "2,3")`; empty -> `(None,)` (one unpinned group).

    A device may be in one group only (two jobs on one GPU is what groups prevent);
    errors name `source` and the bad part.
    """
    text = (text or "").strip()
    if not text:
        return (None,)
    groups: list[str] = []
    seen: dict[str, int] = {}
    for number, part in enumerate(text.split(";"), start=1):
        devices = [d.strip() for d in part.split(",")]
        if not part.strip() or any(not d for d in devices):
            raise ValueError(f"{source}: group {number} of {text!r} is empty; write groups as 0,1;2,3")
        for device in devices:
            if not _DEVICE.match(device):
                raise ValueError(f"{source}: {device!r} in group {number} is not a GPU index or GPU/MIG UUID")
            if device in seen:
                raise ValueError(f"{source}: GPU {device} is in group {seen[device]} and group {number}; "
                                 "a GPU may be in one group only")
            seen[device] = number
        groups.append(",".join(devices))
    return tuple(groups)


def configured_groups(setting: str | None = None, environ: Mapping[str, str] | None = None) -> Groups:
    """The groups from the web UI's setting when it is set, else from $DEFORUM_WAN_GPUS."""
    if setting and setting.strip():
        return parse_gpu_groups(setting, source="deforum_wan_gpus")
    env = os.environ if environ is None else environ
    return parse_gpu_groups(env.get(ENV), source=ENV)


def pin_env(gpus: str | None) -> dict[str, str]:
    """The environment that pins a worker process to `gpus` (nothing when the job is not pinned)."""
    if not gpus:
        return {}
    if len(parse_gpu_groups(gpus, source="job.gpu_group")) != 1:
        raise ValueError(f"job.gpu_group: {gpus!r} is several groups; a job runs on one")
    return {VISIBLE_ENV: gpus}


def group_gpus(gpu_group: str | None) -> tuple[int, ...]:
    """The devices a pinned job splits its clips across, as its worker process numbers them (cuda:0..n-1 of the
    group's CUDA_VISIBLE_DEVICES); () for an unpinned job or a group of one GPU (it renders there on its own)."""
    if not gpu_group:
        return ()
    groups = parse_gpu_groups(gpu_group, source="job.gpu_group")
    if len(groups) != 1:
        raise ValueError(f"job.gpu_group: {gpu_group!r} is several groups; a job runs on one")
    count = len(str(groups[0]).split(","))
    return tuple(range(count)) if count > 1 else ()
