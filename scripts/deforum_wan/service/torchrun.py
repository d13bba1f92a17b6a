"""The worker of a multi-GPU job: torch's launcher (torchrun) starts one rank per GPU; this relays them.

`deforum-wan worker JOB.json` with several `gpus` becomes this launcher. It runs
`python -m torch.distributed.run --standalone --nproc-per-node N -m deforum_wan worker
RANKJOB.json` (CUDA_VISIBLE_DEVICES set to the job's GPUs), passes rank 0's JSON-line
events on unchanged, and turns a stop request (signal) into the stop file every rank
watches, so all ranks stop at the same step. torchrun owns failure handling: when a
rank dies it ends the others and reports the first failure; the launcher turns that
report into one error event naming the rank (error_type RankFailed, which the queue
counts RETRYABLE: the frames on disk stay and a resume continues). No torch import.
"""
from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TextIO

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
STOP_GRACE_SECONDS = 60.0  # after the stop file, SIGTERM to torchrun if the ranks have not stopped
_FAILURE = re.compile(r"rank\s*:\s*(\d+)\s*\(local_rank:\s*\d+\)\s*\n\s*exitcode\s*:\s*(-?\d+)\s*\(pid:\s*(\d+)\)")


def torchrun_command(job_path: str | Path, nproc: int, python: str | None = None) -> list[str]:
    """torch's own launcher: a local rendezvous, N processes, no restarts (a failed render is resumed, not rerun)."""
    return [python or sys.executable, "-s", "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
            "--nproc-per-node", str(nproc), "--max-restarts", "0", "--monitor-interval", "1",
            "-m", "deforum_wan", "worker", str(job_path)]


def torchrun_env(gpus: list[int], device: str | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The ranks' environment: their GPUs as CUDA_VISIBLE_DEVICES (each rank takes cuda:LOCAL_RANK)."""
    env = dict(os.environ if base is None else base)
    if not str(device or "").startswith("cpu"):
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
    if sys.flags.no_user_site:
        env["PYTHONNOUSERSITE"] = "1"  # torchrun starts the ranks with its own python, without our -s
    env["PYTHONUNBUFFERED"] = "1"
    return env


def failed_ranks(stderr: str) -> list[dict[str, int]]:
    """The failures torchrun reports ("rank : 1 (local_rank: 1) / exitcode : -9 (pid: 123)"): its root cause
    (the first it observed) first, then the others."""
    others, _, root = stderr.rpartition("Root Cause")
    if not _:
        others, root = stderr, ""
    found = [{"rank": int(m.group(1)), "exitcode": int(m.group(2)), "pid": int(m.group(3))}
             for text in (root, others) for m in _FAILURE.finditer(text)]
    return [f for i, f in enumerate(found) if f not in found[:i]]


def failure_message(failures: list[dict[str, int]], world: int, rank0_error: dict | None, where: dict) -> str:
    """One sentence for a multi-GPU job that ended without a result: which rank, how, what is kept."""
    def how(code: int) -> str:
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = "unknown signal"
            return f"died (signal {-code}, {name})"
        return f"exited with code {code}"

    killed = [f for f in failures if f["exitcode"] < 0 and f["rank"] != 0]
    first = killed[0] if killed else (failures[0] if failures else None)
    if first is not None and (first["rank"] != 0 or rank0_error is None):
        parts = [f"rank {first['rank']} of {world} (pid {first['pid']}) {how(first['exitcode'])}"]
        if rank0_error is not None and first["rank"] != 0:
            # rank 0's own error is the consequence (gloo/NCCL: the peer is gone); its text is in the traceback
            parts.append(f"rank 0 stopped with it ({rank0_error.get('error_type') or 'error'})")
    elif rank0_error is not None:
        parts = [str(rank0_error.get("message") or "rank 0 failed")]
    else:
        parts = [f"the {world} ranks stopped without a result (torchrun exit code {where.get('rc')})"]
    if where.get("folder") and where.get("timestring"):
        parts.append(f"the frames on disk are kept in {where['folder']}; resume with --resume {where['timestring']}")
    return "; ".join(parts)


def _parent_death_signal() -> None:  # pragma: no cover - runs in the child between fork and exec
    """torchrun gets SIGTERM when the launcher dies (Linux), and ends its ranks, instead of living on."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_launcher(job: dict[str, Any], gpus: list[int], out: TextIO | None, stop: threading.Event,
                 on_event: Callable[[dict], None] | None = None) -> int:
    """Run `job` across `gpus` under torchrun; rank 0's events go to `out`. Returns the worker's exit code."""
    def emit(event: dict) -> None:
        if out is not None:
            out.write(json.dumps(event, ensure_ascii=False, default=str) + "\n")
            out.flush()
        if on_event is not None:
            on_event(event)

    from ..renderer.parallel import check_request

    check_request(gpus, job.get("device"), job.get("context_parallel") or "ulysses",
                  (job.get("options") or {}).get("cache"), job.get("memory_profile"))
    with tempfile.TemporaryDirectory(prefix="deforum-wan-ranks-") as tmp:
        stop_file = Path(job.get("stop_file") or Path(tmp) / "stop")
        rank_job = {**job, "stop_file": str(stop_file), "gpus": list(gpus)}
        job_path = Path(tmp) / "job.json"
        job_path.write_text(json.dumps(rank_job, ensure_ascii=False, default=str), encoding="utf-8")
        argv = torchrun_command(job_path, len(gpus))
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, encoding="utf-8", errors="replace", env=torchrun_env(gpus, job.get("device")),
                                preexec_fn=_parent_death_signal if sys.platform.startswith("linux") else None)
        errors: collections.deque[str] = collections.deque(maxlen=400)

        def drain() -> None:
            for line in proc.stderr:  # type: ignore[union-attr]
                errors.append(line)
                sys.stderr.write(line)

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        finished = threading.Event()

        def watch() -> None:
            stop.wait()
            if finished.is_set():
                return
            try:
                stop_file.parent.mkdir(parents=True, exist_ok=True)
                stop_file.touch()
            except OSError:
                pass
            if not finished.wait(STOP_GRACE_SECONDS) and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # torchrun passes it on to the ranks, which stop at the next step

        threading.Thread(target=watch, daemon=True).start()
        final: dict | None = None
        rank0_error: dict | None = None
        where: dict[str, Any] = {}
        for line in proc.stdout:  # type: ignore[union-attr]
            try:
                event = json.loads(line)
            except ValueError:
                sys.stderr.write(line)
                continue
            if not isinstance(event, dict):
                continue
            if event.get("type") == "start":
                where.update(folder=event.get("folder"), timestring=event.get("timestring"))
            if event.get("type") == "error":
                rank0_error = event  # held back: torchrun's report says whether rank 0 is the cause
                continue
            if event.get("type") in ("done", "interrupted"):
                final = event
            emit(event)
        rc = proc.wait()
        finished.set()
        stop.set()  # ends the watcher
        reader.join(timeout=10)
    if final is not None and final.get("type") == "done" and rc == 0:
        return EXIT_OK
    if final is not None and final.get("type") == "interrupted" and rc == 0:
        return EXIT_INTERRUPTED
    failures = failed_ranks("".join(errors))
    where["rc"] = rc
    message = failure_message(failures, len(gpus), rank0_error, where)
    own = rank0_error is not None and not any(f["rank"] != 0 and f["exitcode"] < 0 for f in failures) and (
        not failures or failures[0]["rank"] == 0)
    if own:
        emit({**rank0_error, "message": message})  # type: ignore[dict-item]
    else:
        emit({"type": "error", "error_type": "RankFailed", "message": message, "failures": failures,
              "traceback": "".join(list(errors)[-12:])})
    return EXIT_FAILED


@dataclass(frozen=True)
class AcrossResult:
    """What `deforum-wan render --gpus` prints at the end, as render.RenderResult has it."""

    status: str  # done | interrupted
    folder: Path | None
    timestring: str | None
    frames_on_disk: int
    frames_total: int
    video: Path | None


def render_across(job: dict[str, Any], gpus: list[int], on_event: Callable[[dict], None]) -> AcrossResult:
    """`render --gpus 0,1`: the worker job's ranks under torchrun from the command line; Ctrl-C stops them cleanly."""
    from ..renderer.errors import RenderError

    stop = threading.Event()
    seen: dict[str, dict] = {}

    def track(event: dict) -> None:
        seen[str(event.get("type"))] = event
        if event.get("type") != "error":  # raised below, printed once
            on_event(event)

    handlers = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = run_launcher(job, gpus, None, stop, on_event=track)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if code == EXIT_FAILED:
        raise RenderError(str(seen.get("error", {}).get("message") or "the render across GPUs failed"))
    final = seen.get("done" if code == EXIT_OK else "interrupted", {})
    return AcrossResult(status="done" if code == EXIT_OK else "interrupted",
                        folder=Path(final["folder"]) if final.get("folder") else None,
                        timestring=final.get("timestring"), frames_on_disk=int(final.get("frames_on_disk") or 0),
                        frames_total=int(final.get("frames_total") or 0),
                        video=Path(final["video"]) if final.get("video") else None)
