"""A request's problems as the client sees them: an HTTP status and (field, message) pairs."""
from __future__ import annotations

from typing import Any, Sequence

Loc = Sequence[Any]


class ApiError(Exception):
    """A request problem for the client: HTTP status and (field, message) pairs."""

    def __init__(self, status: int, errors: Sequence[tuple[Loc, str]]):
        self.status = status
        self.errors = [(tuple(loc) or ("body",), msg) for loc, msg in errors]
        super().__init__("; ".join(f"{field_name(loc)}: {msg}" for loc, msg in self.errors))


def field_name(loc: Loc) -> str:
    """`("deforum_settings", 0, "zoom")` -> `deforum_settings[0].zoom`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
