"""The paths, URLs and data: URLs a request names: checked by allowlist, fetched once, saved for the worker.

Every string in a request is untrusted. `check_source` is the one place a path or
URL from the API goes through: http(s) URLs (fetched later, only if the rest of the
request is valid, with renderer/fetch.py's address checks), data: URLs (decoded,
type-checked and saved under their hash in the inputs folder) or files inside the
allowed folders; nothing else. The worker and ffmpeg then only read local files.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from pathlib import Path
from typing import Any, Mapping

from ..renderer import fetch, outputs
from .request_errors import ApiError, Loc

MAX_URL_CHARS = 4096
MAX_URLS_PER_REQUEST = 8  # distinct URLs fetched for one request
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
_DRIVE = re.compile(r"^[A-Za-z]:")
_DATA_URL = re.compile(r"^data:([\w.+\-]+/[\w.+\-]+)?((?:;[\w\-]+=[\w.\-]+)*)(;base64)?,(.*)$", re.S)
_AUDIO_TYPES = ("audio/mpeg", "audio/mp3", "audio/wav", "audio/x-wav", "audio/wave", "audio/ogg", "audio/flac",
                "audio/aac", "audio/mp4", "audio/x-m4a")


class SourceChecks:
    """The Validator's checks of input files and URLs; it provides `allowed_roots`, `policy()`, `inputs_folder`
    and `settings()`."""

    def fetch_used_urls(self, data: dict[str, Any], parsed: Any, loc: tuple[Any, ...],
                        fetched: dict[tuple[str, str], str]) -> None:
        """Fetch the URLs this render will read and put the saved files in their place."""
        used = (("init_image", fetch.IMAGE, bool(parsed.use_init)),
                ("soundtrack_path", fetch.AUDIO, parsed.add_soundtrack == "File"),
                ("color_coherence_image_path", fetch.IMAGE, str(parsed.raw.get("color_coherence")).lower() == "image"),
                *((key, kind, True) for key, kind in video_keys(data)))
        for key, kind, in_use in used:
            url = data.get(key)
            if not in_use or not fetch.is_url(url):
                continue
            data[key] = self._fetched(url, kind, (*loc, key), fetched)
        from ..core.guided import guided_on

        if guided_on(parsed):  # guided images the render reads (core/guided.py)
            images = _guided_images(data["init_images"])
            for frame, url in list(images.items()):
                if fetch.is_url(url):
                    images[frame] = self._fetched(url, fetch.IMAGE, (*loc, "init_images", str(frame)), fetched)
            data["init_images"] = json.dumps(images) if isinstance(data["init_images"], str) else images

    def _fetched(self, url: str, kind: str, where: Loc, fetched: dict[tuple[str, str], str]) -> str:
        """The saved file of a URL fetched once per request (at most MAX_URLS_PER_REQUEST of them)."""
        if (url, kind) not in fetched:
            if len(fetched) >= MAX_URLS_PER_REQUEST:
                raise ApiError(422, [(where, f"at most {MAX_URLS_PER_REQUEST} different URLs per request")])
            try:
                fetched[(url, kind)] = str(outputs.fetch_to_file(url.strip(), kind, self.inputs_folder, self.policy()))
            except fetch.FetchError as exc:
                raise ApiError(422, [(where, f"cannot use {_short(url)}: {exc}")]) from None
        return fetched[(url, kind)]

    def check_guided_images(self, value: Any, loc: tuple[Any, ...]) -> Any:
        """init_images (JSON text or object): every image checked as check_source checks init_image, same form back.
        Text that is not a JSON object is left for the plan, which names the problem."""
        images = _guided_images(value)
        if images is None:
            return value
        for frame, source in images.items():
            images[frame] = self.check_source(source, (*loc, str(frame)), fetch.IMAGE)
        return json.dumps(images) if isinstance(value, str) else images

    def parseq_source(self, value: Any, loc: tuple[Any, ...]) -> Any:
        """parseq_manifest: the manifest itself (kept), an http(s) URL (fetched by `request`), or a file inside
        the allowed folders, read here and put in its place."""
        from ..core.parseq import ParseqError, reference
        from ..core.settings import SettingsError
        from ..renderer.manifest import read_manifest

        try:
            if reference(value) is None:
                return value
            if value.strip().lower().startswith("data:"):
                raise ParseqError("give the manifest itself (a JSON object) instead of a data: URL")
            checked = self.check_source(value, loc, fetch.JSON)
            return checked if fetch.is_url(checked) else read_manifest(checked)
        except SettingsError as exc:
            raise ApiError(422, [(loc, exc.problem)]) from None
        except ParseqError as exc:
            raise ApiError(422, [(loc, str(exc))]) from None

    def with_fetched_manifest(self, item: dict[str, Any], data: dict[str, Any], overrides: Mapping[str, Any],
                              spec_info: Any, loc: tuple[Any, ...], fetched: dict[tuple[str, str], str]) -> Any:
        """The settings checked again with their Parseq manifest, fetched from its URL (renderer/fetch.py rules)."""
        from ..core.parseq import ParseqError, manifest_from_text

        url, where = data["parseq_manifest"], (*loc, "parseq_manifest")
        saved = self._fetched(url, fetch.JSON, where, fetched)  # once per request, like every other URL
        try:
            manifest = manifest_from_text(Path(saved).read_bytes(), f"the manifest at {_short(url)}")
        except ParseqError as exc:
            raise ApiError(422, [(where, str(exc))]) from None
        return self.settings({**item, "parseq_manifest": manifest}, overrides, spec_info, loc)

    def check_video(self, data: dict[str, Any], loc: tuple[Any, ...]) -> None:
        """Video Input: the source (and mask) video read and checked now (renderer/source_video.py), so one that
        cannot be used is a 422 naming its key, not a failed job."""
        from ..core.settings import settings_from_dict
        from ..renderer.source_video import VideoInputError, probe_source

        try:
            probe_source(settings_from_dict(data), self.policy())
        except VideoInputError as exc:
            raise ApiError(422, [((*loc, exc.key), str(exc).split(": ", 1)[-1])]) from None

    def check_source(self, value: Any, loc: tuple[Any, ...], kind: str) -> Any:
        """init_image / soundtrack_path / color_coherence_image_path: http(s) URL, data URL (saved to a file), or a
        file inside the allowed folders."""
        if value is None:
            return None
        if not isinstance(value, str):
            raise ApiError(422, [(loc, f"expected text, got {type(value).__name__}")])
        text = value.strip()
        if text.lower() in ("", "none"):
            return value
        if text.lower().startswith("data:"):
            return self.save_data_url(text, loc, kind)
        if _SCHEME.match(text) and not _DRIVE.match(text):
            scheme = text.split(":", 1)[0].lower()
            if scheme not in ("http", "https"):
                raise ApiError(422, [(loc, f"{scheme}: URLs are not allowed; use http(s), a data: URL or a file "
                                           "inside the web UI's output or input folders")])
            from urllib.parse import urlsplit

            try:
                parts = urlsplit(text)
                parts.port  # noqa: B018 - raises on a bad port
            except ValueError:
                raise ApiError(422, [(loc, "not a valid http(s) URL")]) from None
            if not parts.hostname or len(text) > MAX_URL_CHARS or any(c in text for c in "\x00\r\n\t "):
                raise ApiError(422, [(loc, "not a valid http(s) URL")])
            return text
        if "\x00" in text or ".." in re.split(r"[\\/]", text):
            raise ApiError(422, [(loc, "must not contain '..'")])
        if text.startswith("~"):
            raise ApiError(422, [(loc, "paths starting with '~' are not allowed")])
        path = Path(text)
        resolved = (path if path.is_absolute() else Path.cwd() / path).resolve()
        if not any(inside(resolved, root) for root in self.allowed_roots):
            raise ApiError(422, [(loc, "only http(s) URLs, data: URLs and files inside the web UI's output or "
                                       "input folders are allowed")])
        return str(resolved)

    def save_data_url(self, text: str, loc: tuple[Any, ...], kind: str) -> str:
        match = _DATA_URL.match(text)
        if not match:
            raise ApiError(422, [(loc, "not a valid data: URL")])
        mime, _params, is_b64, payload = match.groups()
        try:
            data = base64.b64decode(payload, validate=True) if is_b64 else payload.encode("utf-8")
        except (binascii.Error, ValueError):
            raise ApiError(422, [(loc, "the data: URL is not valid base64")]) from None
        if not data:
            raise ApiError(422, [(loc, "the data: URL is empty")])
        if kind == fetch.VIDEO and not (mime or "").startswith("video/"):
            raise ApiError(422, [(loc, "expected a video data: URL (video/mp4, video/webm, ...)")])
        if kind == fetch.AUDIO and mime not in _AUDIO_TYPES:
            raise ApiError(422, [(loc, f"expected an audio data: URL ({', '.join(_AUDIO_TYPES)})")])
        try:
            suffix = {fetch.IMAGE: fetch.check_image, fetch.VIDEO: fetch.check_video}.get(kind, fetch.check_audio)(data)
        except fetch.FetchError as exc:
            raise ApiError(422, [(loc, f"the data: URL is {exc}" if str(exc).startswith("not ") else str(exc))]) from None
        return str(outputs.save_input(data, suffix, self.inputs_folder))


# ---------------------------------------------------------------- naming the field


def video_keys(data: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The video keys a render of `data` reads: the source in Video Input mode (or for an Init Video soundtrack),
    the mask with use_mask_video in Video Input mode."""
    video = data.get("animation_mode") == "Video Input"
    mask = video and str(data.get("use_mask_video")).strip().lower() in ("true", "1", "yes", "on")
    return ((("video_init_path", fetch.VIDEO),) if video or data.get("add_soundtrack") == "Init Video" else ()) + \
        ((("video_mask_path", fetch.VIDEO),) if mask else ())


def switched_on(value: Any) -> bool:
    return value is True or str(value).strip().lower() in ("true", "1", "yes", "on")


def _guided_images(value: Any) -> dict[str, Any] | None:
    """init_images as a dict (parsed from JSON text), or None when it is not an object."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            return None
    return {str(k): v for k, v in value.items()} if isinstance(value, dict) else None


def _short(url: str, limit: int = 120) -> str:
    return url if len(url) <= limit else url[:limit] + "..."


def inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False
