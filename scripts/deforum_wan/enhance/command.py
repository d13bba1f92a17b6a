"""`deforum-wan enhance SETTINGS`: each clip's prompt before and after the rewrite.

The command shows what `--enhance` would render without loading a video model.
The caller plans the clips (it owns the model kinds and the planning flags), so
this package never imports the command line; here the enhance flags become
`EnhanceOptions` and the results are printed as text or JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Sequence

from .options import EnhanceOptions, EnhanceResult
from .rewrite import clip_requests, enhance_requests

if TYPE_CHECKING:  # pragma: no cover
    from ..core.plan import ClipPlan


def format_results(plan: ClipPlan, results: Sequence[EnhanceResult], width: int = 100) -> str:
    """Before/after per clip, as the `enhance` command prints it."""
    import textwrap

    def wrap(label: str, text: str) -> str:
        return textwrap.fill(text, width, initial_indent=f"  {label:<10}", subsequent_indent=" " * 12)

    lines = []
    for clip, r in zip(plan.clips, results):
        if r.enhanced:
            how = "enhanced" + (f" ({'; '.join(r.notes)})" if r.notes else "")
        else:
            how = f"kept original: {r.reason}"
        how += " [from cache]" if r.source == "cache" else ""
        lines.append(f"clip {clip.index}  frames {clip.output_start}-{clip.output_end - 1} "
                     f"({clip.output_frames})  {how}")
        lines.append(wrap("prompt", clip.prompt or "(none)"))
        lines.append(wrap("movement", clip.movement or "(none)"))
        lines.append(wrap("renders", r.text if r.enhanced else clip.render_prompt))
        lines.append("")
    return "\n".join(lines).rstrip()


def _shared_context(args: argparse.Namespace) -> bool | None:
    """--no-shared-context or shared_context=False turn the video's context off; None: the default."""
    if getattr(args, "no_shared_context", False):
        return False
    return getattr(args, "shared_context", None)


def run_enhance_command(args: argparse.Namespace, plan: ClipPlan) -> int:
    """`deforum-wan enhance SETTINGS`: rewrite the prompts of `plan`, show before and after.

    The caller plans the clips from the same arguments (model kind, planning flags, seed).
    """
    opts = EnhanceOptions.from_dict({
        "qwen": args.qwen, "style": args.style, "style_strength": args.style_strength,
        "target_language": args.target_language, "no_cache": args.no_cache,
        "models_dir": getattr(args, "models_dir", None), "cache_dir": getattr(args, "cache_dir", None),
        "timeout_seconds": getattr(args, "timeout_seconds", None),
        "max_new_tokens": getattr(args, "max_new_tokens", None),
        "shared_context": _shared_context(args),
    })

    def on_event(event: dict) -> None:
        print(f"{event['type']}: {event['message']}" if event["type"] == "warning" else event["message"],
              file=sys.stderr)

    results, model = enhance_requests(clip_requests(plan.clips, opts), opts, on_event)
    if args.json:
        rows = [{"clip": c.index, "frames": [c.output_start, c.output_end], "prompt": c.prompt,
                 "movement": c.movement, "enhanced": r.text if r.enhanced else None,
                 "render_prompt": r.text if r.enhanced else c.render_prompt, "source": r.source,
                 "fallback_reason": r.reason, "notes": list(r.notes)} for c, r in zip(plan.clips, results)]
        shared = results[0].request.shared if results else ""
        print(json.dumps({"model": str(model.path), "target_language": opts.target_language, "shared": shared,
                          "clips": rows}, indent=2, ensure_ascii=False))
    else:
        print(f"model: {model.label} at {model.path}")
        if results and results[0].request.shared:
            print(f"described the same in every clip: {results[0].request.shared}")
        print(format_results(plan, results))
    return 0
