"""A local HTTP server and fake DNS for the URL tests: nothing here reaches beyond 127.0.0.1.

The server records every request it gets, so a test can prove a refused URL was
never even connected to. `fake_dns` replaces socket.getaddrinfo with a table, to
make names point at private, link-local or public addresses without a network.
"""
from __future__ import annotations

import functools
import io
import socket
import ssl
import struct
import threading
import time
import wave
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, urlsplit

from PIL import Image


def png_bytes(size: tuple[int, int] = (8, 8), color: tuple[int, int, int] = (200, 0, 0)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


@functools.lru_cache(maxsize=None)
def bomb_png(side: int = 30000) -> bytes:
    """A small file that claims a huge image (1-bit, compresses to ~100 KB)."""
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, format="PNG")
    return buf.getvalue()


def wav_bytes(seconds: float = 2.0, rate: int = 8000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(struct.pack("<h", (i * 300) % 20000 - 10000) for i in range(int(seconds * rate))))
    return buf.getvalue()


class Routes:
    """path -> handler(query) returning (status, headers, body, delay_between_chunks)."""

    def __init__(self) -> None:
        self.table: dict[str, Callable[[dict], tuple]] = {}
        self.seen: list[str] = []
        self.lock = threading.Lock()

    def add(self, path: str, body: bytes, content_type: str = "application/octet-stream", status: int = 200,
            headers: dict | None = None, drip: float = 0.0, delay: float = 0.0, length: bool = True) -> None:
        """`length=False`: no Content-Length, the body ends when the connection closes (HTTP/1.0)."""
        headers = {"Content-Type": content_type, **(headers or {})}
        if not length:
            headers["Content-Length"] = None
        self.table[path] = lambda q: (status, headers, body, drip, delay)

    def redirect(self, path: str, location: str, status: int = 302) -> None:
        self.table[path] = lambda q: (status, {"Location": location}, b"", 0.0, 0.0)


class LocalServer:
    """ThreadingHTTPServer on 127.0.0.1, a random port; `url(path)` and `routes.seen`."""

    def __init__(self, tls: tuple[str, str] | None = None) -> None:
        """`tls`: (certificate file, key file) to serve https instead of http."""
        self.routes = Routes()
        self.scheme = "https" if tls else "http"
        routes = self.routes

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                parts = urlsplit(self.path)
                with routes.lock:
                    routes.seen.append(parts.path)
                handler = routes.table.get(parts.path)
                if handler is None:
                    self.send_error(404)
                    return
                status, headers, body, drip, delay = handler(parse_qs(parts.query))
                time.sleep(delay)
                self.send_response(status)
                for k, v in headers.items():
                    if v is not None:
                        self.send_header(k, v)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    if drip:
                        for i in range(0, len(body), 1024):
                            self.wfile.write(body[i:i + 1024])
                            self.wfile.flush()
                            time.sleep(drip)
                    else:
                        self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def __enter__(self) -> "LocalServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def fake_dns(monkeypatch, table: dict[str, list[str]]) -> list[str]:
    """socket.getaddrinfo answers from `table` (name -> addresses); other names fail. Returns the names asked."""
    asked: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):  # noqa: A002 - socket's names
        asked.append(host)
        if host in table:
            out = []
            for address in table[host]:
                fam = socket.AF_INET6 if ":" in address else socket.AF_INET
                sockaddr = (address, port or 0, 0, 0) if fam == socket.AF_INET6 else (address, port or 0)
                out.append((fam, socket.SOCK_STREAM, 6, "", sockaddr))
            return out
        try:  # IP literals resolve to themselves, as the real resolver does
            socket.inet_pton(socket.AF_INET6 if ":" in str(host) else socket.AF_INET, str(host))
            return real(host, port, family, type, proto, flags)
        except OSError:
            raise socket.gaierror(socket.EAI_NONAME, f"fake DNS has no {host}") from None

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def self_signed_cert(folder, name: str) -> tuple[str, str]:
    """A certificate for DNS name `name` made by the openssl command (the test skips without it)."""
    import shutil
    import subprocess

    import pytest

    if not shutil.which("openssl"):
        pytest.skip("no openssl command to make a test certificate")
    cert, key = str(folder / f"{name}.pem"), str(folder / f"{name}.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}"],
                   check=True, capture_output=True)
    return cert, key
