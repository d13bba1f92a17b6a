"""The mechanics of one install into the private folder: one at a time, leftovers cleared, sizes told first.

A private torch is a download of hundreds of MB (CPU) to several GB (CUDA), done
at a web-UI start. The user is told its size before it starts; a second web UI
starting meanwhile does not install over it; and a download that was killed
(closed window, power cut) leaves only a staging folder, which the next install
removes before it starts again. The folder in use is only ever replaced whole.

Standard library only: this runs in the web UI's process.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import unquote, urlparse


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs: signal 0 on POSIX, a handle query on Windows (os.kill ends it there)."""
    if pid <= 0:
        return False
    if sys.platform == "win32":  # os.kill would terminate the process on Windows
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        ctypes.windll.kernel32.CloseHandle(handle)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class InstallLock:
    """`<parent>/.<name>.installing` holds the installing process's id while it runs.

    On entry, a lock whose process is gone is taken over and the staging and
    old folders it left (`.<name>.partial-*`, `.<name>.old-*`) are removed.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder.parent / f".{folder.name}.installing"
        self.acquired = False
        self.holder: int | None = None

    def __enter__(self) -> InstallLock:
        for _attempt in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    self.holder = int(self.path.read_text(encoding="utf-8").strip() or 0)
                except (OSError, ValueError):
                    self.holder = 0
                if self.holder and pid_alive(self.holder) and self.holder != os.getpid():
                    return self
                self.path.unlink(missing_ok=True)  # a dead installer's lock
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(str(os.getpid()))
            self.acquired = True
            self.remove_leftovers()
            break
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.acquired:
            self.path.unlink(missing_ok=True)

    def remove_leftovers(self) -> list[Path]:
        """Staging and old folders of installs that never finished (only while holding the lock)."""
        gone = []
        for pattern in (f".{self.folder.name}.partial-*", f".{self.folder.name}.old-*"):
            for leftover in self.folder.parent.glob(pattern):
                shutil.rmtree(leftover, ignore_errors=True)
                gone.append(leftover)
        return gone


def _size_of(url: str, timeout: float) -> int | None:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        try:
            return os.path.getsize(unquote(parsed.path))
        except OSError:
            return None
    if parsed.scheme not in ("http", "https"):
        return None
    try:
        request = urllib.request.Request(url, method="HEAD")
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (pip's own index URLs)
            length = response.headers.get("Content-Length")
            return int(length) if length else None
    except (OSError, ValueError):
        return None


def download_sizes(report: Mapping[str, Any], names: Mapping[str, str], timeout: float = 10.0) -> dict[str, int | None]:
    """Bytes to download for each package in `names`, from the URLs in pip's report (None when unknown)."""
    def normalize(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    wanted = {normalize(n) for n in names}
    urls = {}
    for item in report.get("install") or []:
        name = normalize((item.get("metadata") or {}).get("name", ""))
        url = (item.get("download_info") or {}).get("url")
        if name in wanted and url:
            urls[name] = url
    with ThreadPoolExecutor(max_workers=8) as pool:
        sizes = dict(zip(urls, pool.map(lambda u: _size_of(u, timeout), urls.values())))
    return {n: sizes.get(n) for n in wanted}


def format_size(sizes: Mapping[str, int | None]) -> str:
    known = [s for s in sizes.values() if s is not None]
    if not known:
        return "download size unknown"
    total = sum(known) / 2**20
    text = f"{total / 1024:.1f} GiB" if total >= 1024 else f"{total:.0f} MiB"
    missing = len(sizes) - len(known)
    return text + (f" (+{missing} of unknown size)" if missing else "")
