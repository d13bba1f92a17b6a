"""Which torch the worker runs on: the host's when it can run the renderer, else a private one.

Stock Automatic1111 1.10 installs torch 2.1.2 and Forge torch 2.3.1. The
renderer's diffusers (0.42: `torch.accelerator`, Wan's `torch.nn.RMSNorm`) and
transformers 5 need torch >= 2.6, so on a stock host the worker gets its own
torch, installed into the extension's private folder and never into the host's
site-packages. On a host whose torch is new enough, that torch is reused and no
second copy is downloaded.

The facts come from files and `nvidia-smi`, never from importing torch: this
runs inside the web UI's process at start-up.
"""
from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

ENV_TORCH = "DEFORUM_WAN_TORCH"  # a pip requirement ("torch==2.8.0"), "host" to insist on the host's, or "auto"
ENV_TORCH_INDEX = "DEFORUM_WAN_TORCH_INDEX_URL"  # the index that requirement comes from

# diffusers 0.42 calls torch.accelerator (torch 2.6) and transformers 5 refuses torch < 2.6.
MIN_TORCH = (2, 6)
# The private torch: the newest release with wheels for CUDA 12.6 (GPUs sm_50..sm_90), CUDA 12.8
# (sm_70..sm_120, needed by Blackwell) and CPU, for Python 3.10 to 3.14.
PRIVATE_TORCH = "2.9.1"
# PyTorch's own index, the one the web UI's TORCH_INDEX_URL points into.
TORCH_INDEX = "https://download.pytorch.org/whl"
# CUDA 12 wheels need at least this driver (NVIDIA's CUDA compatibility table: 525.60.13 on Linux,
# 528.33 on Windows); older drivers cannot run any torch >= 2.6 from PyPI or PyTorch's index.
MIN_DRIVER = {"linux": (525, 60), "win32": (528, 33)}


@dataclass(frozen=True)
class Gpu:
    name: str
    capability: tuple[int, int] | None  # compute capability, e.g. (8, 9)
    driver: str | None
    memory_mib: int | None


@dataclass(frozen=True)
class HostTorch:
    """What the host has: its torch (if any), the build it is, and the GPUs the driver sees."""

    version: str | None  # "2.1.2+cu121"
    cuda: str | None  # torch.version.cuda of that build
    hip: str | None  # torch.version.hip (ROCm builds)
    system: str = field(default_factory=lambda: sys.platform)  # linux | win32 | darwin
    machine: str = field(default_factory=lambda: platform.machine().lower())
    python: tuple[int, int] = field(default_factory=lambda: (sys.version_info[0], sys.version_info[1]))
    gpus: tuple[Gpu, ...] = ()
    path: str | None = None  # where the host's torch package lives


@dataclass(frozen=True)
class TorchChoice:
    """What the worker runs on, and why.

    mode: "host" (reuse the host's torch), "private" (install `requirement`
    from `index_url` into the private folder), or "unsupported" (nothing here
    can run the renderer; `reason` says what to do).
    """

    mode: str
    flavour: str  # host | cpu | cu126 | cu128 | rocm6.4 | mps | custom
    reason: str
    requirement: str | None = None
    index_url: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return {"mode": self.mode, "flavour": self.flavour, "reason": self.reason,
                "requirement": self.requirement, "index_url": self.index_url}


def version_tuple(version: str | None) -> tuple[int, ...]:
    """(2, 1, 2) for "2.1.2+cu121"; () when there is no version."""
    if not version:
        return ()
    numbers = re.match(r"^\s*(\d+(?:\.\d+)*)", version)
    return tuple(int(n) for n in numbers.group(1).split(".")) if numbers else ()


def choose_torch(host: HostTorch, override: str | None = None, override_index: str | None = None) -> TorchChoice:
    """The worker's torch for `host` (pure: the facts in, the decision out)."""
    if override and override.strip().lower() == "host":
        if host.version is None:
            return TorchChoice("unsupported", "host", f"{ENV_TORCH}=host, but this python has no torch")
        return TorchChoice("host", "host", f"{ENV_TORCH}=host: the host's torch {host.version} is used as it is")
    if override:
        where = f" from {override_index}" if override_index else ""
        return TorchChoice("private", "custom", f"{ENV_TORCH} asks for {override.strip()}{where}",
                           override.strip(), override_index or None)
    have = version_tuple(host.version)
    need = ".".join(map(str, MIN_TORCH))
    if have and have[:2] >= MIN_TORCH:
        return TorchChoice("host", "host", f"the host's torch {host.version} is new enough (>= {need}): reused")
    why = (f"the host's torch {host.version} is older than {need}" if host.version
           else "this python has no torch") + " (diffusers 0.42 and transformers 5 need torch >= " + need + ")"
    return _private(host, why)


def _private(host: HostTorch, why: str) -> TorchChoice:
    if host.system == "darwin":
        flavour = "mps" if host.machine in ("arm64", "aarch64") else "cpu"
        return TorchChoice("private", flavour, f"{why}; macOS: PyPI's torch (Metal on Apple silicon)",
                           f"torch=={PRIVATE_TORCH}")
    if host.gpus:  # listed by nvidia-smi, so an NVIDIA driver is there
        return _cuda(host, list(host.gpus), why)
    if host.hip and host.system == "linux":
        return TorchChoice("private", "rocm6.4", f"{why}; the host's torch is a ROCm {host.hip} build",
                           f"torch=={PRIVATE_TORCH}+rocm6.4", f"{TORCH_INDEX}/rocm6.4")
    gpu_note = "no NVIDIA GPU found (nvidia-smi lists none)"
    if host.system == "linux" and host.machine in ("x86_64", "amd64"):
        return TorchChoice("private", "cpu", f"{why}; {gpu_note}: the CPU build",
                           f"torch=={PRIVATE_TORCH}+cpu", f"{TORCH_INDEX}/cpu")
    # Windows and Linux on ARM: PyPI's own torch is the CPU build there.
    return TorchChoice("private", "cpu", f"{why}; {gpu_note}: PyPI's CPU build", f"torch=={PRIVATE_TORCH}")


def _cuda(host: HostTorch, gpus: list[Gpu], why: str) -> TorchChoice:
    names = ", ".join(sorted({g.name for g in gpus if g.name})) or "an NVIDIA GPU"
    driver = next((g.driver for g in gpus if g.driver), None)
    low = MIN_DRIVER.get(host.system)
    if driver and low and version_tuple(driver)[:2] < low:
        return TorchChoice("unsupported", "cuda",
                           f"{why}; {names} has driver {driver}, and every torch >= 2.6 needs CUDA 12 "
                           f"(driver {low[0]}.{low[1]} or newer): update the NVIDIA driver, or set {ENV_TORCH} "
                           f"and {ENV_TORCH_INDEX} to a build that runs on it")
    caps = [g.capability for g in gpus if g.capability]
    if caps and min(caps) < (5, 0):
        return TorchChoice("unsupported", "cuda", f"{why}; {names} (compute capability "
                           f"{min(caps)[0]}.{min(caps)[1]}) is older than any current torch supports")
    # CUDA 12.6 wheels cover sm_50..sm_90; Blackwell (sm_100, sm_120) needs the CUDA 12.8 build.
    flavour = "cu128" if caps and max(caps) >= (10, 0) else "cu126"
    cap_note = (f"compute capability {max(caps)[0]}.{max(caps)[1]}" if caps else "compute capability unknown")
    return TorchChoice("private", flavour, f"{why}; {names} ({cap_note}, driver {driver or 'unknown'}): CUDA "
                       f"{flavour[2:4]}.{flavour[4:]} build", f"torch=={PRIVATE_TORCH}+{flavour}",
                       f"{TORCH_INDEX}/{flavour}")


# --------------------------------------------------------------------------- reading the host


def _torch_build(path: str | None) -> dict[str, str | None]:
    """__version__, cuda and hip from torch/version.py, read as text (importing torch takes seconds)."""
    found: dict[str, str | None] = {}
    if not path:
        return found
    try:
        with open(os.path.join(path, "version.py"), encoding="utf-8") as fh:
            tree = ast.parse(fh.read())
    except (OSError, SyntaxError, ValueError):
        return found
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else getattr(
            node, "target", None)
        if isinstance(target, ast.Name) and target.id in ("__version__", "cuda", "hip"):
            try:
                value = ast.literal_eval(node.value) if node.value is not None else None
            except ValueError:
                continue
            found[target.id] = value if isinstance(value, str) else None
    return found


def _nvidia_gpus(timeout: float = 10.0) -> tuple[Gpu, ...]:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return ()
    fields_ = "name,compute_cap,driver_version,memory.total"
    try:
        out = subprocess.run([exe, f"--query-gpu={fields_}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return ()
    if out.returncode != 0:  # older drivers do not know compute_cap: ask without it
        try:
            out = subprocess.run([exe, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.SubprocessError):
            return ()
        rows = [[c.strip() for c in line.split(",")] for line in out.stdout.splitlines() if line.strip()]
        return tuple(Gpu(r[0], None, r[1] if len(r) > 1 else None, _int(r[2] if len(r) > 2 else None)) for r in rows)
    gpus = []
    for line in out.stdout.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 4:
            continue
        cap = version_tuple(cells[1])
        gpus.append(Gpu(cells[0], (cap[0], cap[1]) if len(cap) >= 2 else None, cells[2] or None, _int(cells[3])))
    return tuple(gpus)


def _int(text: str | None) -> int | None:
    try:
        return int(float(text)) if text else None
    except ValueError:
        return None


def read_host_torch(gpus: bool = True) -> HostTorch:
    """The running python's torch (without importing it) and the NVIDIA GPUs its driver lists."""
    try:
        version = importlib.metadata.version("torch")
    except Exception:
        version = None
    path = None
    if version is not None:
        try:
            spec = importlib.util.find_spec("torch")
            if spec is not None and spec.submodule_search_locations:
                path = list(spec.submodule_search_locations)[0]
        except (ImportError, ValueError):
            path = None
    build = _torch_build(path)
    return HostTorch(version=build.get("__version__") or version, cuda=build.get("cuda"), hip=build.get("hip"),
                     gpus=_nvidia_gpus() if gpus else (), path=path)


def override_from_environment() -> str | None:
    """DEFORUM_WAN_TORCH, with "auto" (or nothing) meaning: let choose_torch decide."""
    value = (os.environ.get(ENV_TORCH) or "").strip()
    return None if value in ("", "auto") else value


def choice_from_environment(host: HostTorch | None = None) -> TorchChoice:
    """choose_torch for this python, honouring DEFORUM_WAN_TORCH and DEFORUM_WAN_TORCH_INDEX_URL."""
    return choose_torch(host or read_host_torch(), override_from_environment(), os.environ.get(ENV_TORCH_INDEX) or None)
