"""The standalone app (`deforum-wan ui`): the same Wan tab and API without a web UI, served by uvicorn.

Apart from tab.py because it is the one place that owns a server: it binds to
127.0.0.1 unless told otherwise and, beyond this machine, only with a token.
"""
from __future__ import annotations

import os
from pathlib import Path

from .tab import TabContext, build_tab


def standalone_context(outdir: str, models_dir: str | None) -> TabContext:
    from ..core.specs import default_models_dir

    out = str(Path(outdir).expanduser().resolve())
    models = str(Path(models_dir).expanduser().resolve()) if models_dir else str(default_models_dir().resolve())
    here = os.getcwd()
    return TabContext(outdir=lambda: out, models_dir=lambda: models, output_roots=lambda: [out],
                      default_model=lambda: os.environ.get("DEFORUM_WAN_DEFAULT_MODEL"),
                      webui_root=here, standalone=True, allowed_roots=lambda: [out, here])


def build_app(outdir: str = "outputs", models_dir: str | None = None, token: str | None = None):
    """FastAPI app: the API routes and the tab mounted at /, behind `token` (default $DEFORUM_WAN_API_TOKEN) if set."""
    import gradio as gr
    from fastapi import FastAPI

    ctx = standalone_context(outdir, models_dir)
    app = FastAPI(title="Deforum Wan")
    from ..service import api

    api.add_routes(app, ctx.get_jobs().queue, allowed_roots=ctx.allowed_roots(), model_roots=[ctx.models_dir()])
    blocks = build_tab(ctx)
    if gr.__version__.startswith("3."):
        blocks.queue(concurrency_count=8)
    else:
        blocks.queue(default_concurrency_limit=8)
    return api.guard_standalone(gr.mount_gradio_app(app, blocks, path="/"), token)


def launch_standalone(host: str = "127.0.0.1", port: int = 7870, outdir: str = "outputs",
                      models_dir: str | None = None) -> int:
    """Serve the tab and the API with uvicorn until stopped; 127.0.0.1 unless told otherwise."""
    import uvicorn

    from ..service.api import refuse_standalone

    if refuse_standalone(host):  # beyond this machine only with $DEFORUM_WAN_API_TOKEN (exit 2, says why)
        return 2
    app = build_app(outdir, models_dir)
    print(f"Deforum Wan on http://{host}:{port}/", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
    return 0
