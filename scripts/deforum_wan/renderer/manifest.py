"""Reading the Parseq manifest a settings file names by path or URL (core/parseq.py applies it).

Deforum takes `parseq_manifest` as the JSON itself or an http(s) URL it downloads
(parseq_adapter.py@3224268 `load_manifest`); we also take a local file. URLs go
through renderer/fetch.py with its address checks and a size limit; files are read
up to the same limit. A relative path is taken from the settings file's folder.
The API does not use `manifest_loader` for paths: service/validation.py first keeps
them inside its allowed folders, as it does for init_image.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..core import parseq
from ..core.parseq import KEY, ParseqError, manifest_from_text
from ..core.settings import SettingsError
from . import fetch


def read_manifest(reference: str, *, base: str | Path | None = None,
                  policy: fetch.FetchPolicy | None = None) -> Any:
    """The manifest at an http(s) URL or in a file (relative to `base`); SettingsError naming parseq_manifest."""
    text = reference.strip()
    if fetch.is_url(text):
        try:
            data = fetch.fetch(text, fetch.JSON, policy).data
        except fetch.FetchError as exc:
            raise SettingsError(KEY, f"cannot use {text[:120]}: {exc}") from None
        return _parsed(data, f"the manifest at {text[:120]}")
    path = Path(text).expanduser()
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    if not path.is_file():
        raise SettingsError(KEY, f"{text!r} is neither the manifest's JSON, an http(s) URL nor a file "
                                 f"(looked for {path})")
    try:
        size = path.stat().st_size
        if size > parseq.MAX_MANIFEST_BYTES:  # checked before reading it
            raise SettingsError(KEY, f"{path} is {size} bytes; at most {parseq.MAX_MANIFEST_BYTES}")
        data = path.read_bytes()
    except OSError as exc:
        raise SettingsError(KEY, f"cannot read {path}: {exc}") from None
    return _parsed(data, str(path))


def _parsed(data: bytes, where: str) -> Any:
    try:
        return manifest_from_text(data, where)
    except ParseqError as exc:
        raise SettingsError(KEY, str(exc)) from None


def manifest_loader(base: str | Path | None = None,
                    policy: fetch.FetchPolicy | None = None) -> Callable[[str], Any]:
    """A `load_manifest` for core.settings: files relative to `base`, URLs under `policy`."""
    return lambda reference: read_manifest(reference, base=base, policy=policy)


def loader_for(settings: Any, policy: fetch.FetchPolicy | None = None) -> Callable[[str], Any]:
    """`manifest_loader` for a settings file path (relative manifests beside it), inline JSON or a dict."""
    if isinstance(settings, (str, Path)) and not str(settings).lstrip().startswith("{"):
        return manifest_loader(Path(settings).expanduser().resolve().parent, policy)
    return manifest_loader(None, policy)
