"""The private folder of renderer libraries: right versions per Python, never a second torch, no pip when ready."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deforum_wan.service import deps


def _item(name: str, version: str, *requires: str) -> dict:
    item = {"metadata": {"name": name, "version": version, "requires_dist": list(requires)}}
    if name in ("diffusers", "transformers", "accelerate"):
        item["requested"] = True
    return item


FAKE_REPORT = {
    "version": "1",
    "install": [
        _item("diffusers", "0.42.1", "huggingface-hub>=1.32", "numpy", "Pillow", "filelock", "safetensors>=0.8"),
        _item("transformers", "5.23.0", "huggingface-hub>=1.31,<3", "numpy>=1.17", "tokenizers>=0.23.1,<0.24",
              "typing-extensions>=4.99; python_version < '3.0'"),
        _item("accelerate", "1.15.0", "torch>=2.0.0", "numpy>=1.17", "fsspec>=2099.1"),
        _item("huggingface_hub", "2.4.0", "filelock>=3.10", "fsspec>=2023.5.0", "typing-extensions>=4.1"),
        _item("tokenizers", "0.23.3"),
        _item("safetensors", "0.8.0"),
        _item("numpy", "2.4.6"),
        _item("Pillow", "13.0.0"),
        _item("filelock", "4.2.11"),
        _item("fsspec", "2099.1.0"),
        _item("typing_extensions", "4.16.0"),
        # torch and its own tree, as pip reports them when the host has no torch
        _item("torch", "2.14.1", "sympy>=1.13", "networkx", "nvidia-cublas; platform_system == 'Linux'",
              "triton==3.8.0", "cuda-bindings", "filelock"),
        _item("sympy", "1.14.0", "mpmath"),
        _item("mpmath", "1.3.0"),
        _item("networkx", "3.6.1"),
        _item("nvidia-cublas", "13.1.1.3"),
        _item("nvidia_cudnn_cu13", "9.24.0.43"),
        _item("triton", "3.8.0"),
        _item("cuda-bindings", "13.5.0"),
    ],
}
HOST = {"numpy": "1.26.4", "pillow": "10.4.0", "filelock": "3.13.1", "fsspec": "2024.6.1",
        "typing-extensions": "4.12.2", "torch": "2.13.0", "sympy": "1.13.1"}
SHARED = {"numpy", "pillow", "filelock", "fsspec", "typing-extensions", "sympy", "mpmath", "networkx"}


def test_python_310_gets_the_newest_versions_that_run_on_it():
    old, new = deps.requirements_for((3, 10)), deps.requirements_for((3, 11))
    assert "diffusers==0.41.0" in old and "transformers==5.20.2" in old
    assert "diffusers==0.42.1" in new and "transformers==5.23.0" in new
    assert deps.requirements_for((3, 13)) == new
    for reqs in (old, new):
        assert any(r.startswith("accelerate") for r in reqs)
        assert "huggingface_hub>=1.0" in reqs  # transformers 5 needs 1.x; gradio 3/4 keep the host's 0.x
        assert not any(r.split("=")[0].split(">")[0] == "torch" for r in reqs)  # the torch is chosen apart
        # what the package's own core imports: the worker sees nothing of the host but its torch
        assert {"numpy>=1.23", "numexpr>=2.8", "pillow>=9.0", "imageio-ffmpeg>=0.4.9"} <= set(reqs)


def test_python_older_than_310_is_refused_with_a_message():
    with pytest.raises(ValueError, match="Python 3.10 or newer"):
        deps.requirements_for((3, 9))


def test_plan_never_installs_torch_nvidia_triton_or_cuda():
    plan = deps.plan_from_report(FAKE_REPORT, shared=SHARED, host=HOST.get)
    names = set(plan.private)
    assert not {n for n in names if n.startswith(("torch", "nvidia", "triton", "cuda"))}
    assert {"torch", "nvidia-cublas", "nvidia-cudnn-cu13", "triton", "cuda-bindings"} <= set(plan.dropped)
    # torch-only dependencies are left to the host's torch too
    assert not {"sympy", "mpmath", "networkx"} & names


def test_plan_keeps_host_numpy_and_pillow_and_installs_what_the_host_lacks():
    plan = deps.plan_from_report(FAKE_REPORT, shared=SHARED, host=HOST.get)
    assert {"diffusers", "transformers", "accelerate", "huggingface-hub", "tokenizers", "safetensors"} <= set(plan.private)
    assert plan.host["numpy"]["version"] == "1.26.4" and plan.host["pillow"]["version"] == "10.4.0"
    assert plan.host["filelock"]["needs"] == ">=3.10"
    # a marker that does not apply (python_version < '3.0') does not force a newer typing-extensions
    assert "typing-extensions" in plan.host
    # the host's fsspec is too old for what the fake accelerate asks: a private copy, and the plan says why
    assert plan.private["fsspec"] == "2099.1.0"
    assert any("fsspec" in note and "2024.6.1" in note for note in plan.notes)


def test_plan_installs_numpy_privately_only_when_the_host_has_none():
    plan = deps.plan_from_report(FAKE_REPORT, shared=SHARED, host={**HOST, "numpy": None}.get)
    assert plan.private["numpy"] == "2.4.6"


class FakePip:
    """Answers pip's resolve and install calls like pip would, and counts them."""

    def __init__(self, report: dict, fail_install: bool = False):
        self.report, self.fail_install, self.calls = report, fail_install, []

    def __call__(self, args):
        args = list(args)
        self.calls.append(args)
        if "--dry-run" in args:
            Path(args[args.index("--report") + 1]).write_text(json.dumps(self.report))
        elif self.fail_install:
            return subprocess.CompletedProcess(args, 1, "", "ERROR: No matching distribution found for tokenizers")
        else:
            target = Path(args[args.index("--target") + 1])
            for spec in (a for a in args if "==" in a):
                name, version = spec.split("==")
                (target / f"{name.replace('-', '_')}-{version}.dist-info").mkdir(parents=True)
                (target / name.replace("-", "_")).mkdir(exist_ok=True)
        return subprocess.CompletedProcess(args, 0, "", "")


SMALL_REPORT = {"install": [r for r in FAKE_REPORT["install"] if r["metadata"]["name"] not in ("fsspec", "accelerate")]}


def test_second_install_calls_no_pip_when_the_manifest_matches(tmp_path):
    target = tmp_path / "deps"
    pip, lines = FakePip(SMALL_REPORT), []
    assert deps.install_private_deps(str(target), runner=pip, out=lines.append) == 0
    assert len(pip.calls) == 2  # one resolve, one install
    assert deps.deps_satisfied(target)
    manifest = deps.read_manifest(target)
    assert manifest["python"] == f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert manifest["requirements"] == deps.requirements_for(sys.version_info[:2])
    assert "torch" not in manifest["installed"] and "diffusers" in manifest["installed"]
    assert (target / "diffusers").is_dir()

    again = FakePip(SMALL_REPORT)
    assert deps.install_private_deps(str(target), runner=again, out=lines.append) == 0
    assert again.calls == []
    assert "ready" in lines[-1]


def test_a_stale_folder_is_reinstalled(tmp_path):
    target = tmp_path / "deps"
    deps.install_private_deps(str(target), runner=FakePip(SMALL_REPORT), out=lambda s: None)
    manifest = json.loads((target / deps.MANIFEST).read_text())
    manifest["python"] = "3.9"
    (target / deps.MANIFEST).write_text(json.dumps(manifest))
    assert "python" in deps.why_unsatisfied(target)
    pip = FakePip(SMALL_REPORT)
    assert deps.install_private_deps(str(target), runner=pip, out=lambda s: None) == 0
    assert len(pip.calls) == 2 and deps.deps_satisfied(target)

    next(target.glob("tokenizers-*.dist-info")).rmdir()
    assert "tokenizers" in deps.why_unsatisfied(target)


def test_a_failed_install_keeps_the_previous_folder(tmp_path):
    target = tmp_path / "deps"
    deps.install_private_deps(str(target), runner=FakePip(SMALL_REPORT), out=lambda s: None)
    manifest = json.loads((target / deps.MANIFEST).read_text())
    manifest["requirements"] = ["diffusers==0.1"]
    (target / deps.MANIFEST).write_text(json.dumps(manifest))
    lines: list[str] = []
    assert deps.install_private_deps(str(target), runner=FakePip(SMALL_REPORT, fail_install=True), out=lines.append) == 1
    assert "No matching distribution" in lines[-1]
    assert (target / "diffusers").is_dir() and deps.read_manifest(target)["requirements"] == ["diffusers==0.1"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_missing_folder_is_not_satisfied(tmp_path):
    assert not deps.deps_satisfied(tmp_path / "nothing")
    assert not deps.deps_satisfied(tmp_path)


def test_deps_dir_defaults_to_the_extension_folder_and_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(deps.ENV_DEPS_DIR, raising=False)
    assert deps.deps_dir() == Path(deps.__file__).resolve().parents[3] / ".deps"
    monkeypatch.setenv(deps.ENV_DEPS_DIR, str(tmp_path / "elsewhere"))
    assert deps.deps_dir() == tmp_path / "elsewhere"


def test_real_dry_run_prints_the_plan_and_installs_nothing(tmp_path):
    """pip really resolves (PyPI), with the host's torch stood in by a stub: nothing is installed."""
    target = tmp_path / "deps"
    out = subprocess.run([sys.executable, "-m", "deforum_wan", "install-deps", str(target), "--dry-run"],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0 and any(w in out.stdout for w in ("connection", "Connection", "resolve")):
        pytest.skip(f"no package index reachable: {out.stdout[-300:]}")
    assert out.returncode == 0, out.stdout + out.stderr
    pins = deps.requirements_for(sys.version_info[:2])
    for pin in pins[:3]:
        assert f"install  {pin.replace('_', '-')}" in out.stdout
    assert "install  tokenizers==" in out.stdout
    lines = out.stdout.splitlines()
    assert not [ln for ln in lines if ln.strip().startswith("install") and any(
        ln.split()[1].startswith(p) for p in ("torch", "nvidia", "triton", "cuda"))]
    if deps.host_version("torch"):
        assert f"skip     torch {deps.host_version('torch')}" in out.stdout
        assert "host     numpy" in out.stdout
    assert not target.exists()


REPO = Path(__file__).resolve().parents[1]
FAKE_LAUNCH = '''
import os
def is_installed(name):
    return name not in os.environ.get("FAKE_MISSING", "").split(",")
def run_pip(command, desc=None):
    print("RUN_PIP " + command)
'''


def _run_install_py(tmp_path: Path, deps_folder: Path, missing: str = "") -> subprocess.CompletedProcess:
    host = tmp_path / "webui"
    host.mkdir(exist_ok=True)
    (host / "launch.py").write_text(FAKE_LAUNCH)
    env = {**os.environ, "PYTHONPATH": str(host), deps.ENV_DEPS_DIR: str(deps_folder),
           "FAKE_MISSING": missing}
    return subprocess.run([sys.executable, str(REPO / "install.py")], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)


def test_install_py_does_nothing_but_report_when_everything_is_there(tmp_path):
    target = tmp_path / "deps"
    deps.install_private_deps(str(target), runner=FakePip(SMALL_REPORT), out=lambda s: None)
    out = _run_install_py(tmp_path, target)
    assert out.returncode == 0, out.stderr
    assert "RUN_PIP" not in out.stdout
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1 and "renderer libraries ready" in lines[0]


def test_install_py_installs_only_a_missing_light_package(tmp_path):
    target = tmp_path / "deps"
    deps.install_private_deps(str(target), runner=FakePip(SMALL_REPORT), out=lambda s: None)
    out = _run_install_py(tmp_path, target, missing="imageio_ffmpeg")
    assert out.returncode == 0, out.stderr
    assert [ln for ln in out.stdout.splitlines() if ln.startswith("RUN_PIP")] == ['RUN_PIP install "imageio-ffmpeg>=0.4.9"']


def test_the_printed_install_command_works_from_any_folder(tmp_path):
    """The fix a failed job prints is typed from the web UI's folder, where `-m deforum_wan` is not importable."""
    target = tmp_path / "deps"
    deps.install_private_deps(str(target), runner=FakePip(SMALL_REPORT), out=lambda s: None)
    elsewhere = tmp_path / "webui"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env[deps.ENV_DEPS_DIR] = str(target)
    out = subprocess.run(deps.install_command(), shell=True, capture_output=True, text=True, cwd=elsewhere, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "renderer libraries ready" in out.stdout


class InterruptedPip(FakePip):
    """A download that dies half-way: some files written, then the process is interrupted."""

    def __call__(self, args):
        if "--target" in args:
            target = Path(args[args.index("--target") + 1])
            (target / "torch").mkdir(parents=True)
            (target / "torch" / "half.whl.part").write_bytes(b"x" * 1024)
            raise KeyboardInterrupt
        return super().__call__(args)


def test_an_interrupted_install_keeps_the_old_folder_and_the_next_start_finishes(tmp_path):
    target = tmp_path / "deps"
    deps.install_private_deps(str(target), runner=FakePip(SMALL_REPORT), out=lambda s: None)
    manifest = json.loads((target / deps.MANIFEST).read_text())
    manifest["requirements"] = ["diffusers==0.1"]  # stale: the next start reinstalls
    (target / deps.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(KeyboardInterrupt):
        deps.install_private_deps(str(target), runner=InterruptedPip(SMALL_REPORT), out=lambda s: None)
    assert (target / "diffusers").is_dir()  # the folder in use was never touched
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder, no lock
    assert deps.install_private_deps(str(target), runner=FakePip(SMALL_REPORT), out=lambda s: None) == 0
    assert deps.deps_satisfied(target)


def test_a_killed_installer_leaves_nothing_the_next_start_trips_over(tmp_path):
    """kill -9 runs no cleanup: its lock and half-filled staging folder are removed by the next install."""
    target = tmp_path / "deps"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".deps.installing").write_text(dead.stdout.strip())
    partial = tmp_path / ".deps.partial-abc123"
    (partial / "torch").mkdir(parents=True)
    lines: list[str] = []
    assert deps.install_private_deps(str(target), runner=FakePip(SMALL_REPORT), out=lines.append) == 0
    assert not partial.exists() and not (tmp_path / ".deps.installing").exists()
    assert deps.deps_satisfied(target)


def test_a_second_installer_waits_for_the_running_one(tmp_path):
    target = tmp_path / "deps"
    (tmp_path / ".deps.installing").write_text(str(os.getppid()))  # a live process holds the lock
    lines: list[str] = []
    pip = FakePip(SMALL_REPORT)
    assert deps.install_private_deps(str(target), runner=pip, out=lines.append) == 1
    assert pip.calls == [] and "another install" in lines[-1] and str(os.getppid()) in lines[-1]


def test_the_install_says_which_torch_why_and_how_much_it_downloads(tmp_path):
    from deforum_wan.service.torchenv import TorchChoice

    wheel = tmp_path / "torch-2.13.0-cp311-none-any.whl"
    wheel.write_bytes(b"x" * (3 * 2**20))
    report = {"install": [dict(_item("torch", "2.13.0+cpu", "filelock"), requested=True,
                               download_info={"url": wheel.as_uri()}),
                          *[r for r in SMALL_REPORT["install"] if r["metadata"]["name"] != "torch"]]}
    choice = TorchChoice("private", "cpu", "the host's torch 2.1.2 is older than 2.6; CPU build", "torch==2.13.0+cpu",
                         "https://download.pytorch.org/whl/cpu")
    pip, lines = FakePip(report), []
    assert deps.install_private_deps(str(tmp_path / "deps"), runner=pip, out=lines.append, choice=choice) == 0
    text = "\n".join(lines)
    assert "worker torch: the host's torch 2.1.2 is older than 2.6" in text
    assert "torch 2.13.0+cpu" in text and "3 MiB" in text and "to download" in text
    resolve_args, install_args = pip.calls
    assert "torch==2.13.0+cpu" in resolve_args and "--find-links" not in resolve_args  # no stub: the real torch
    assert install_args[install_args.index("--extra-index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    manifest = deps.read_manifest(tmp_path / "deps")
    assert manifest["torch"]["mode"] == "private" and manifest["torch"]["version"] == "2.13.0+cpu"
    assert "torch" in manifest["installed"] and "numpy" in manifest["installed"] and manifest["host"] == {}


def test_a_torch_override_sticks_until_another_is_asked_for(tmp_path, monkeypatch):
    """A shell (or a doctor run) without DEFORUM_WAN_TORCH keeps the torch that was installed with it."""
    from deforum_wan.service.torchenv import TorchChoice

    monkeypatch.setenv("DEFORUM_WAN_TORCH", "torch==2.13.0")
    choice = TorchChoice("private", "custom", "asked for", "torch==2.13.0")
    report = {"install": [dict(_item("torch", "2.13.0"), requested=True), *SMALL_REPORT["install"][:-1]]}
    target = tmp_path / "deps"
    assert deps.install_private_deps(str(target), runner=FakePip(report), out=lambda s: None, choice=choice) == 0
    assert deps.why_unsatisfied(target) is None
    monkeypatch.delenv("DEFORUM_WAN_TORCH")
    assert deps.why_unsatisfied(target) is None
    monkeypatch.setenv("DEFORUM_WAN_TORCH", "torch==2.8.0")
    assert "DEFORUM_WAN_TORCH changed" in deps.why_unsatisfied(target)
    monkeypatch.setenv("DEFORUM_WAN_TORCH", "auto")
    assert "DEFORUM_WAN_TORCH changed" in deps.why_unsatisfied(target)


def test_ray_goes_into_the_private_folder_when_the_farm_is_wanted_and_stays(tmp_path, monkeypatch):
    """$DEFORUM_WAN_FARM (or --farm) adds Ray, with its own protobuf, to the folder; the host gets nothing."""
    monkeypatch.delenv("DEFORUM_WAN_FARM", raising=False)
    target = tmp_path / "deps"
    assert deps.install_private_deps(str(target), runner=FakePip(SMALL_REPORT), out=lambda s: None) == 0
    assert deps.why_unsatisfied(target) is None and not deps.read_manifest(target)["farm"]
    assert not any(r.startswith("ray") for r in deps.requirements_for(sys.version_info[:2]))
    monkeypatch.setenv("DEFORUM_WAN_FARM", "10.0.0.5:6379")
    assert "the render farm needs Ray" in deps.why_unsatisfied(target)
    report = {"install": [*SMALL_REPORT["install"], dict(_item("ray", "2.60.0", "protobuf>=3.20.3", "filelock"),
                                                         requested=True), _item("protobuf", "7.36.2")]}
    pip = FakePip(report)
    assert deps.install_private_deps(str(target), runner=pip, out=lambda s: None) == 0
    assert "ray>=2.60" in pip.calls[0]  # resolved with the renderer's libraries
    manifest = deps.read_manifest(target)
    assert manifest["farm"] and manifest["requirements"][-1] == "ray>=2.60"
    assert {"ray", "protobuf"} <= set(manifest["installed"]) and "protobuf" not in manifest["host"]
    monkeypatch.delenv("DEFORUM_WAN_FARM")
    assert deps.why_unsatisfied(target) is None  # it stays: no reinstall without Ray in a shell without the variable
    fresh = tmp_path / "fresh"
    assert deps.install_private_deps(str(fresh), runner=FakePip(report), out=lambda s: None, farm=True) == 0
    assert deps.read_manifest(fresh)["farm"]
