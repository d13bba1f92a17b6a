"""The optional prompt enhancer: a local Qwen instruct model rewrites each clip's prompt (cached)."""
