"""Renders in the stock web UIs: the worker's torch, its isolation from the host, install.py as the host runs it.

.venv-a1111 and .venv-forge hold what stock Automatic1111 1.10.1 and Forge
install: torch 2.1.2 / 2.3.1 (too old for diffusers' Wan) and the old kornia,
peft, diffusers and transformers that break diffusers 0.42 when it can see
them. From each, install.py fills a private folder the way the web UI runs it,
a render goes through the bridge with the host's own python, and the host's
packages are the same afterwards.

The private torch those hosts get is `torch==2.13.0` through DEFORUM_WAN_TORCH:
the CPU build this machine holds stands in for the CPU build a user without a
GPU downloads from PyTorch's index (which this machine cannot reach); the
choice itself is tested in the table below.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import host_python

from deforum_wan.service import deps, isolation, torchenv
from deforum_wan.service.torchenv import Gpu, HostTorch, choose_torch

REPO = Path(__file__).resolve().parents[1]
PRIVATE_TORCH = "torch==2.13.0"

# --------------------------------------------------------------------------- the choice (pure)

A1111 = dict(version="2.1.2+cu121", cuda="12.1", hip=None, system="linux", machine="x86_64", python=(3, 10))
RTX4090 = Gpu("NVIDIA GeForce RTX 4090", (8, 9), "550.54.14", 24564)
RTX5090 = Gpu("NVIDIA GeForce RTX 5090", (12, 0), "575.51.02", 32607)


@pytest.mark.parametrize("host, flavour, requirement, index", [
    (HostTorch(**A1111, gpus=(RTX4090,)), "cu126", "torch==2.9.1+cu126", "https://download.pytorch.org/whl/cu126"),
    (HostTorch(**A1111, gpus=(RTX5090,)), "cu128", "torch==2.9.1+cu128", "https://download.pytorch.org/whl/cu128"),
    (HostTorch(**{**A1111, "system": "win32"}, gpus=(RTX4090,)), "cu126", "torch==2.9.1+cu126",
     "https://download.pytorch.org/whl/cu126"),  # PyPI's Windows torch has no CUDA
    (HostTorch(**A1111), "cpu", "torch==2.9.1+cpu", "https://download.pytorch.org/whl/cpu"),  # CUDA build, no GPU
    (HostTorch(**{**A1111, "system": "win32"}), "cpu", "torch==2.9.1", None),
    (HostTorch(**{**A1111, "version": "2.3.1+rocm5.7", "cuda": None, "hip": "5.7"}), "rocm6.4",
     "torch==2.9.1+rocm6.4", "https://download.pytorch.org/whl/rocm6.4"),
    (HostTorch(**{**A1111, "system": "darwin", "machine": "arm64", "cuda": None}), "mps", "torch==2.9.1", None),
    (HostTorch(**{**A1111, "version": None, "cuda": None}), "cpu", "torch==2.9.1+cpu",
     "https://download.pytorch.org/whl/cpu"),
])
def test_an_old_or_missing_host_torch_gets_a_private_torch_of_the_right_flavour(host, flavour, requirement, index):
    choice = choose_torch(host)
    assert (choice.mode, choice.flavour, choice.requirement, choice.index_url) == ("private", flavour, requirement, index)
    assert "2.6" in choice.reason  # says why the host's torch is not used


def test_a_host_torch_that_can_run_the_renderer_is_reused():
    for version in ("2.6.0+cu124", "2.7.1", "2.13.0+cpu"):
        choice = choose_torch(HostTorch(**{**A1111, "version": version}, gpus=(RTX4090,)))
        assert choice.mode == "host" and choice.requirement is None and version in choice.reason


def test_overrides_and_hosts_nothing_can_serve():
    host = HostTorch(**A1111, gpus=(RTX4090,))
    custom = choose_torch(host, "torch==2.8.0", "https://example.invalid/whl/cu129")
    assert (custom.mode, custom.requirement, custom.index_url) == ("private", "torch==2.8.0",
                                                                    "https://example.invalid/whl/cu129")
    assert choose_torch(host, "host").mode == "host"  # the user insists (at their own risk)
    old_driver = choose_torch(HostTorch(**A1111, gpus=(Gpu("Tesla P100", (6, 0), "470.82.01", 16280),)))
    assert old_driver.mode == "unsupported" and "driver" in old_driver.reason and torchenv.ENV_TORCH in old_driver.reason
    kepler = choose_torch(HostTorch(**A1111, gpus=(Gpu("Tesla K80", (3, 7), "535.0", 11441),)))
    assert kepler.mode == "unsupported" and "3.7" in kepler.reason


def test_host_facts_are_read_without_importing_torch(tmp_path):
    code = ("import sys; from deforum_wan.service import torchenv; h = torchenv.read_host_torch(); "
            "print(h.version, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    version, imported = out.stdout.split()
    assert version.startswith("2.") and imported == "False"


# --------------------------------------------------------------------------- isolation (a fake host)


def _fake_dist(site: Path, name: str, version: str, body: str = "") -> None:
    (site / name).mkdir(parents=True)
    (site / name / "__init__.py").write_text(body or f"__version__ = {version!r}\n")
    info = site / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "top_level.txt").write_text(name + "\n")


def test_the_worker_sees_its_private_folder_and_allowed_host_packages_only(tmp_path):
    host, private = tmp_path / "host-site", tmp_path / "private"
    _fake_dist(host, "kornia", "0.6.7")
    _fake_dist(host, "goodtorch", "2.1.2")
    _fake_dist(private, "newlib", "1.0")
    _fake_dist(host, "peft", "0.13.2")
    _fake_dist(private, "peft", "0.21.2")  # the private folder's own peft (for LoRAs) is not a host package seen
    config = {"trusted": [str(private)], "allow": ["goodtorch"]}
    code = textwrap.dedent("""
        import importlib.metadata as md, importlib.util, json, sys
        from deforum_wan.service import isolation
        isolation.install_from_environment()
        def version(name):
            try:
                return md.version(name)
            except md.PackageNotFoundError:
                return None
        import goodtorch, newlib, json as stdlib_ok
        print(json.dumps({"kornia_spec": importlib.util.find_spec("kornia") is not None,
                          "kornia_meta": version("kornia"), "goodtorch": version("goodtorch"),
                          "newlib": newlib.__file__, "dists": sorted(d.metadata["Name"] for d in md.distributions()
                                                                    if d.metadata["Name"] in ("kornia", "goodtorch")),
                          "peft_from_host": isolation.from_host(importlib.util.find_spec("peft").origin),
                          "goodtorch_from_host": isolation.from_host(importlib.util.find_spec("goodtorch").origin)}))
        try:
            import kornia
        except ModuleNotFoundError as exc:
            print("refused", exc.name)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(private), str(REPO / "scripts"), str(host)]),
           isolation.ENV: json.dumps(config)}
    out = subprocess.run([sys.executable, "-s", "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    seen = json.loads(lines[0])
    assert seen["kornia_spec"] is False and seen["kornia_meta"] is None  # diffusers' availability checks say "absent"
    assert seen["goodtorch"] == "2.1.2" and seen["dists"] == ["goodtorch"]
    assert seen["newlib"].startswith(str(private))
    assert seen["peft_from_host"] is False and seen["goodtorch_from_host"] is True
    assert lines[1] == "refused kornia"


# --------------------------------------------------------------------------- the stock hosts


FAKE_LAUNCH = '''
import importlib.util, subprocess, sys
def is_installed(name):
    return importlib.util.find_spec(name) is not None
def run_pip(command, desc=None):
    print("RUN_PIP " + command, flush=True)
    subprocess.run([sys.executable, "-m", "pip", *command.replace('"', "").split()], check=True)
'''
STOCK = {
    "a1111": {"torch": "2.1.2", "kornia": "0.6.7", "transformers": "4.30.2"},
    "forge": {"torch": "2.3.1", "kornia": "0.6.7", "peft": "0.13.2", "diffusers": "0.31.0", "transformers": "4.46.1"},
}


def _freeze(python: Path) -> list[str]:
    out = subprocess.run([str(python), "-m", "pip", "freeze", "--all"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return sorted(out.stdout.splitlines())


def _install_py(python: Path, webui: Path, env: dict) -> subprocess.CompletedProcess:
    """As launch_utils.run_extension_installer: the web UI's python, PYTHONPATH = web-UI root, cwd = extension."""
    return subprocess.run([str(python), str(REPO / "install.py")], capture_output=True, text=True, cwd=REPO,
                          env={**env, "PYTHONPATH": str(webui)}, timeout=1800)


@pytest.fixture(scope="module", params=["a1111", "forge"])
def stock_host(request, tmp_path_factory):
    """A stock host env whose private folder install.py filled; the host's pip freeze before and after."""
    host = request.param
    python = host_python(host)
    root = tmp_path_factory.mktemp(f"host-{host}")
    webui = root / "webui"
    webui.mkdir()
    (webui / "launch.py").write_text(FAKE_LAUNCH)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEFORUM_WAN_")}
    env.update({deps.ENV_DEPS_DIR: str(root / "deps"), torchenv.ENV_TORCH: PRIVATE_TORCH,
                "DEFORUM_WAN_JOBS_DB": str(root / "jobs.sqlite3")})
    before = _freeze(python)
    first = _install_py(python, webui, env)
    manifest = deps.read_manifest(root / "deps")
    second = _install_py(python, webui, env)
    return {"host": host, "python": python, "root": root, "env": env, "before": before, "after": _freeze(python),
            "first": first, "second": second, "manifest": manifest, "manifest_after": deps.read_manifest(root / "deps")}


def test_the_stock_host_really_is_stock(stock_host):
    """The env holds the host's own torch and the old packages (else the tests below prove nothing)."""
    frozen = {line.split("==")[0].lower(): line.split("==")[1] for line in stock_host["before"] if "==" in line}
    for name, version in STOCK[stock_host["host"]].items():
        assert frozen[name].split("+")[0] == version, name


def test_install_py_gives_an_old_host_a_private_torch_and_runs_once(stock_host):
    first, second = stock_host["first"], stock_host["second"]
    assert first.returncode == 0 and second.returncode == 0, first.stdout + first.stderr
    assert "worker torch: DEFORUM_WAN_TORCH asks for torch==2.13.0" in first.stdout
    assert "to download" in first.stdout and "renderer libraries ready" in first.stdout
    manifest = stock_host["manifest"]
    assert manifest["torch"]["mode"] == "private" and manifest["torch"]["version"].startswith("2.13.0")
    assert manifest["torch"]["host_version"].startswith(STOCK[stock_host["host"]]["torch"])
    assert (stock_host["root"] / "deps" / "torch").is_dir() and manifest["host"] == {}
    # the second start: one line, no pip, the folder untouched
    assert second.stdout.strip().splitlines() == [line for line in second.stdout.strip().splitlines()
                                                   if "renderer libraries ready" in line]
    assert "RUN_PIP" not in second.stdout and stock_host["manifest_after"] == manifest


def test_the_hosts_packages_are_never_changed(stock_host):
    assert stock_host["after"] == stock_host["before"]


@pytest.mark.slow
def test_a_render_from_the_stock_host_runs_on_the_private_torch(stock_host, tiny_models, tmp_path):
    out = subprocess.run([str(stock_host["python"]), str(REPO / "tests" / "host_render_check.py"),
                          str(tiny_models["vace"].parent), str(tmp_path / "out")], capture_output=True, text=True,
                         env=stock_host["env"], cwd=tmp_path, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["status"] == "done" and seen["frames_on_disk"] == seen["frames_total"] == 17
    assert seen["video_frames"] == [17, 16.0]
    env = seen["environment"]
    deps_dir = str((stock_host["root"] / "deps").resolve())
    assert seen["host_torch"].startswith(STOCK[stock_host["host"]]["torch"])
    assert env["torch"].startswith("2.13.0") and env["torch_path"].startswith(deps_dir)
    assert env["diffusers_path"].startswith(deps_dir) and env["transformers_path"].startswith(deps_dir)
    assert env["executable"] == str(stock_host["python"])
    assert env["host_packages_seen"] == {}  # kornia 0.6.7 and peft 0.13.2 are there, and hidden


def test_doctor_explains_the_stock_host(stock_host, tiny_models, tmp_path):
    out = subprocess.run([str(stock_host["python"]), "-m", "deforum_wan", "doctor", "--json", "--models-dir",
                          str(tiny_models["vace"].parent)], capture_output=True, text=True,
                         env=stock_host["env"], cwd=tmp_path, timeout=600)
    report = json.loads(out.stdout)
    assert out.returncode == 0 and report["ok"], report["fixes"]
    assert report["host"]["torch"].startswith(STOCK[stock_host["host"]]["torch"])
    assert report["private"]["problem"] is None and report["private"]["torch"]["mode"] == "private"
    assert report["worker"]["torch"].startswith("2.13.0") and report["worker"]["diffusers"] == "0.42.1"
    assert {m["kind"] for m in report["models"]} >= {"vace", "t2v"}
    text = subprocess.run([str(stock_host["python"]), "-m", "deforum_wan", "doctor", "--models-dir",
                           str(tiny_models["vace"].parent)], capture_output=True, text=True, env=stock_host["env"],
                          cwd=tmp_path, timeout=600).stdout
    assert "Nothing to fix." in text and len(text.splitlines()) <= 40  # one screen


@pytest.mark.slow
def test_a_host_with_a_current_torch_reuses_it(tmp_path):
    """The test env's own torch (2.13) runs the renderer: no second torch is installed."""
    target = tmp_path / "deps"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEFORUM_WAN_")}
    out = subprocess.run([sys.executable, "-m", "deforum_wan", "install-deps", str(target)], capture_output=True,
                         text=True, env=env, timeout=1800)
    assert out.returncode == 0, out.stdout + out.stderr
    manifest = deps.read_manifest(target)
    assert manifest["torch"]["mode"] == "host" and "reused" in manifest["torch"]["reason"]
    assert not (target / "torch").exists() and not any(n.startswith(("torch", "nvidia")) for n in manifest["installed"])
    env[deps.ENV_DEPS_DIR] = str(target)
    probe = subprocess.run([sys.executable, "-m", "deforum_wan", "doctor", "--json"], capture_output=True, text=True,
                           env=env, cwd=tmp_path, timeout=600)
    worker = json.loads(probe.stdout)["worker"]
    import torch

    assert worker["torch_path"] == os.path.dirname(torch.__file__)
    assert worker["diffusers_path"].startswith(str(target.resolve()))
    assert "torch" in worker["isolation"]["allowed"]


def test_the_tabs_environment_panel_says_what_is_missing_and_the_command_that_fixes_it(tmp_path, monkeypatch):
    from test_deps import SMALL_REPORT, FakePip

    from deforum_wan.service import doctor

    monkeypatch.setenv(deps.ENV_DEPS_DIR, str(tmp_path / "deps"))
    text = doctor.summary_markdown()
    assert "Renders cannot run yet" in text and deps.install_command() in text
    deps.install_private_deps(str(tmp_path / "deps"), runner=FakePip(SMALL_REPORT), out=lambda s: None)
    text = doctor.summary_markdown()
    assert "cannot run" not in text and "diffusers 0.42.1" in text and "reused" in text
