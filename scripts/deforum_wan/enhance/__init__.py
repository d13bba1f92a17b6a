"""The optional prompt enhancer: a local Qwen instruct model rewrites each clip's prompt (cached).

options    what a caller asks (EnhanceOptions, EnhanceRequest) and gets back (EnhanceResult)
qwen       finding, inspecting, choosing and downloading Qwen models
context    what the prompts of a video share, and each clip's neighbouring scenes
prompting  the system prompt and the per-clip user message
cleaning   turning model output into a usable prompt, or the reason it is not one
cache      raw model outputs on disk, so a re-render makes no model call
rewrite    QwenEnhancer (one batched generate call), enhance_requests, enhance_plan
command    the `deforum-wan enhance` command

The web UI loads this package: no module here imports torch or transformers at import time,
and none imports the command line, the renderer, the service or the web UI.
"""
