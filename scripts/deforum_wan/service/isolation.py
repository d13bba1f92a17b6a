"""Keeps the worker to what it was given: the standard library, its private libraries and its torch.

The worker starts with the host's python, so the host's site-packages are on
its path: A1111's and Forge's kornia 0.6.7 and Forge's peft 0.13.2 are found
there by diffusers 0.42, which then fails importing them. Shadowing cannot
help (the private folder does not hold those packages), so the worker replaces
the import system's path finder with one that hides every top-level package
and every distribution's metadata outside the trusted folders, except the
distributions it was allowed to take from the host (its torch and the packages
torch itself needs). `sys.path` stays as it is, so torch can still find its
CUDA libraries there.

The bridge passes the configuration in DEFORUM_WAN_ISOLATE as JSON:
{"trusted": [folders], "allow": [distribution names]}. Only the standard
library is imported here: this runs before anything else in the worker.
"""
from __future__ import annotations

import importlib.machinery
import importlib.metadata
import json
import os
import re
import sys
import sysconfig
from typing import Any, Iterable, Iterator

ENV = "DEFORUM_WAN_ISOLATE"


def _real(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def stdlib_folders() -> list[str]:
    """The standard library's folders (lib-dynload sits inside platstdlib) and its zip, for this python.

    Taken from the base installation: in a venv, "platstdlib" would name the
    venv's own lib folder, which holds its site-packages.
    """
    base = {"base": sys.base_prefix, "platbase": sys.base_exec_prefix, "installed_base": sys.base_prefix,
            "installed_platbase": sys.base_exec_prefix}
    paths = {sysconfig.get_path(k, vars=base) for k in ("stdlib", "platstdlib")}
    paths |= {p for p in sys.path if p.endswith(".zip")}
    return sorted(p for p in paths if p)


_SITE_DIRS = ("site-packages", "dist-packages")


def _under(path: str | None, roots: tuple[str, ...], stdlib: tuple[str, ...] = ()) -> bool:
    """Inside one of `roots`, or inside the standard library but not in a site-packages folder below it
    (pyenv and Windows keep the installation's own site-packages inside the standard library's folder)."""
    if not path:
        return False
    real = _real(path)
    if any(real == root or real.startswith(root + os.sep) for root in roots):
        return True
    for root in stdlib:
        if real == root or real.startswith(root + os.sep):
            if not any(part in _SITE_DIRS for part in real[len(root):].split(os.sep)):
                return True
    return False


def top_level_names(dists: Iterable[Any]) -> set[str]:
    """The top-level import names the given distributions provide (top_level.txt, else their RECORD)."""
    names: set[str] = set()
    for dist in dists:
        text = dist.read_text("top_level.txt")
        if text:
            names |= {line.strip() for line in text.splitlines() if line.strip()}
            continue
        for file in dist.files or ():
            first = file.parts[0] if file.parts else ""
            if not first or first.endswith((".dist-info", ".egg-info", ".data")) or first in ("..", "__pycache__"):
                continue
            names.add(first.split(".", 1)[0] if "." in first and len(file.parts) == 1 else first)
    return names


class HostFilter:
    """A path finder that hides what lies outside `trusted` unless its name was allowed."""

    def __init__(self, trusted: Iterable[str], allowed_names: Iterable[str], allowed_dists: Iterable[str],
                 stdlib: Iterable[str] = ()) -> None:
        self.trusted = tuple(sorted({_real(p) for p in trusted}))
        self.stdlib = tuple(sorted({_real(p) for p in stdlib}))
        self.allowed_names = frozenset(allowed_names)
        self.allowed_dists = frozenset(_normalize(d) for d in allowed_dists)
        self.hidden: set[str] = set()

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        # Submodules are found through their parent's __path__: the parent was already allowed.
        if spec is None or path is not None or fullname in self.allowed_names:
            return spec
        locations = list(spec.submodule_search_locations or ())
        origin = spec.origin if spec.has_location else None
        if origin is not None:
            visible = _under(origin, self.trusted, self.stdlib)
        else:  # a namespace package: visible when one of its portions is trusted
            visible = any(_under(p, self.trusted, self.stdlib) for p in locations)
        if visible:
            return spec
        self.hidden.add(fullname)
        return None

    def find_distributions(self, context: Any = None) -> Iterator[Any]:
        context = context or importlib.metadata.DistributionFinder.Context()
        for dist in importlib.machinery.PathFinder.find_distributions(context):
            name = _normalize(dist.metadata["Name"] or "")
            if name in self.allowed_dists or _under(str(dist.locate_file("")), self.trusted, self.stdlib):
                yield dist

    def invalidate_caches(self) -> None:
        importlib.machinery.PathFinder.invalidate_caches()


def install(trusted: Iterable[str], allow: Iterable[str]) -> HostFilter:
    """Put a HostFilter in place of the standard path finder; returns it (its `hidden` grows as imports miss)."""
    allowed_dists = {_normalize(d) for d in allow}
    dists = [d for d in importlib.metadata.distributions() if _normalize(d.metadata["Name"] or "") in allowed_dists]
    finder = HostFilter(trusted, top_level_names(dists), allowed_dists, stdlib_folders())
    sys.meta_path[:] = [finder if m is importlib.machinery.PathFinder else m for m in sys.meta_path]
    sys.path_importer_cache.clear()
    importlib.invalidate_caches()
    return finder


def install_from_environment() -> HostFilter | None:
    """Apply DEFORUM_WAN_ISOLATE when the bridge set it; None when the worker runs unconfined."""
    text = os.environ.get(ENV)
    if not text:
        return None
    config = json.loads(text)
    return install(config.get("trusted") or [], config.get("allow") or [])


def from_host(path: str | None) -> bool:
    """Whether a module file comes from the host: outside the folders the installed filter trusts (the private
    folder, this package). Without a filter the worker runs unconfined and everything it sees is the host's."""
    finder = next((m for m in sys.meta_path if isinstance(m, HostFilter)), None)
    if not path or path == "namespace":
        return bool(path)
    return finder is None or not _under(path, finder.trusted)


def describe() -> dict[str, Any] | None:
    """What the installed filter trusts and allows (for the worker's environment event)."""
    finder = next((m for m in sys.meta_path if isinstance(m, HostFilter)), None)
    if finder is None:
        return None
    return {"trusted": list(finder.trusted), "stdlib": list(finder.stdlib), "allowed": sorted(finder.allowed_dists)}
