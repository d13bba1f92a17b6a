"""LoRAs and a step cache on one job's pipelines: checked before loading, applied after, per clip, removed.

The plan names the user's LoRAs (`--lora`), the prompts name theirs per clip
(`<lora:name:weight>`), and the plan names the step cache (`--cache`). A LoRA that
cannot be found or does not fit the model fails here before any weights load.
After loading, every LoRA is loaded once for the job (both A14B experts get
theirs), each clip sets the weights its prompt asks for, and the cache is put on
the transformer(s). `close` takes both off again, so pipelines the caller passed
in are left as they came.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..core.plan import Clip, ClipPlan
from ..core.specs import default_models_dir


class Speedups:
    """What one job adds to its pipelines beyond the model: LoRAs (per-clip weights) and a step cache."""

    def __init__(self, plan: ClipPlan, model_path: Path | None, models_dir: str | None):
        from .loras import check_lora, lora_dirs, parse_lora_arg, read_transformer_config, resolve_loras

        self.plan = plan
        self.handle: Any = None
        self.cached: list[Any] = []
        root = Path(models_dir or default_models_dir()).expanduser()
        # <webui>/models/wan -> the web UI's own LoRA folder <webui>/models/Lora as well
        webui = root.parent.parent if root.name.lower() == "wan" and root.parent.name.lower() == "models" else None
        names = [name for clip in plan.clips for name, _weight in clip.loras]
        self.loras = resolve_loras([parse_lora_arg(text) for text in plan.loras], lora_dirs(root, webui), names)
        folder = model_path if model_path is not None and (model_path / "transformer").is_dir() else None
        if folder is not None:
            config = read_transformer_config(folder)
            for lora in self.loras:
                check_lora(lora.info, config)

    def apply(self, pipelines: Any, emit: Callable[[dict], None]) -> None:
        """Load the LoRAs and put the cache on, once for the job."""
        from ..core.speed import parse_cache

        if self.loras:
            from .loras import apply_loras

            self.handle = apply_loras(pipelines, self.loras)
            emit({"type": "status", "phase": "loaded",
                  "message": "LoRAs: " + ", ".join(f"{lora.name} ({lora.path.name})" for lora in self.loras)})
        spec = parse_cache(self.plan.cache)
        if spec is not None:
            from .caches import apply_cache, transformers_of

            transformers = transformers_of(*pipelines.pipes())
            steps = max((clip.steps for clip in self.plan.clips), default=1)
            apply_cache(transformers, spec, steps, area=self.plan.width * self.plan.height)
            self.cached = transformers
            emit({"type": "status", "phase": "loaded", "message": f"step cache {spec}"})

    def clip(self, clip: Clip) -> None:
        """The LoRA weights this clip's prompt asks for (the user's elsewhere; 0 for LoRAs it does not name)."""
        if self.handle is not None:
            from .loras import clip_weights

            self.handle.set_weights(clip_weights(clip.loras, self.loras))

    def close(self) -> None:
        if self.cached:
            from .caches import remove_cache

            remove_cache(self.cached)
            self.cached = []
        if self.handle is not None:
            self.handle.unload()
            self.handle = None
