"""Shared fixtures. Tests never touch the network: the hub is switched off before anything imports it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Caches (enhancer outputs, fitted preview maps) go to a folder of this run, never the user's ~/.cache.
if "DEFORUM_WAN_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["DEFORUM_WAN_CACHE"] = tempfile.mkdtemp(prefix="deforum-wan-test-cache-")
    atexit.register(shutil.rmtree, os.environ["DEFORUM_WAN_CACHE"], True)


def host_python(host: str) -> Path:
    """The python of a stock host env (`.venv-a1111`, `.venv-forge`, built by `make test`): missing is a failure
    in CI, a skip elsewhere."""
    python = Path(__file__).resolve().parents[1] / f".venv-{host}" / "bin" / "python"
    if not python.exists():
        if os.environ.get("CI"):
            pytest.fail(f".venv-{host} is missing; `make test` builds it (mk/hosts.mk)")
        pytest.skip(f".venv-{host} is missing (make host-envs)")
    return python


def require_render_stack() -> None:
    """Skip the calling test unless torch, diffusers and transformers are installed."""
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every tiny kind (all Wan kinds and "qwen"), built once per test session: kind -> folder."""
    require_render_stack()
    from deforum_wan.renderer.tiny import make_tiny_models

    return make_tiny_models(tmp_path_factory.mktemp("tiny-models"))
