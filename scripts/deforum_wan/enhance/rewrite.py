"""The rewrite itself: one batched generate call for every clip, cached, never failing a render.

Wan was trained on long, concrete captions; short Deforum prompts render flatter.
A small local instruct model expands them, but it must never get in the way of a
render: it runs once per job, before the video model loads, with every unique
clip prompt in one batched greedy `generate` call, and is freed right after.
`QwenEnhancer` loads the model and makes that call (torch and transformers are
imported only there); `enhance_requests` serves the cache first and rewrites the
rest; `enhance_plan` applies the results to a clip plan. Every clip's request
carries the context of the whole video (context.py: the phrases its prompts
share, and the scenes before and after), so what persists is described the same
way in every clip. Any failure or timeout leaves the original prompts in place
and says why.
"""
from __future__ import annotations

import gc
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from . import prompting
from .cache import EnhanceCache
from .cleaning import clean_text
from .context import SceneContext, scene_contexts
from .options import DEFAULT_MAX_NEW_TOKENS, DEFAULT_TIMEOUT_SECONDS, EnhanceOptions, EnhanceRequest, EnhanceResult
from .prompting import chat_messages
from .qwen import QwenModel, inspect_qwen_folder, model_identity, resolve_qwen

if TYPE_CHECKING:  # pragma: no cover
    from ..core.plan import ClipPlan
    from ..core.settings import DeforumSettings

log = logging.getLogger(__name__)

EventCallback = Callable[[dict], None]


class EnhanceTimeout(RuntimeError):
    pass


def _dtype_kwarg() -> str:
    """transformers 4.56 renamed from_pretrained's torch_dtype to dtype."""
    import transformers

    try:
        major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    except ValueError:
        return "dtype"
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


class QwenEnhancer:
    """Loads a chat model once; `enhance_batch` rewrites many prompts in one generate call; `close` frees it."""

    def __init__(self, model: QwenModel | str | Path, device: str | None = None,
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, timeout_seconds: float | None = DEFAULT_TIMEOUT_SECONDS):
        self.info = model if isinstance(model, QwenModel) else inspect_qwen_folder(model)
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.timeout_seconds = timeout_seconds
        self.model: Any = None
        self.tokenizer: Any = None
        self.generate_calls = 0

    def __enter__(self) -> "QwenEnhancer":
        self.load()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def load(self) -> None:
        if self.model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.device is None:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        on_cuda = str(self.device).startswith("cuda")
        dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if on_cuda else torch.float32
        path = str(self.info.path)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        tokenizer.padding_side = "left"  # generation continues at the right edge of every row
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, **{_dtype_kwarg(): dtype})
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer

    def _deadline(self) -> Any:
        import torch
        from transformers import StoppingCriteria

        timeout = self.timeout_seconds

        class Deadline(StoppingCriteria):
            """Stops every row once wall time runs out, and remembers that it did."""

            def __init__(self) -> None:
                self.start = time.monotonic()
                self.fired = False

            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                self.fired = self.fired or (timeout is not None and time.monotonic() - self.start > timeout)
                return torch.full((input_ids.shape[0],), self.fired, dtype=torch.bool, device=input_ids.device)

        return Deadline()

    def generate(self, requests: Sequence[EnhanceRequest]) -> list[str]:
        """Raw completions for `requests`, in order, from ONE batched greedy generate call."""
        if not requests:
            return []
        import torch
        from transformers import StoppingCriteriaList

        self.load()
        tok = self.tokenizer
        texts = []
        for request in requests:
            messages = chat_messages(request)
            try:  # Qwen3-style templates think unless told not to; others ignore the flag
                texts.append(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                     enable_thinking=False))
            except TypeError:
                texts.append(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        deadline = self._deadline()
        self.generate_calls += 1
        with torch.inference_mode():
            out = self.model.generate(
                **batch, max_new_tokens=self.max_new_tokens, do_sample=False, temperature=None, top_p=None,
                top_k=None, pad_token_id=tok.pad_token_id, stopping_criteria=StoppingCriteriaList([deadline]),
            )
        if deadline.fired:
            raise EnhanceTimeout(f"timed out after {self.timeout_seconds:g} s")
        new = out[:, batch["input_ids"].shape[1]:]
        return [str(t) for t in tok.batch_decode(new, skip_special_tokens=True)]

    def enhance_batch(self, requests: Sequence[EnhanceRequest]) -> list[EnhanceResult]:
        """Generate and clean; errors propagate (the callers that must not fail catch them)."""
        raws = self.generate(requests)
        return [_result(r, raw, "model") for r, raw in zip(requests, raws)]

    def close(self) -> None:
        """Free the weights now, so the video model has the memory."""
        had_model = self.model is not None
        self.model = None
        self.tokenizer = None
        gc.collect()
        if had_model:
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except Exception as exc:  # pragma: no cover - freeing must never fail a render
                log.debug("could not empty the CUDA cache: %s", exc)


def _result(request: EnhanceRequest, raw: str, source: str) -> EnhanceResult:
    neighbours = tuple(n for n in (request.previous, request.next) if n)
    text, reason, notes = clean_text(raw, request.movement, request.prompt, neighbours)
    return EnhanceResult(request=request, text=text, enhanced=reason is None, source=source, reason=reason,
                         notes=notes, raw=raw)


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def enhance_requests(requests: Sequence[EnhanceRequest], options: EnhanceOptions,
                     on_event: EventCallback | None = None) -> tuple[list[EnhanceResult], QwenModel]:
    """Results for `requests` in order: cache first, then one generate call for the unique rest.

    Raises EnhanceError only when no model can be chosen; a model that fails or times out
    gives fallback results (source "none") and a warning event.
    """
    emit = on_event or (lambda event: None)

    def status(message: str) -> None:
        emit({"type": "status", "phase": "enhancing", "message": message})

    device = options.device or _default_device()
    model = resolve_qwen(options.qwen, options.models_dir, device, options.hub_cache)
    model_id = model_identity(model)
    cache = None if options.no_cache else EnhanceCache(options.cache_dir)
    unique = list(dict.fromkeys(requests))
    raws: dict[EnhanceRequest, tuple[str, str]] = {}  # request -> (raw, source)
    keys = {r: EnhanceCache.key(model_id, r, options.max_new_tokens) for r in unique}
    if cache is not None:
        for r in unique:
            raw = cache.get(keys[r])
            if raw is not None:
                raws[r] = (raw, "cache")
    missing = [r for r in unique if r not in raws]
    failure: str | None = None
    status(f"{len(requests)} prompts, {len(unique)} unique, {len(unique) - len(missing)} from cache"
           + (f"; rewriting {len(missing)} with {model.label} on {device}" if missing else ""))
    if missing:
        enhancer = QwenEnhancer(model, device=device, max_new_tokens=options.max_new_tokens,
                                timeout_seconds=options.timeout_seconds)
        started = time.perf_counter()
        try:
            outputs = enhancer.generate(missing)
        except EnhanceTimeout as exc:
            failure = str(exc)
        except Exception as exc:  # a broken model must not stop the render
            log.debug("enhancer failed", exc_info=True)
            failure = f"the model failed: {type(exc).__name__}: {exc}"
        else:
            for r, raw in zip(missing, outputs):
                raws[r] = (raw, "model")
                if cache is not None:
                    try:
                        cache.put(keys[r], raw, {"model": model_id, "request": asdict(r),
                                                 "system_prompt_version": prompting.SYSTEM_PROMPT_VERSION})
                    except OSError as exc:
                        log.warning("cannot write the prompt cache in %s: %s", cache.folder, exc)
        finally:
            enhancer.close()
        if failure:
            emit({"type": "warning", "message": f"prompt enhancer: {failure}; original prompts kept"})
        else:
            status(f"rewrote {len(missing)} prompts in {time.perf_counter() - started:.1f} s; model freed")
    results = []
    for r in requests:
        if r in raws:
            raw, source = raws[r]
            results.append(_result(r, raw, source))
        else:
            results.append(EnhanceResult(request=r, text=r.prompt, enhanced=False, source="none", reason=failure))
    return results, model


def clip_requests(clips: Sequence[Any], opts: EnhanceOptions) -> list[EnhanceRequest]:
    """One request per clip: its prompt and camera words, with the job's style and language.

    With `opts.shared_context` (the default) every request also carries the context drawn
    once from all of `clips`: the same shared line for all, and each clip's neighbours.
    """
    none = SceneContext()
    contexts = scene_contexts([c.prompt for c in clips]) if opts.shared_context else [none] * len(clips)
    return [EnhanceRequest(prompt=c.prompt, movement=c.movement, style=opts.style,
                           style_strength=opts.style_strength if opts.style else 0.0,
                           language=opts.target_language, shared=ctx.shared, previous=ctx.previous, next=ctx.next)
            for c, ctx in zip(clips, contexts)]


def enhance_plan(plan: ClipPlan, settings: DeforumSettings, options: dict, on_event: EventCallback) -> ClipPlan:
    """The plan with enhanced prompts for the clips the model rewrote well; never raises.

    Called before the video model loads. On any failure it emits warning events and
    returns the plan unchanged (clips keep their prompt + camera words).
    """
    emit = on_event or (lambda event: None)
    try:
        opts = EnhanceOptions.from_dict(options)
        clips = [c for c in plan.clips if c.prompt.strip()]
        if not clips:
            return plan
        requests = clip_requests(clips, opts)  # the whole plan's context, drawn once
        if requests[0].shared:
            emit({"type": "status", "phase": "enhancing",
                  "message": f"describing the same in every clip: {requests[0].shared}"})
        results, _model = enhance_requests(requests, opts, emit)
        prompts = {c.index: r.text for c, r in zip(clips, results) if r.enhanced}
        by_reason: dict[str, list[int]] = {}
        for c, r in zip(clips, results):
            if not r.enhanced and r.source != "none" and r.reason:
                by_reason.setdefault(r.reason, []).append(c.index)
        for reason, indices in by_reason.items():
            which = ", ".join(str(i) for i in indices)
            emit({"type": "warning", "message": f"prompt enhancer: {reason} for clip(s) {which}; original prompt kept"})
        cached = sum(r.source == "cache" for r in results)
        emit({"type": "status", "phase": "enhancing",
              "message": f"enhanced {len(prompts)} of {len(plan.clips)} clip prompts ({cached} from cache)"})
        return plan.with_prompts(prompts)
    except Exception as exc:  # the render goes on whatever happens here
        log.debug("enhance_plan failed", exc_info=True)
        emit({"type": "warning", "message": f"prompt enhancer skipped: {exc}"})
        return plan
