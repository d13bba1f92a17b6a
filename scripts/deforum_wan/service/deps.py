"""The private folder of renderer libraries: newer diffusers/transformers beside the host's own.

Forge pins diffusers 0.31 and transformers 4.46 (no Wan pipelines), and gradio
3.x/4.x need huggingface_hub<1.0 while transformers 5 needs >=1.0, so the
renderer's libraries cannot go into the web UI's environment. They go into an
extension-private folder (default `<extension root>/.deps/`) that only the
worker process puts first on its `sys.path` (see bridge.py).

What goes in, and why:
- resolution: `pip install --dry-run --ignore-installed --report` of
  `requirements_for(python)`, with the host's torch stood in by an empty stub
  wheel of the same version, so pip picks versions that work with the host's
  torch and never looks at torch's own (huge) dependency tree;
- the torch: the host's when it can run the renderer (torchenv.py decides);
  then torch, torchvision, torchaudio, triton, nvidia-*, cuda-* are never
  installed (one torch, the host's). When the host's torch is too old (stock
  A1111 and Forge), a torch of the right flavour (CUDA, ROCm, CPU) is resolved
  together with the libraries and installed privately with everything it needs,
  and nothing is taken from the host;
- shared with the host: numpy, pillow and the packages the host's torch itself
  depends on (filelock, fsspec, typing-extensions, sympy, ...). The host's copy
  is kept when it satisfies every requirement of the new libraries; only when
  it truly does not is a newer copy installed privately (and the plan says so).
  Shadowing torch's own dependencies or numpy's ABI in the worker is what could
  break torch, so they are the ones we keep;
- everything else (huggingface_hub 1.x, tokenizers, safetensors, regex, ftfy,
  httpx, ...) is installed privately with `pip install --no-deps --target`,
  into a staging folder that replaces the old one only when complete;
- for the render farm ($DEFORUM_WAN_FARM, or `install-deps --farm`): Ray and its
  own protobuf, for each farm job's driver process (farmdriver.py).

A manifest (`deforum_wan_deps.json`) records the requirements, the Python, the
platform, what was installed and which host packages were relied on, so the
next start checks it in milliseconds and calls pip only when something changed.

Nothing heavy is imported here: this runs inside the web UI's process.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from . import installing, torchenv

MANIFEST = "deforum_wan_deps.json"
MANIFEST_FORMAT = 2  # 2: records the worker's torch
ENV_DEPS_DIR = "DEFORUM_WAN_DEPS_DIR"

# Tested sets. diffusers 0.42 and transformers >= 5.21 need Python >= 3.11. peft is diffusers' LoRA
# backend (load_lora_weights; diffusers 0.41/0.42 need >= 0.17), gguf reads GGUF checkpoints (>= 0.10);
# both are pure Python for 3.10 and newer.
_PINS: dict[str, dict[str, str]] = {
    "py310": {"diffusers": "0.41.0", "transformers": "5.20.2", "accelerate": "1.15.0", "peft": "0.21.2",
              "gguf": "0.19.0"},
    "newest": {"diffusers": "0.42.1", "transformers": "5.23.0", "accelerate": "1.15.0", "peft": "0.21.2",
               "gguf": "0.19.0"},
}
# What the Wan pipelines and the Qwen enhancer import beyond the pins above, and what this package's
# own core needs (pyproject's dependencies): the worker sees nothing of the host but its torch.
_COMMON = ["huggingface_hub>=1.0", "tokenizers>=0.22", "safetensors>=0.4.3", "ftfy>=6.0", "tqdm>=4.60", "regex",
           "numpy>=1.23", "numexpr>=2.8", "pillow>=9.0", "imageio-ffmpeg>=0.4.9"]

# The render farm's Ray driver runs in a worker-side process (farmdriver.py), so Ray goes in here, never into
# the host: it brings protobuf >= 3.20.3 (A1111 and Forge pin 3.20.0). As pyproject's [farm] extra.
FARM_REQUIREMENTS = ["ray>=2.60"]
ENV_FARM = "DEFORUM_WAN_FARM"  # farm.ENV_ADDRESS: set, this machine drives a farm and needs Ray

# Never installed privately: the worker uses the host's one torch.
_NEVER = re.compile(r"^(torch|torchvision|torchaudio|triton|pytorch[-_]triton.*|nvidia[-_].*|cuda[-_].*)$")
# Kept from the host when it satisfies the new libraries (torch's own deps are added from its metadata).
_SHARED_ALWAYS = {"numpy", "pillow"}
_TORCH_DEPS_FALLBACK = {"filelock", "typing-extensions", "fsspec", "sympy", "mpmath", "networkx", "jinja2",
                        "markupsafe", "setuptools"}

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def normalize(name: str) -> str:
    """PEP 503 name, so `Pillow`, `PyYAML` and `typing_extensions` compare as pip compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def extension_root() -> Path:
    return Path(__file__).resolve().parents[3]


def install_command() -> str:
    """The one command that fills the private folder, runnable from any folder (the web UI's included)."""
    installer = extension_root() / "install.py"
    if installer.is_file():
        return f'"{sys.executable}" "{installer}"'
    return f'"{sys.executable}" -m deforum_wan install-deps'


def deps_dir() -> Path:
    """Where the private libraries live: $DEFORUM_WAN_DEPS_DIR, else `<extension root>/.deps`.

    When the package is installed in site-packages rather than run from an
    extension checkout, a per-user cache folder is used instead.
    """
    env = os.environ.get(ENV_DEPS_DIR)
    if env:
        return Path(env).expanduser()
    here = Path(__file__).resolve()
    if here.parents[2].name == "scripts":
        return here.parents[3] / ".deps"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "deforum-wan" / f"deps-py{sys.version_info[0]}{sys.version_info[1]}"


def farm_wanted(manifest: dict | None = None) -> bool:
    """Whether Ray belongs in the folder: $DEFORUM_WAN_FARM is set, or it was installed once (it stays)."""
    return bool(os.environ.get(ENV_FARM, "").strip()) or bool((manifest or {}).get("farm"))


def requirements_for(python_version: Sequence[int], farm: bool = False) -> list[str]:
    """Pip requirements of the private folder for a Python (major, minor): the newest that Python can run;
    with `farm`, Ray too."""
    version = tuple(python_version[:2])
    if version < (3, 10):
        raise ValueError(f"Deforum Wan's renderer needs Python 3.10 or newer, not {'.'.join(map(str, version))}")
    pins = _PINS["py310"] if version < (3, 11) else _PINS["newest"]
    return [f"{name}=={v}" for name, v in pins.items()] + list(_COMMON) + (FARM_REQUIREMENTS if farm else [])


def _python_tag() -> dict[str, str]:
    return {
        "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
        "implementation": sys.implementation.name,
        "platform": sysconfig.get_platform(),
    }


def host_version(name: str) -> str | None:
    """The host environment's version of a distribution, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    except Exception:  # a broken dist-info must not stop the web UI
        return None


def _specifier_set(spec: str):
    try:
        from packaging.specifiers import SpecifierSet
    except ImportError:  # pip always carries a copy
        from pip._vendor.packaging.specifiers import SpecifierSet  # type: ignore[no-redef]
    return SpecifierSet(spec)


def _requirement(text: str):
    try:
        from packaging.requirements import Requirement
    except ImportError:
        from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    return Requirement(text)


def satisfies(version: str, spec: str) -> bool:
    """Whether `version` meets `spec` (e.g. ">=1.17,<3"); an unparsable version never does."""
    if not spec:
        return True
    try:
        return _specifier_set(spec).contains(version, prereleases=True)
    except Exception:
        return False


def torch_dependencies() -> set[str]:
    """Everything the host's torch depends on (transitively), from its metadata; a fixed list without torch."""
    if host_version("torch") is None:
        return set(_TORCH_DEPS_FALLBACK)
    seen: set[str] = set()
    todo = ["torch"]
    while todo:
        name = todo.pop()
        try:
            requires = importlib.metadata.requires(name) or []
        except Exception:
            continue
        for text in requires:
            try:
                req = _requirement(text)
                if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                    continue
            except Exception:
                continue
            dep = normalize(req.name)
            if dep not in seen and not _NEVER.match(dep):
                seen.add(dep)
                todo.append(dep)
    return seen | set(_TORCH_DEPS_FALLBACK)


@dataclass
class InstallPlan:
    """What a pip report becomes: private installs, host packages relied on, packages left out."""

    private: dict[str, str] = field(default_factory=dict)  # name -> version to install into the folder
    host: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> {"version", "needs"} kept from the host
    dropped: dict[str, str] = field(default_factory=dict)  # name -> version never installed (torch & co)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"  install  {n}=={v}" for n, v in sorted(self.private.items())]
        out += [f"  host     {n} {h['version']} (needs {h['needs'] or 'any'})" for n, h in sorted(self.host.items())]
        out += [f"  skip     {n} {v} (torch's: left to the host)" for n, v in sorted(self.dropped.items())]
        return out + [f"  note     {n}" for n in self.notes]


def _requires(item: dict) -> list:
    """The requirements of one report item whose markers apply (extras it was asked for included)."""
    meta = item.get("metadata") or {}
    extras = item.get("requested_extras") or [""]
    out = []
    for text in meta.get("requires_dist") or []:
        try:
            req = _requirement(text)
            if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in extras):
                continue
        except Exception:  # an unparsable line in someone's metadata: pip already resolved it
            continue
        out.append(req)
    return out


def _wanted(items: list[dict], never: re.Pattern[str] | None = _NEVER) -> dict[str, dict]:
    """The report items reachable from what was asked for without passing through torch & co."""
    by_name = {normalize((i.get("metadata") or {}).get("name", "")): i for i in items}
    roots = [n for n, i in by_name.items() if i.get("requested")] or list(by_name)
    skip = (lambda n: bool(never.match(n))) if never is not None else (lambda n: False)
    seen: dict[str, dict] = {}
    todo = [n for n in roots if not skip(n)]
    while todo:
        name = todo.pop()
        if name in seen or name not in by_name:
            continue
        seen[name] = by_name[name]
        todo += [normalize(r.name) for r in _requires(by_name[name]) if not skip(normalize(r.name))]
    return seen


def plan_from_report(
    report: dict,
    *,
    shared: set[str] | None = None,
    host: Callable[[str], str | None] = host_version,
    private_torch: bool = False,
) -> InstallPlan:
    """Split a `pip --report` into private installs, kept host packages and packages left to the host's torch.

    With `private_torch` the worker gets its own torch: everything in the report
    is installed privately and nothing is taken from the host.
    """
    items = [i for i in report.get("install") or [] if (i.get("metadata") or {}).get("name")]
    if private_torch:
        shared = set()
    shared = {normalize(n) for n in (shared if shared is not None else (_SHARED_ALWAYS | torch_dependencies()))}
    wanted = _wanted(items, None if private_torch else _NEVER)
    needs: dict[str, list[str]] = {}
    for item in wanted.values():
        for req in _requires(item):
            needs.setdefault(normalize(req.name), []).append(str(req.specifier))
    plan = InstallPlan()
    for item in items:
        meta = item["metadata"]
        name, version = normalize(meta["name"]), meta.get("version", "")
        if name not in wanted:  # torch, nvidia-*, triton, cuda-* and what only they need
            plan.dropped[name] = host(name) or version.replace("+deforumwanstub", "")
            continue
        if name in shared:
            spec = ",".join(sorted({s for s in needs.get(name, []) if s}))
            have = host(name)
            if have is not None and satisfies(have, spec):
                plan.host[name] = {"version": have, "needs": spec}
                continue
            plan.notes.append(f"{name} {version} installed privately: the host has {have or 'none'}, "
                              f"the renderer needs {spec or 'it'}")
        plan.private[name] = version
    return plan


def _run_pip(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pip", *args]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def _stub_torch(folder: Path, version: str) -> tuple[Path, str]:
    """An empty wheel named torch, so the resolver sees the host's torch and none of torch's dependencies."""
    public = version.split("+", 1)[0]
    stub_version = f"{public}+deforumwanstub"
    dist = f"torch-{stub_version}.dist-info"
    files = {
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: torch\nVersion: {stub_version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: deforum-wan\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [f"{p},sha256={_b64sha(t)},{len(t.encode())}" for p, t in files.items()] + [f"{dist}/RECORD,,"]
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    wheel = folder / f"torch-{stub_version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel, stub_version


def _b64sha(text: str) -> str:
    import base64

    return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()


def resolve(requirements: Sequence[str], workdir: Path, runner: Runner = _run_pip,
            choice: torchenv.TorchChoice | None = None) -> dict:
    """The pip report for `requirements` as if nothing were installed, against the worker's torch.

    Reusing the host's torch, an empty stub wheel of its version stands in for it;
    with a private torch, its requirement is resolved with the rest (from its index).
    """
    args = ["install", "--dry-run", "--ignore-installed", "--prefer-binary", "--quiet",
            "--report", str(workdir / "report.json")]
    torch = host_version("torch")
    if choice is not None and choice.mode == "private":
        requirements = [choice.requirement or "torch", *requirements]
        args += _index_args(choice)
    elif torch:
        stubs = workdir / "stub"
        stubs.mkdir(exist_ok=True)
        _wheel, stub_version = _stub_torch(stubs, torch)
        constraints = workdir / "constraints.txt"
        constraints.write_text(f"torch=={stub_version}\n", encoding="utf-8")
        args += ["--find-links", str(stubs), "--constraint", str(constraints)]
    result = runner([*args, *requirements])
    if result.returncode != 0:
        raise DepsError("pip could not resolve " + " ".join(requirements) + ": " + _tail(result.stderr or result.stdout))
    return json.loads((workdir / "report.json").read_text(encoding="utf-8"))


def _index_args(choice: torchenv.TorchChoice | None) -> list[str]:
    """The torch's index beside the user's own (torch's local version tag picks the flavour there)."""
    return ["--extra-index-url", choice.index_url] if choice is not None and choice.index_url else []


class DepsError(RuntimeError):
    """The private folder cannot be filled; the message says what pip said."""


def _tail(text: str, lines: int = 6) -> str:
    kept = [ln for ln in (text or "").strip().splitlines() if ln.strip() and "is ignored: it is neither" not in ln]
    return " | ".join(kept[-lines:]) or "no output"


def read_manifest(target: str | Path) -> dict | None:
    try:
        data = json.loads((Path(target) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT else None


def _dist_infos(target: Path) -> set[tuple[str, str]]:
    found = set()
    try:
        entries = os.listdir(target)
    except OSError:
        return found
    for entry in entries:
        if entry.endswith(".dist-info") and "-" in entry:
            name, version = entry[: -len(".dist-info")].rsplit("-", 1)
            found.add((normalize(name), version))
    return found


def why_unsatisfied(target: str | Path | None = None, farm: bool = False) -> str | None:
    """None when the folder is ready for this Python and torch; else one line saying what is missing or stale.

    Cheap (a manifest, a directory listing, a few metadata reads): it runs at
    every web-UI start and before every job. `farm`: Ray is wanted (as farm_wanted() says it is).
    """
    target = Path(target) if target is not None else deps_dir()
    manifest = read_manifest(target)
    if manifest is None:
        return f"no complete install in {target}"
    for key, value in _python_tag().items():
        if manifest.get(key) != value:
            return f"installed for {key} {manifest.get(key)}, this is {value}"
    farm = farm or farm_wanted(manifest)
    if farm and not manifest.get("farm"):
        return f"the render farm needs Ray (${ENV_FARM} is set, or --farm)"
    if manifest.get("requirements") != requirements_for(sys.version_info[:2], farm):
        return "the required versions changed"
    stale = _torch_stale(manifest.get("torch") or {})
    if stale:
        return stale
    present = _dist_infos(target)
    for name, version in (manifest.get("installed") or {}).items():
        if (normalize(name), version) not in present:
            return f"{name} {version} is missing from {target}"
    for name, info in (manifest.get("host") or {}).items():
        have = host_version(name)
        if have is None or not satisfies(have, info.get("needs", "")):
            return f"the host's {name} changed to {have or 'nothing'} (the renderer needs {info.get('needs')})"
    return None


def _torch_stale(recorded: dict) -> str | None:
    """Why the recorded torch choice no longer holds (an override changed, the host's torch changed)."""
    # An override sticks once installed: a shell without the variable keeps using that torch;
    # a different value, or "auto", asks for a new choice.
    wanted = os.environ.get(torchenv.ENV_TORCH) or None
    if wanted is not None and (None if wanted == "auto" else wanted) != recorded.get("override"):
        return f"{torchenv.ENV_TORCH} changed to {wanted}"
    index = os.environ.get(torchenv.ENV_TORCH_INDEX) or None
    if index is not None and index != recorded.get("override_index"):
        return f"{torchenv.ENV_TORCH_INDEX} changed to {index}"
    host = host_version("torch")
    if recorded.get("mode") == "host" and host != recorded.get("host_version"):
        return f"the host's torch changed from {recorded.get('host_version')} to {host or 'nothing'}"
    if recorded.get("mode") == "private" and not recorded.get("override"):
        if torchenv.version_tuple(host)[:2] >= torchenv.MIN_TORCH:
            return f"the host's torch {host} can now run the renderer: the private torch is no longer needed"
    return None


def worker_allowlist(manifest: dict | None) -> list[str]:
    """The host distributions a worker using this folder may import: its torch and what it relies on."""
    if not manifest or (manifest.get("torch") or {}).get("mode") != "host":
        return []
    return sorted({"torch", *torch_dependencies(), *(manifest.get("host") or {})})


def deps_satisfied(target: str | Path | None = None) -> bool:
    """True when `target` holds a complete install matching this Python, its pins and the host's packages."""
    return why_unsatisfied(target) is None


def _folder_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def _summary(manifest: dict) -> str:
    inst = manifest.get("installed") or {}
    torch = manifest.get("torch") or {}
    where = "private" if torch.get("mode") == "private" else "the host's"
    parts = [f"torch {torch.get('version')} ({where})"] if torch.get("version") else []
    return ", ".join(parts + [f"{n} {inst[n]}" for n in ("diffusers", "transformers") if n in inst])


def install_private_deps(
    target: str | None = None,
    *,
    dry_run: bool = False,
    runner: Runner | None = None,
    out: Callable[[str], None] = print,
    choice: torchenv.TorchChoice | None = None,
    farm: bool = False,
) -> int:
    """Fill `target` (default deps_dir()) for this Python; returns a process exit code.

    Idempotent: when the manifest matches, pip is not called at all. A dry run
    resolves and prints the plan without installing anything. `choice` is the
    worker's torch (default: torchenv decides from this python and its GPUs). `farm`: add Ray (farm_wanted()).
    """
    run = runner or _run_pip
    folder = Path(target).expanduser() if target else deps_dir()
    folder = folder.resolve()
    farm = farm or farm_wanted(read_manifest(folder))
    reason = why_unsatisfied(folder, farm)
    if reason is None and not dry_run:
        out(f"Deforum Wan: renderer libraries ready in {folder} ({_summary(read_manifest(folder) or {})})")
        return 0
    try:
        requirements = requirements_for(sys.version_info[:2], farm)
    except ValueError as exc:
        out(f"Deforum Wan: {exc}")
        return 1
    choice = choice or torchenv.choice_from_environment()
    if choice.mode == "unsupported":
        out(f"Deforum Wan: no torch can run the renderer here: {choice.reason}")
        return 1
    started = time.perf_counter()
    folder.parent.mkdir(parents=True, exist_ok=True)
    with installing.InstallLock(folder) as lock:
        if not lock.acquired:
            out(f"Deforum Wan: another install into {folder} is running (process {lock.holder}); try again when it ends")
            return 1
        if not dry_run:
            out(f"Deforum Wan: installing renderer libraries into {folder} ({reason})")
            out(f"Deforum Wan: worker torch: {choice.reason}")
        with tempfile.TemporaryDirectory(prefix=".deforum-wan-resolve-", dir=folder.parent) as tmp:
            try:
                report = resolve(requirements, Path(tmp), run, choice)
                plan = plan_from_report(report, private_torch=choice.mode == "private")
            except (DepsError, OSError, ValueError) as exc:
                out(f"Deforum Wan: {exc}")
                return 1
        if dry_run:
            out(f"Deforum Wan: plan for {folder} (Python {_python_tag()['python']}; {reason or 'already satisfied'}; "
                f"torch: {choice.reason}):")
            for line in plan.lines():
                out(line)
            return 0
        for note in plan.notes:
            out(f"Deforum Wan: {note}")
        sizes = installing.download_sizes(report, plan.private)
        out(f"Deforum Wan: {len(plan.private)} packages ({_headline(plan.private)}), "
            f"{installing.format_size(sizes)} to download")
        manifest = _install(folder, plan, requirements, choice, run, out, started)
        if manifest is None:
            return 1
    size = _folder_size(folder) / 2**20
    out(f"Deforum Wan: renderer libraries ready in {folder} ({_summary(manifest)}; "
        f"{len(plan.private)} packages, {size:.0f} MiB on disk, {time.perf_counter() - started:.0f} s)")
    return 0


def _headline(private: dict[str, str]) -> str:
    names = [n for n in ("torch", "diffusers", "transformers", "accelerate") if n in private]
    return ", ".join(f"{n} {private[n]}" for n in names) + (", ..." if len(private) > len(names) else "")


def _install(folder: Path, plan: InstallPlan, requirements: list[str], choice: torchenv.TorchChoice,
             run: Runner, out: Callable[[str], None], started: float) -> dict | None:
    """pip into a staging folder that replaces `folder` only when complete; the manifest, or None on failure."""
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        specs = [f"{n}=={v}" for n, v in sorted(plan.private.items())]
        result = run(["install", "--no-deps", "--prefer-binary", "--quiet", "--no-warn-script-location",
                      *_index_args(choice), "--target", str(staging), *specs])
        if result.returncode != 0:
            out(f"Deforum Wan: pip could not install the renderer libraries: {_tail(result.stderr or result.stdout)}")
            return None
        host_torch = host_version("torch")
        torch = {**choice.to_dict(), "override": torchenv.override_from_environment(),
                 "override_index": os.environ.get(torchenv.ENV_TORCH_INDEX) or None, "host_version": host_torch,
                 "version": plan.private.get("torch") if choice.mode == "private" else host_torch}
        manifest = {
            "format": MANIFEST_FORMAT, **_python_tag(), "requirements": requirements, "torch": torch,
            "farm": all(r in requirements for r in FARM_REQUIREMENTS),
            "installed": dict(sorted(plan.private.items())), "host": dict(sorted(plan.host.items())),
            "left_to_host": dict(sorted(plan.dropped.items())), "notes": plan.notes,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(time.perf_counter() - started, 1),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        _replace_folder(staging, folder)
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace_folder(staging: Path, folder: Path) -> None:
    """Swap the complete staging folder in; the old folder is removed only once the new one is in place."""
    old = None
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        os.replace(folder, old)
    try:
        os.replace(staging, folder)
    except BaseException:
        if old is not None:
            os.replace(old, folder)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
