"""The renderer's errors: each message says what to change, and the CLI, worker and API show it as it is."""
from __future__ import annotations


class RenderError(RuntimeError):
    """A render cannot start or go on; the message says what to change."""


class InputError(RenderError):
    """An image, video or manifest the render needs cannot be used; the message names its key."""
