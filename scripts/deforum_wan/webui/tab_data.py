"""Pure helpers behind the Wan tab: table rows, prompt edits, resume list, settings finder.

Kept apart from `tab.py` so they are unit-tested without gradio, and so the tab's
code is the same in Automatic1111 (gradio 3.41) and Forge (gradio 4.40): gradio
only sees the plain lists and strings these return. Nothing here imports torch.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from ..core.specs import DEFAULT_KIND_ORDER
from ..renderer import outputs

if TYPE_CHECKING:  # pragma: no cover
    from ..renderer.models import ModelInfo
    from ..core.plan import ClipPlan
    from ..core.settings import DeforumSettings

PLAN_HEADERS = ["clip", "output frames", "seconds", "Wan frames", "mode", "seed", "prompt", "movement"]
PLAN_DATATYPES = ["number", "str", "str", "number", "str", "number", "str", "str"]
PROMPT_COLUMN = PLAN_HEADERS.index("prompt")
ENHANCE_HEADERS = ["clip", "before", "after"]
TERMINAL_STATUSES = {"SUCCEEDED", "FAILED", "CANCELLED", "INTERRUPTED", "DONE", "CRASHED"}


def none_if_zero(value: Any, kind: type = int) -> Any:
    if value in (None, ""):
        return None
    number = kind(value)
    return None if number <= 0 else number


@dataclass
class Controls:
    """The option controls' values, in one place for the plan, the job and the enhancer."""

    model_path: str | None = None
    width: Any = 0
    height: Any = 0
    steps: Any = 0
    guidance: Any = 0
    continuity: str = "auto"
    overlap: Any = 0
    color_match: bool = True
    timing: str = "auto"
    min_clip_seconds: Any = None  # None: the default (2 s); 0 keeps every prompt change as a cut
    motion: str = "words"
    preset: str = "quality"
    cache: str = ""  # NAME[:THRESHOLD], empty for none
    loras: str = ""  # comma-separated NAME[:WEIGHT[:WEIGHT_2]]
    memory_profile: str = "auto"
    gpus: str = ""  # "0,1": one clip across these GPUs (renderer/parallel.py); empty: one device
    enhance: bool = False
    style: str = ""
    style_strength: float = 0.5
    qwen: str = ""
    init_image: Any = None  # the init image box's choice (init_image.InitChoice state): None keeps the settings'
    init_strength: Any = None  # Deforum's `strength` for the init image
    extra: dict = field(default_factory=dict)

    def plan_options(self, seed: int | None = None):
        from ..core.plan import PlanOptions

        return PlanOptions(continuity=self.continuity or "auto", overlap=none_if_zero(self.overlap),
                           width=none_if_zero(self.width), height=none_if_zero(self.height),
                           steps=none_if_zero(self.steps), guidance=none_if_zero(self.guidance, float),
                           color_match=bool(self.color_match), timing=_timing(self.timing),
                           min_clip_seconds=_seconds(self.min_clip_seconds), seed=seed,
                           preset=self.preset or None, cache=(self.cache or "").strip() or None,
                           loras=tuple(lora_list(self.loras)), motion=self.motion or None)

    def overrides(self) -> dict:
        """options_overrides for JobQueue.submit (the same keys the API takes); 0 means "the default"."""
        values = {"model": self.model_path, "memory_profile": self.memory_profile or "auto",
                  "continuity": self.continuity or "auto", "overlap": none_if_zero(self.overlap),
                  "width": none_if_zero(self.width), "height": none_if_zero(self.height),
                  "steps": none_if_zero(self.steps), "guidance": none_if_zero(self.guidance, float),
                  "color_match": bool(self.color_match), "enhance": bool(self.enhance),
                  "timing": _timing(self.timing), "min_clip_seconds": _seconds(self.min_clip_seconds),
                  "preset": self.preset or None, "cache": (self.cache or "").strip() or None,
                  "loras": lora_list(self.loras) or None, "motion": self.motion or None,
                  "gpus": str(self.gpus or "").strip() or None}
        if self.enhance:
            values.update(enhance_style=self.style or "", enhance_style_strength=float(self.style_strength or 0.5))
        return {k: v for k, v in values.items() if v is not None}


def lora_list(text: Any) -> list[str]:
    """The tab's LoRA box, "style:0.8, detail" -> ["style:0.8", "detail"]."""
    return [part.strip() for part in str(text or "").replace("\n", ",").split(",") if part.strip()]


def _timing(value: Any) -> str | None:
    """auto is no choice: the settings' wan_timing, else the automatic one."""
    return None if not value or value == "auto" else str(value)


def _seconds(value: Any) -> float | None:
    """A seconds control: empty is the default (None); 0 is a real value."""
    if value is None or value == "":
        return None
    return float(value)


# Where Deforum leaves the settings of its last run (see `settings_candidates`).
DEFORUM_SETTINGS_NAME = "deforum_settings.txt"
SETTINGS_SUFFIX = "_settings.txt"


# ---------------------------------------------------------------------------
# Plan table and prompt edits


def keyframe_text(raw: str) -> tuple[str, str]:
    """A keyframe prompt split at its first `--neg`: (positive, the `--neg ...` tail or "")."""
    positive, sep, rest = raw.partition("--neg")
    return positive.strip(), (f"--neg{rest}" if sep else "")


def plan_rows(plan: "ClipPlan", settings: "DeforumSettings") -> list[list[Any]]:
    """One row per clip; the prompt cell is the clip's keyframe text, so an edit maps back to that keyframe."""
    from ..core.prompts import prompt_items

    _, items = prompt_items(settings)
    raw = dict(items)
    rows = []
    for c in plan.clips:
        t0, t1 = c.output_start / plan.fps, c.output_end / plan.fps
        text = keyframe_text(raw[c.prompt_key])[0] if c.prompt_key in raw else c.prompt
        rows.append([c.index, f"{c.output_start}-{c.output_end - 1}", f"{t0:.2f}-{t1:.2f}", c.num_frames, c.mode,
                     c.seed, text, c.movement])
    return rows


def _cell(rows: Any, r: int, col: int) -> Any:
    row = rows[r]
    return row[col] if col < len(row) else None


def table_values(value: Any) -> list[list[Any]]:
    """A Dataframe value as a list of rows, whichever shape gradio hands over (list, dict, pandas)."""
    if value is None:
        return []
    if hasattr(value, "values") and hasattr(value, "columns"):  # pandas.DataFrame
        return [list(r) for r in value.values.tolist()]
    if isinstance(value, Mapping) and "data" in value:
        return [list(r) for r in value["data"]]
    return [list(r) for r in value]


def edited_prompts(plan: "ClipPlan", settings: "DeforumSettings", rows: Sequence[Sequence[Any]]) -> dict[str, str] | None:
    """The full `wan_prompts` mapping after table edits, or None when no prompt changed.

    Every keyframe is kept (prompts.py reads `wan_prompts` instead of `prompts` when it
    is set), a keyframe's `--neg` part survives an edit of its positive text, and when
    two clips of one keyframe are edited differently the first edited clip wins.
    """
    from ..core.prompts import prompt_items

    _, items = prompt_items(settings)
    prompts = {k: v for k, v in items}
    changed = False
    seen: set[str] = set()
    for r, clip in enumerate(plan.clips):
        if r >= len(rows):
            break
        cell = _cell(rows, r, PROMPT_COLUMN)
        if cell is None or clip.prompt_key not in prompts or clip.prompt_key in seen:
            continue
        positive, neg = keyframe_text(prompts[clip.prompt_key])
        new = str(cell).strip()
        if new != positive:
            prompts[clip.prompt_key] = f"{new} {neg}".strip() if neg else new
            seen.add(clip.prompt_key)
            changed = True
    return prompts if changed else None


def apply_prompt_edits(plan: "ClipPlan", settings: "DeforumSettings", rows: Any) -> "DeforumSettings":
    """Settings with the table's prompt edits kept in `wan_prompts`; unchanged settings when nothing was edited."""
    prompts = edited_prompts(plan, settings, table_values(rows))
    return settings if prompts is None else settings.with_wan(prompts=prompts)


# ---------------------------------------------------------------------------
# Importing settings


def upload_source(value: Any) -> tuple[str | None, str | None]:
    """(path to read, file name to show) for a gr.File value.

    Gradio 3.41 hands over a temporary-file wrapper (`name` and, despite its name,
    `orig_name` are both temporary paths), gradio 4 a path (or a dict with `path`
    and `orig_name`); in both the temporary path ends in the user's file name.
    """
    if value is None:
        return None, None
    if isinstance(value, Mapping):
        path = value.get("path") or value.get("name")
        orig = value.get("orig_name")
    elif isinstance(value, (str, os.PathLike)):
        path, orig = os.fspath(value), None
    else:
        path, orig = getattr(value, "name", None), getattr(value, "orig_name", None)
    if not path:
        return None, None
    return str(path), Path(str(orig or path)).name


def without_resume(settings: "DeforumSettings") -> tuple["DeforumSettings", str | None]:
    """Settings with Deforum's resume flag cleared, and a note saying so when it was set.

    A settings file saved by a render that was itself resumed (ours, or Deforum's
    "Resume animation") carries `resume_from_timestring: true`; imported as is, it
    would make Generate continue that old render instead of starting a new one.
    The tab's *Unfinished renders* list is the way to resume.
    """
    from dataclasses import replace

    if not settings.resume_from_timestring:
        return settings, None
    which = f"render {settings.resume_timestring}" if settings.resume_timestring else "an earlier render"
    return (replace(settings, resume_from_timestring=False),
            f"this file was set to resume {which}; that flag is cleared, so Generate starts a new render "
            "(continue an old one from *Unfinished renders*)")


# ---------------------------------------------------------------------------
# Finding Deforum's last settings


def settings_candidates(output_roots: Iterable[str | Path], webui_root: str | Path | None) -> list[Path]:
    """Settings files Deforum writes, in the folders it writes them to.

    Deforum saves `{timestring}_settings.txt` in each batch folder
    (`<outdir_samples or outdir_img2img_samples>/<batch_name>/`; the Forge fork and
    older versions also use `<outputs>/deforum/<batch>/`), and its "Save settings"
    button writes `deforum_settings.txt` in the web UI's root. We look at each root,
    its batch folders and one level below (date folders), nothing deeper.
    """
    found: list[Path] = []
    if webui_root:
        path = Path(webui_root) / DEFORUM_SETTINGS_NAME
        if path.is_file():
            found.append(path)
    seen: set[Path] = set()
    for root in output_roots:
        if not root:
            continue
        root = Path(root).expanduser()
        if not root.is_dir() or root.resolve() in seen:
            continue
        seen.add(root.resolve())
        for depth in ("*", "*/*", "*/*/*"):
            found.extend(p for p in root.glob(depth + SETTINGS_SUFFIX) if p.is_file())
    return found


def is_wan_render_settings(path: str | Path) -> bool:
    """True for the settings file of one of our renders: its `{timestring}_wan_plan.json` lies beside it."""
    path = Path(path)
    if not path.name.endswith(SETTINGS_SUFFIX):
        return False
    return outputs.plan_file(path.parent, path.name[: -len(SETTINGS_SUFFIX)]).is_file()


def newest_settings(output_roots: Iterable[str | Path], webui_root: str | Path | None = None) -> Path | None:
    """The most recently written Deforum settings file, or None.

    Deforum's own files come first: our renders save `{timestring}_settings.txt`
    in the same folders, and are taken only when Deforum has left none.
    """
    candidates = settings_candidates(output_roots, webui_root)
    deforum = [p for p in candidates if not is_wan_render_settings(p)]
    pool = deforum or candidates
    if not pool:
        return None
    return max(pool, key=lambda p: (p.stat().st_mtime, str(p)))


# ---------------------------------------------------------------------------
# Unfinished renders


@dataclass(frozen=True)
class UnfinishedRender:
    """A batch folder whose frames stop short of its saved plan."""

    folder: Path
    timestring: str
    frames_on_disk: int
    frames_total: int
    model_kind: str

    @property
    def label(self) -> str:
        return (f"{self.folder.name} / {self.timestring}: {self.frames_on_disk}/{self.frames_total} frames "
                f"({self.model_kind})")

    @property
    def settings_path(self) -> Path:
        return outputs.settings_file(self.folder, self.timestring)


def _plan_progress(plan: Mapping[str, Any]) -> bool:
    """Whether a saved plan holds work a resume keeps without any frame: the enhancer's prompts."""
    clips = plan.get("clips") or []
    return any(isinstance(c, Mapping) and c.get("enhanced_prompt") for c in clips)


def unfinished_renders(outdir: str | Path, limit: int = 50) -> list[UnfinishedRender]:
    """Renders in `outdir` that can be resumed: a saved plan and settings, fewer frames than the plan's max_frames.

    Newest first. Folders without `{ts}_wan_plan.json` (Deforum's own renders) are
    skipped, and so are renders that stopped before their first frame with nothing
    else to keep (a failed or cancelled start): resuming them is starting anew.
    """
    root = Path(outdir).expanduser()
    if not root.is_dir():
        return []
    found: list[UnfinishedRender] = []
    for folder in (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        stamps = set(outputs.find_timestrings(folder))
        stamps |= {p.name[:14] for p in folder.glob("*_wan_plan.json") if p.name[:14].isdigit()}
        for ts in stamps:
            plan_path = outputs.plan_file(folder, ts)
            if not plan_path.is_file() or not outputs.settings_file(folder, ts).is_file():
                continue
            try:
                data = json.loads(plan_path.read_text(encoding="utf-8"))
                total = int(data["max_frames"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            have = outputs.contiguous_frames(folder, ts)
            if have == 0 and not _plan_progress(data):
                continue
            if have < total:
                found.append(UnfinishedRender(folder, ts, have, total, str(data.get("model_kind", "?"))))
    found.sort(key=lambda r: (r.timestring, r.folder.name), reverse=True)
    return found[:limit]


# ---------------------------------------------------------------------------
# Models


def model_choices(infos: Sequence["ModelInfo"]) -> dict[str, str]:
    """Dropdown label -> model folder; labels name the folder and its kind."""
    return {f"{info.name} ({info.kind})": str(info.path) for info in infos}


# Same order as the job queue's default model: the best continuity first.
KIND_ORDER = DEFAULT_KIND_ORDER


def pick_default_model(choices: Mapping[str, str], preferred: str | None) -> str | None:
    """The preferred model (label, folder name or path) if present, else the best kind found (VACE first)."""
    if preferred:
        for label, path in choices.items():
            if preferred in (label, path, Path(path).name):
                return label

    def rank(label: str) -> int:
        kind = label.rsplit("(", 1)[-1].rstrip(")")
        return KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)

    return min(choices, key=rank, default=None)


# ---------------------------------------------------------------------------
# Plan note and job results


def plan_summary(plan: Any, notes: list[str]) -> str:
    """The plan note: model, length, size, continuity, cost, then merged prompts, warnings and notes."""
    m = plan.metrics
    lines = [f"**{plan.model_kind}** at {plan.native_fps} fps → {plan.max_frames} frames at {plan.fps:g} fps "
             f"({m.seconds:.2f} s), {plan.width}×{plan.height}, continuity **{plan.continuity}**; "
             f"timing **{plan.timing}**; {m.clip_count} clip(s), {m.generated_frames} Wan frames for a timeline of "
             f"{m.timeline_frames} (×{m.generated_per_timeline:.2f}), cost {m.cost}"
             + (f" (×{m.cost / max(m.quality_cost, 1):.2f} of quality, preset **{plan.preset}**)"
                if plan.preset != "quality" else "")]
    lines += [f"- clip {c.index} merges prompts {', '.join(c.merged)} (shorter than the minimum clip length; the "
              "table edits the first)" for c in plan.clips if c.merged]
    lines += [f"- {w}" for w in (*plan.warnings, *notes)]
    return "\n".join(lines)


def last_frame(record: Any) -> str | None:
    """The newest frame of a finished or stopped job, for the preview."""
    preview = record_field(record, "preview")
    if preview and os.path.isfile(preview):
        return preview
    folder, ts = record_field(record, "outdir"), record_field(record, "timestring")
    if folder and ts:
        n = outputs.contiguous_frames(folder, ts)
        if n:
            return str(Path(folder) / outputs.frame_name(ts, n - 1))
    return None


def error_html(exc: BaseException) -> str:
    import html

    return f'<div class="deforum-wan-progress error">{html.escape(str(exc))}</div>'


# ---------------------------------------------------------------------------
# Job progress


def record_field(record: Any, name: str, default: Any = None) -> Any:
    """A field of a job record, whether the queue hands out dicts or objects."""
    if record is None:
        return default
    if isinstance(record, Mapping):
        return record.get(name, default)
    return getattr(record, name, default)


def is_terminal(record: Any) -> bool:
    return str(record_field(record, "status", "")).upper() in TERMINAL_STATUSES


def format_eta(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return ""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def progress_fraction(record: Any) -> float:
    """0..1 for the bar: frames written of the total, or the queue's phase_progress."""
    total = record_field(record, "frames_total") or 0
    written = record_field(record, "frames_written") or 0
    if total:
        frac = written / total
    else:
        frac = float(record_field(record, "phase_progress") or 0.0)
    if str(record_field(record, "status", "")).upper() == "SUCCEEDED":
        frac = 1.0
    return max(0.0, min(1.0, frac))


def progress_html(record: Any) -> str:
    """The tab's progress bar: phase, frames, ETA and the latest message, as a small HTML block."""
    import html

    if record is None:
        return '<div class="deforum-wan-progress idle">No render running.</div>'
    frac = progress_fraction(record)
    status = str(record_field(record, "status", "") or "")
    phase = str(record_field(record, "phase", "") or "")
    written = record_field(record, "frames_written") or 0
    total = record_field(record, "frames_total") or 0
    eta = format_eta(record_field(record, "eta_seconds"))
    message = str(record_field(record, "message", "") or "")
    parts = [p for p in (status, phase) if p]
    if total:
        parts.append(f"{written}/{total} frames")
    if eta and not is_terminal(record):
        parts.append(f"ETA {eta}")
    label = html.escape(" · ".join(parts))
    return (
        f'<div class="deforum-wan-progress" data-status="{html.escape(status)}" data-frames="{written}">'
        f'<div class="deforum-wan-bar"><div class="deforum-wan-bar-fill" style="width:{frac * 100:.1f}%"></div></div>'
        f'<div class="deforum-wan-progress-text">{label}</div>'
        f'<div class="deforum-wan-progress-message">{html.escape(message)}</div></div>'
    )


def enhance_rows(data: Any) -> list[list[Any]]:
    """Before/after rows from `deforum-wan enhance --json` output, tolerant of its exact shape."""
    if isinstance(data, Mapping):
        data = data.get("clips") or data.get("prompts") or data.get("rows") or []
    rows = []
    for i, item in enumerate(data or []):
        if isinstance(item, Mapping):
            before = item.get("before", item.get("prompt", item.get("original", "")))
            after = item.get("after", item.get("enhanced", item.get("enhanced_prompt", "")))
            rows.append([item.get("clip", item.get("index", i)), before, after])
        elif isinstance(item, (list, tuple)) and len(item) >= 2:
            rows.append([i, item[0], item[1]] if len(item) == 2 else list(item[:3]))
    return rows


def file_mtime(path: str | os.PathLike) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0
