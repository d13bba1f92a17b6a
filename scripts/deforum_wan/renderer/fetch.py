"""Every http(s) URL the API or the renderer reads goes through `fetch` (no other code opens URLs).

Settings reach us from strangers through the API, so a URL in `init_image` or
`soundtrack_path` must not become a way to read the machine's own services
(127.0.0.1, [::1], the cloud metadata address 169.254.169.254, the LAN). Each
host name is resolved here and every address is checked before we connect; we
connect to the checked address itself (so DNS cannot change its answer between
the check and the connection), follow redirects one hop at a time with the same
checks, and stop at a size and a time limit. The body must be what the field
needs (an image, audio/video, or JSON for a Parseq manifest), checked by its Content-Type and by its bytes,
so ffmpeg only ever reads a local file we have looked at.

The web UI's own options apply as they do to its /sdapi routes:
`api_enable_requests` (URLs allowed at all), `api_forbid_local_requests`
(refuse non-public addresses) and `api_useragent`.
"""
from __future__ import annotations

import http.client
import io
import ipaddress
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

from .. import __version__

IMAGE, AUDIO, VIDEO, JSON = "image", "audio", "video", "json"
MAX_BYTES = {IMAGE: 32 * 1024 * 1024, AUDIO: 256 * 1024 * 1024, VIDEO: 512 * 1024 * 1024,
             JSON: 32 * 1024 * 1024}  # JSON: a Parseq manifest
MAX_IMAGE_SIDE = 8192  # an init image is scaled to at most 4096; bigger is a decompression bomb
MAX_IMAGE_PIXELS = MAX_IMAGE_SIDE * MAX_IMAGE_SIDE
_REDIRECTS = (301, 302, 303, 307, 308)
_CHUNK = 64 * 1024
# Parseq manifests are JSON; file hosts often serve .json as text or bytes.
_JSON_TYPES = ("application/json", "text/json", "text/plain", "application/octet-stream")
_IMAGE_TYPES = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}


class FetchError(ValueError):
    """A URL we will not or cannot read; the message says why, for the user."""


@dataclass(frozen=True)
class FetchPolicy:
    """What `fetch` may do. The defaults are the safe ones; the web UI's options map onto them."""

    enabled: bool = True  # the web UI's api_enable_requests
    forbid_local: bool = True  # api_forbid_local_requests: refuse loopback, private, link-local addresses
    user_agent: str = ""  # api_useragent
    timeout: float = 30.0  # seconds for the whole download, redirects included (A1111 uses 30)
    max_redirects: int = 5
    allow_loopback: bool = False  # tests only: lets a test server on 127.0.0.1 answer; nothing else is relaxed


def host_policy() -> FetchPolicy:
    """The web UI's own URL options (`modules.shared.opts`); the safe defaults outside a web UI."""
    try:
        from modules import shared  # the host's package; absent outside the web UI
    except ImportError:
        return FetchPolicy()
    opts = getattr(shared, "opts", None)
    return FetchPolicy(
        enabled=bool(getattr(opts, "api_enable_requests", True)),
        forbid_local=bool(getattr(opts, "api_forbid_local_requests", True)),
        user_agent=str(getattr(opts, "api_useragent", "") or ""),
    )


@dataclass(frozen=True)
class Fetched:
    data: bytes
    content_type: str
    url: str  # after redirects
    suffix: str  # file suffix for what the bytes are, e.g. ".png", ".mp3"


def is_url(text: Any) -> bool:
    return isinstance(text, str) and text.strip().lower().startswith(("http://", "https://"))


# ---------------------------------------------------------------- addresses


def address_problem(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, policy: FetchPolicy) -> str | None:
    """Why we refuse to connect to `ip`, or None. Multicast, reserved and unspecified are never HTTP servers."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None:
            return address_problem(embedded, policy)
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_loopback:
        return None if policy.allow_loopback or not policy.forbid_local else "a loopback address (this machine)"
    if not policy.forbid_local:
        return "a reserved address" if ip.is_reserved else None
    if ip.is_link_local:
        return "a link-local address (where cloud metadata services answer)"
    if ip.is_reserved:
        return "a reserved address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "not a public address"
    return None


def _resolve(host: str, port: int, deadline: float) -> list[tuple[Any, ...]]:
    """getaddrinfo with the download's deadline (it has no timeout of its own)."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            result["error"] = exc

    thread = threading.Thread(target=run, name="deforum-wan-dns", daemon=True)
    thread.start()
    thread.join(max(0.0, deadline - time.monotonic()))
    if thread.is_alive():
        raise FetchError(f"looking up {host} took too long")
    if "error" in result:
        raise FetchError(f"cannot resolve {host}: {result['error']}")
    return result["infos"]


def checked_addresses(url: str, policy: FetchPolicy, deadline: float | None = None) -> list[tuple[Any, ...]]:
    """The (family, sockaddr) pairs `url`'s host resolves to, all allowed; FetchError if any is not.

    Every address must pass, not just the first: a name that resolves to a public
    and a private address could otherwise be made to connect to the private one.
    """
    parts = _split(url)
    deadline = deadline if deadline is not None else time.monotonic() + policy.timeout
    infos = _resolve(parts.hostname or "", parts.port or _default_port(parts.scheme), deadline)
    if not infos:
        raise FetchError(f"{parts.hostname} has no address")
    out = []
    for family, _type, _proto, _name, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        problem = address_problem(ip, policy)
        if problem:
            raise FetchError(f"{parts.hostname} is {ip}, {problem}; only public http(s) addresses are fetched")
        out.append((family, sockaddr))
    return out


def _split(url: str):
    if not isinstance(url, str) or any(c in url for c in "\x00\r\n\t "):
        raise FetchError("not a valid http(s) URL")
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise FetchError(f"{parts.scheme or 'this'} URLs are not fetched; use http(s)")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise FetchError("the URL has an invalid port") from None
    if not parts.hostname:
        raise FetchError("the URL has no host")
    return parts


def _default_port(scheme: str) -> int:
    return 443 if scheme.lower() == "https" else 80


# ---------------------------------------------------------------- download


def _connect(parts, addresses: list[tuple[Any, ...]], deadline: float) -> socket.socket:
    """A socket to one of the checked addresses (TLS checked against the host name for https)."""
    last: Exception | None = None
    for family, sockaddr in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(min(remaining, 10.0))
        try:
            sock.connect(sockaddr)
            if parts.scheme.lower() == "https":
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=parts.hostname)
            return sock
        except (OSError, ssl.SSLError) as exc:
            sock.close()
            last = exc
    raise FetchError(f"cannot connect to {parts.hostname}: {last or 'timed out'}")


def _get(url: str, kind: str, policy: FetchPolicy, deadline: float) -> tuple[http.client.HTTPResponse, Any]:
    parts = _split(url)
    addresses = checked_addresses(url, policy, deadline)
    sock = _connect(parts, addresses, deadline)
    https = parts.scheme.lower() == "https"
    conn_class = http.client.HTTPSConnection if https else http.client.HTTPConnection
    conn = conn_class(parts.hostname, parts.port or _default_port(parts.scheme))
    conn.sock = sock  # already connected to the checked address; http.client only writes and reads
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    accept = {IMAGE: "image/*", VIDEO: "video/*", JSON: "application/json"}.get(kind, "audio/*, video/*")
    headers = {"User-Agent": policy.user_agent or f"deforum-wan/{__version__}", "Accept": accept,
               "Accept-Encoding": "identity"}
    try:
        conn.request("GET", path, headers=headers)
        return conn.getresponse(), conn
    except (OSError, http.client.HTTPException) as exc:
        conn.close()
        raise FetchError(f"{parts.hostname} did not answer: {exc}") from None


def fetch(url: str, kind: str, policy: FetchPolicy | None = None) -> Fetched:
    """Download `url` as `kind` (IMAGE, AUDIO or VIDEO), checking every address, redirect, size and type."""
    policy = policy or FetchPolicy()
    if not policy.enabled:
        raise FetchError("URLs are switched off in the web UI's settings (Allow http:// and https:// URLs)")
    deadline = time.monotonic() + policy.timeout
    limit = MAX_BYTES[kind]
    current = url
    for _hop in range(policy.max_redirects + 1):
        response, conn = _get(current, kind, policy, deadline)
        try:
            if response.status in _REDIRECTS:
                location = response.getheader("Location")
                if not location:
                    raise FetchError(f"{current} redirects without a Location")
                current = urljoin(current, location.strip())
                continue
            if response.status != 200:
                raise FetchError(f"{current} answered HTTP {response.status} {response.reason}")
            content_type = (response.getheader("Content-Type") or "").split(";", 1)[0].strip().lower()
            _check_type(content_type, kind)
            length = response.getheader("Content-Length")
            if length and length.strip().isdigit() and int(length) > limit:
                raise FetchError(f"{current} is {int(length)} bytes; the limit is {limit} bytes")
            data = _read(response, conn, limit, deadline, current)
        finally:
            conn.close()
        suffix = {IMAGE: check_image, VIDEO: check_video, JSON: check_json}.get(kind, check_audio)(data)
        return Fetched(data=data, content_type=content_type, url=current, suffix=suffix)
    raise FetchError(f"more than {policy.max_redirects} redirects")


def _read(response: http.client.HTTPResponse, conn: Any, limit: int, deadline: float, url: str) -> bytes:
    buf = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise FetchError(f"downloading {url} took too long")
        if conn.sock is not None:
            conn.sock.settimeout(remaining)
        try:
            chunk = response.read1(_CHUNK) if hasattr(response, "read1") else response.read(_CHUNK)
        except (OSError, http.client.HTTPException) as exc:
            raise FetchError(f"downloading {url} failed: {exc}") from None
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > limit:
            raise FetchError(f"{url} is larger than the limit of {limit} bytes")


def _check_type(content_type: str, kind: str) -> None:
    if kind == IMAGE and not content_type.startswith("image/"):
        raise FetchError(f"expected an image, the server says {content_type or 'nothing'} (Content-Type)")
    if kind == JSON and not (content_type in _JSON_TYPES or content_type.endswith("+json")):
        raise FetchError(f"expected JSON, the server says {content_type or 'nothing'} (Content-Type)")
    if kind == AUDIO and not (content_type.startswith(("audio/", "video/")) or content_type == "application/ogg"):
        raise FetchError(f"expected audio or video, the server says {content_type or 'nothing'} (Content-Type)")
    if kind == VIDEO and not (content_type.startswith("video/") or content_type in ("application/mp4",
                                                                                     "application/ogg")):
        raise FetchError(f"expected a video, the server says {content_type or 'nothing'} (Content-Type)")


# ---------------------------------------------------------------- what the bytes are


def check_image(data: bytes) -> str:
    """The file suffix if `data` is an image PIL reads, at most MAX_IMAGE_SIDE a side; else FetchError."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            width, height = image.size
            fmt = image.format or ""
            if width > MAX_IMAGE_SIDE or height > MAX_IMAGE_SIDE or width * height > MAX_IMAGE_PIXELS:
                raise FetchError(f"the image is {width}x{height} pixels; at most {MAX_IMAGE_SIDE} a side")
            image.verify()
    except FetchError:
        raise
    except Image.DecompressionBombError:
        raise FetchError(f"the image is far larger than {MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE} pixels; at most "
                         f"{MAX_IMAGE_SIDE} a side") from None
    except Exception as exc:  # PIL raises many types for bad data
        raise FetchError(f"not an image PIL can read ({type(exc).__name__}: {exc})") from None
    return _IMAGE_TYPES.get(fmt, ".png")


def check_json(data: bytes) -> str:
    """".json" if `data` is UTF-8 JSON text; else FetchError (the caller checks what the JSON says)."""
    import json

    try:
        json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FetchError(f"not JSON ({type(exc).__name__}: {str(exc)[:200]})") from None
    return ".json"


def check_audio(data: bytes) -> str:
    """The file suffix if `data` starts like an audio or video file ffmpeg should read; else FetchError.

    A playlist (HLS, m3u) or any text would make ffmpeg open further URLs, so only
    container signatures are accepted.
    """
    head = data[:16]
    if head[4:8] == b"ftyp":
        return ".m4a"
    if head.startswith(b"ID3") or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return ".aac" if len(head) > 1 and head[1] & 0x06 == 0 else ".mp3"
    if head.startswith(b"RIFF") and head[8:12] in (b"WAVE", b"AVI "):
        return ".wav" if head[8:12] == b"WAVE" else ".avi"
    signatures = {b"OggS": ".ogg", b"fLaC": ".flac", b"\x1a\x45\xdf\xa3": ".webm", b"FORM": ".aiff"}
    for magic, suffix in signatures.items():
        if head.startswith(magic):
            return suffix
    raise FetchError("not an audio or video file (mp3, wav, ogg, flac, aac, m4a/mp4, webm, aiff)")


_VIDEO_SIGNATURES = {b"\x1a\x45\xdf\xa3": ".webm", b"OggS": ".ogv", b"\x00\x00\x01\xba": ".mpg", b"FLV": ".flv"}


def check_video(data: bytes) -> str:
    """The file suffix if `data` starts like a video container ffmpeg should read; else FetchError.

    Deforum reads mov, mpeg, mp4, m4v, avi, mpg and webm (is_vid_path_valid, video_audio_utilities.py@3224268).
    As for audio, only container signatures pass: a playlist or a concat list would make ffmpeg open more.
    """
    head = data[:16]
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip"):  # MP4 / QuickTime boxes
        return ".mov" if head[8:10] == b"qt" or head[4:8] != b"ftyp" else ".mp4"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return ".avi"
    if len(data) > 188 and data[0] == 0x47 and data[188] == 0x47:  # MPEG transport stream packets
        return ".ts"
    for magic, suffix in _VIDEO_SIGNATURES.items():
        if head.startswith(magic):
            return suffix
    raise FetchError("not a video file (mp4, mov, m4v, webm, mkv, avi, mpeg, ts, ogv, flv)")
