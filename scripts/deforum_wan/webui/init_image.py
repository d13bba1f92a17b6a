"""The tab's init image: an upload, a path or a URL made into a file the render may read, laid over the settings'.

The render's worker reads only files the API would accept, so the tab takes the
same road: an upload is checked as an image and kept under the job queue's
inputs folder (`<outdir>/deforum_wan_api_inputs/<hash>.<ext>`, the folder the
API saves data: URLs in), a path must pass service/validation.py `check_source`
(inside the allowed roots), and a URL is fetched once, with renderer/fetch.py's
checks, into that same folder. No user string chooses where a file is written.

The choice replaces the settings file's `use_init`/`init_image` and sets Deforum's
`strength` for the render only; the imported settings stay as they were, so
clearing the image brings the file's own back. Gradio is imported by tab.py, not here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:  # pragma: no cover
    from ..core.settings import DeforumSettings

FIELD = "init_image"
DEFAULT_STRENGTH = 0.8  # Deforum's `strength` default (args.py@3224268, DeforumArgs)


class InitImageError(ValueError):
    """An init image the tab cannot use; the message says why and what to do."""


@dataclass(frozen=True)
class InitChoice:
    """A usable init image: `path` is a local file inside the allowed roots, `shown` what the user gave."""

    path: str
    shown: str

    def to_state(self) -> dict[str, str]:
        return {"path": self.path, "shown": self.shown}

    @classmethod
    def from_state(cls, state: Any) -> "InitChoice | None":
        if isinstance(state, Mapping) and state.get("path"):
            return cls(str(state["path"]), str(state.get("shown") or Path(str(state["path"])).name))
        return None


class InitImages:
    """Turns what the user gives into an InitChoice, through the API's own Validator and fetcher.

    `validator` is a service.validation.Validator on the tab's job queue (its allowed
    roots and inputs folder); `policy` returns the renderer.fetch.FetchPolicy for URLs.
    """

    def __init__(self, validator: Any, policy: Callable[[], Any] | None = None):
        self.validator = validator
        self.policy = policy

    def _allowed(self, text: str) -> str:
        from ..renderer import fetch
        from ..service.validation import ApiError

        try:
            return str(self.validator.check_source(text, (FIELD,), fetch.IMAGE))
        except ApiError as exc:
            raise InitImageError("; ".join(msg for _loc, msg in exc.errors)) from None

    def _keep(self, data: bytes) -> str:
        """Check the bytes are an image within the API's limits and keep them in the inputs folder."""
        from ..renderer import fetch, outputs

        if not data:
            raise InitImageError("the file is empty")
        try:
            suffix = fetch.check_image(data)
        except fetch.FetchError as exc:
            raise InitImageError(str(exc)) from None
        return self._allowed(str(outputs.save_input(data, suffix, self.validator.inputs_folder)))

    def upload(self, temp_path: Any) -> InitChoice:
        """An image gradio received (its temporary file), copied into the inputs folder."""
        if not temp_path:
            raise InitImageError("no image was uploaded")
        return InitChoice(self._keep(_read_capped(Path(str(temp_path)))), "the uploaded image")

    def upload_picture(self, picture: Any) -> InitChoice:
        """A picture the box decoded (PIL), kept as PNG in the inputs folder under the same checks."""
        import io

        buffer = io.BytesIO()
        try:
            picture.convert("RGB").save(buffer, format="PNG")
        except (OSError, ValueError) as exc:
            raise InitImageError(f"cannot be read: {exc}") from None
        return InitChoice(self._keep(buffer.getvalue()), "the uploaded image")

    def given(self, text: Any) -> InitChoice:
        """A path inside the allowed folders, or an http(s) URL fetched now (so the thumbnail shows it)."""
        from ..renderer import fetch

        text = str(text or "").strip()
        if not text or text.lower() == "none":
            raise InitImageError("give a path or an http(s) URL")
        if fetch.is_url(text):
            self._allowed(text)  # the API's rules for the URL's shape
            try:
                data = fetch.fetch(text, fetch.IMAGE, self.policy() if self.policy else None).data
            except fetch.FetchError as exc:
                raise InitImageError(f"cannot fetch it: {exc}") from None
            return InitChoice(self._keep(data), text)
        path = self._allowed(text)
        if text.lower().startswith("data:"):  # check_source saved it already, as the API does
            return InitChoice(path, "a data: URL")
        if not Path(path).is_file():
            raise InitImageError("no such file")
        return InitChoice(self._keep(_read_capped(Path(path))), text)


def _read_capped(path: Path) -> bytes:
    from ..renderer import fetch

    limit = fetch.MAX_BYTES[fetch.IMAGE]
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise InitImageError(f"cannot be read: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise InitImageError(f"the file is larger than {limit // (1024 * 1024)} MB")
    return data


def settings_strength(settings: "DeforumSettings | Mapping[str, Any] | None") -> float:
    """The settings' `strength` (Deforum's default when missing or not a number)."""
    raw = getattr(settings, "raw", settings) or {}
    try:
        value = float(raw.get("strength", DEFAULT_STRENGTH))
    except (TypeError, ValueError):
        return DEFAULT_STRENGTH
    return value if 0.0 <= value <= 1.0 else DEFAULT_STRENGTH


def apply(settings: "DeforumSettings", state: Any, strength: Any) -> "DeforumSettings":
    """Settings for the render: the tab's image as `use_init`/`init_image`, and `strength` when an init image is used.

    Without a tab image the file's own init image stays; the strength control still
    sets its `strength` (it starts at the file's value, so an untouched control
    changes nothing).
    """
    from ..core.settings import settings_from_dict

    choice = InitChoice.from_state(state)
    data = settings.to_dict()
    if choice is not None:
        data.update(use_init=True, init_image=choice.path)
    elif not settings.use_init:
        return settings
    if strength is not None and strength != "":
        value = float(strength)
        if not 0.0 <= value <= 1.0:
            raise InitImageError(f"strength must be between 0 and 1, got {value:g}")
        if choice is not None or value != settings_strength(settings):
            data["strength"] = value
    if data == settings.to_dict():
        return settings
    return settings_from_dict(data)


def describe(settings: "DeforumSettings | None", state: Any, strength: Any) -> str:
    """The line under the control: which image the render starts from, and what it replaces."""
    choice = InitChoice.from_state(state)
    own = settings.init_image if settings is not None else None
    own_text = f"`{_short(own)}`" if own and str(own).strip().lower() != "none" else "none"
    value = f"{float(strength):.2f}" if strength not in (None, "") else f"{DEFAULT_STRENGTH:.2f}"
    if choice is not None:
        replaced = ""
        if settings is not None:
            replaced = (f", in place of the settings' init_image {own_text} "
                        f"(use_init {'on' if settings.use_init else 'off'})")
        return (f"**The render starts from {choice.shown}** (strength {value}){replaced}. "
                f"Saved as `{Path(choice.path).name}`; clear the image to use the settings' own.")
    if settings is not None and settings.use_init:
        return (f"The render starts from the settings' init_image {own_text} (strength {value}). "
                "Upload a picture or give a path or URL to use another.")
    return "No init image: the first clip starts from the prompt. Upload a picture or give a path or URL."


def _short(text: Any, limit: int = 80) -> str:
    text = str(text)
    if text.lower().startswith("data:"):
        return f"data: URL, {len(text)} characters"
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------
# The control in the tab (gradio 3.41 and 4.40 alike: no version-only keywords)


class InitPanel:
    """The init image box: upload or path/URL with a thumbnail, the strength, a status line, the choice's State."""

    def __init__(self, images: Callable[[], InitImages], settings_state: Any):
        import gradio as gr

        self._images, self.settings_state = images, settings_state
        with gr.Accordion("Init image", open=False, elem_id="deforum_wan_init"):
            with gr.Row():
                # type "pil", not "filepath": for a file path gradio 4 saves the upload through
                # processing_utils.save_pil_to_cache, which Forge replaces with a function of another
                # signature (modules/ui_tempdir.py), so a dropped picture failed inside gradio there.
                self.image = gr.Image(label="Init image (drop a picture here)", type="pil", height=200,
                                      elem_id="deforum_wan_init_image")
                with gr.Column():
                    self.path = gr.Textbox(label="…or a path or URL", max_lines=1, elem_id="deforum_wan_init_path",
                                           placeholder="https://example.com/start.png or a file in the output folders")
                    self.use_btn = gr.Button("Use path or URL", elem_id="deforum_wan_init_use")
                    self.strength = gr.Slider(label="Strength", minimum=0, maximum=1, step=0.01,
                                              value=DEFAULT_STRENGTH, elem_id="deforum_wan_init_strength",
                                              info="Deforum's strength: how strongly a VACE first clip keeps it")
            self.status = gr.Markdown(describe(None, None, DEFAULT_STRENGTH), elem_id="deforum_wan_init_status")
        self.state = gr.State(None)

    def _settings(self, settings_state: Any) -> "DeforumSettings | None":
        from ..core.settings import load_settings

        try:
            return load_settings(settings_state) if settings_state else None
        except (ValueError, OSError):
            return None

    def _refused(self, given: str, exc: Exception, settings_state: Any, state: Any, strength: Any) -> str:
        shown = given.replace("`", "'")[:120] or "the image"
        return (f"**Cannot use the init image** `{shown}`: {exc}  \n"
                + describe(self._settings(settings_state), state, strength))

    def on_init_upload(self, value: Any, settings_state: Any, state: Any, strength: Any):
        """A picture dropped on the box: kept in the inputs folder; a bad one is named and cleared."""
        import gradio as gr

        from .tab_data import upload_source

        picture = value if hasattr(value, "save") else None  # the box's PIL image (a path from older callers)
        path, _name = (None, None) if picture is not None else upload_source(value)
        if picture is None and not path:
            return state, describe(self._settings(settings_state), state, strength), gr.update()
        try:
            choice = self._images().upload_picture(picture) if picture is not None else self._images().upload(path)
        except (InitImageError, OSError) as exc:
            return state, self._refused("the uploaded file", exc, settings_state, state, strength), gr.update(value=None)
        return choice.to_state(), describe(self._settings(settings_state), choice.to_state(), strength), gr.update()

    def on_init_path(self, text: Any, settings_state: Any, state: Any, strength: Any):
        """A path or URL: checked against the allowed folders (URLs fetched), then shown as the thumbnail."""
        import gradio as gr

        try:
            choice = self._images().given(text)
        except (InitImageError, OSError) as exc:
            return state, self._refused(str(text or "").strip(), exc, settings_state, state, strength), gr.update()
        return (choice.to_state(), describe(self._settings(settings_state), choice.to_state(), strength),
                gr.update(value=choice.path))

    def on_init_clear(self, settings_state: Any, strength: Any):
        return None, describe(self._settings(settings_state), None, strength)

    def on_init_import(self, settings_state: Any, state: Any, strength: Any):
        """A new settings file: the strength shows its value unless a tab image (with its own strength) is set."""
        import gradio as gr

        settings = self._settings(settings_state)
        if state is None and settings is not None:
            strength = settings_strength(settings)
            return gr.update(value=strength), describe(settings, state, strength)
        return gr.update(), describe(settings, state, strength)

    def on_init_strength(self, settings_state: Any, state: Any, strength: Any):
        return describe(self._settings(settings_state), state, strength)

    def wire(self) -> list[Any]:
        """Connect the box; returns the events after which the plan is redone (the caller chains it)."""
        common = [self.settings_state, self.state, self.strength]
        picked = [self.state, self.status, self.image]
        events = [self.image.upload(self.on_init_upload, inputs=[self.image, *common], outputs=picked),
                  self.use_btn.click(self.on_init_path, inputs=[self.path, *common], outputs=picked),
                  self.path.submit(self.on_init_path, inputs=[self.path, *common], outputs=picked),
                  self.image.clear(self.on_init_clear, inputs=[self.settings_state, self.strength],
                                   outputs=[self.state, self.status])]
        self.strength.change(self.on_init_strength, inputs=common, outputs=[self.status])
        return events

    def after_import(self, event: Any) -> Any:
        """Chain the strength and status refresh after a settings import."""
        return event.then(self.on_init_import, inputs=[self.settings_state, self.state, self.strength],
                          outputs=[self.strength, self.status])
