"""The on-disk cache of raw model outputs, so a re-render makes no model call.

One small JSON file per input, keyed by a hash of the model identity, the system
prompt version, the language, every request field (the video's context included:
the same prompt between other scenes is another rewrite) and the token limit; written
atomically, and a missing or damaged entry is simply regenerated. Raw outputs
are stored, not cleaned prompts: cleaning runs again on every read.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

from ..core.specs import cache_root
from . import prompting
from .options import EnhanceRequest


def default_cache_dir() -> Path:
    """$DEFORUM_WAN_CACHE/enhance, else $XDG_CACHE_HOME or ~/.cache, /deforum-wan/enhance."""
    return cache_root() / "enhance"


class EnhanceCache:
    """Raw model outputs, one small JSON file per input; cleaning runs again on every read."""

    def __init__(self, folder: str | Path | None = None):
        self.folder = Path(folder).expanduser() if folder else default_cache_dir()

    @staticmethod
    def key(model_id: str, request: EnhanceRequest, max_new_tokens: int) -> str:
        data = {"model": model_id, "system_prompt": prompting.SYSTEM_PROMPT_VERSION, "language": request.language,
                "prompt": request.prompt, "movement": request.movement, "style": request.style,
                "style_strength": round(request.style_strength, 3) if request.style else None,
                "shared": request.shared, "previous": request.previous, "next": request.next,
                "max_new_tokens": max_new_tokens}
        return hashlib.sha256(json.dumps(data, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        try:
            data = json.loads(self._path(key).read_text(encoding="utf-8"))
            raw = data["raw"]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # missing or damaged: regenerate
        return raw if isinstance(raw, str) else None

    def put(self, key: str, raw: str, meta: dict | None = None) -> None:
        """Atomic: a temp file in the same folder, then os.replace."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({**(meta or {}), "raw": raw, "created": time.time()}, ensure_ascii=False, indent=1)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(payload)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
