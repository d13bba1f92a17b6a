"""The render farm on a real Ray cluster on loopback: a head and two worker nodes started with `ray start`.

The jobs are real tiny T2V renders through the queue, FarmRunner, the job's Ray
driver process (farmdriver.py: this test's process never imports Ray, as the web
UI's must not), a Ray task on a worker node and the project's worker process there. One worker node is killed
mid-job (every process of it, as a machine that loses power): that job is left
RETRYABLE with its frames, and a retry resumes it on the node that is left.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from deforum_wan.renderer import outputs
from deforum_wan.service import bridge, farm
from deforum_wan.service.jobs import CANCELLED, FAILED, RETRYABLE, SUCCEEDED, JobQueue

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
START_TIMEOUT = 120.0
JOB_TIMEOUT = 600.0
NODE_RESOURCE = "deforum_wan_farm"  # each worker node holds one: one job per node at a time


def test_one_jobs_share_of_the_cluster_and_how_many_fit():
    config = farm.FarmConfig(num_gpus=1, num_cpus=2, resources={"deforum_wan": 1})
    assert config.needs() == {"GPU": 1.0, "CPU": 2.0, "deforum_wan": 1.0}
    assert farm.slots_for({"GPU": 8.0, "CPU": 64.0, "deforum_wan": 3.0}, config.needs()) == 3
    assert farm.slots_for({"CPU": 64.0}, config.needs()) == 0  # no GPU: no job fits
    assert farm.config_from_env({}) is None
    assert farm.config_from_env({"DEFORUM_WAN_FARM": "10.0.0.5:6379", "DEFORUM_WAN_FARM_GPUS": "2"}) == \
        farm.FarmConfig(address="10.0.0.5:6379", num_gpus=2.0)
    with pytest.raises(ValueError, match="DEFORUM_WAN_FARM_GPUS: expected a number"):
        farm.config_from_env({"DEFORUM_WAN_FARM": "auto", "DEFORUM_WAN_FARM_GPUS": "all"})
    with pytest.raises(ValueError, match="farm resources: 'x' must name a Ray resource"):
        farm.FarmConfig(resources={"x": 0})


def test_a_queue_on_a_farm_that_is_not_there_fails_at_start_naming_it(tmp_path, monkeypatch):
    from deforum_wan.service import jobs

    port = _free_port()  # nothing listens there
    monkeypatch.setenv("DEFORUM_WAN_FARM", f"127.0.0.1:{port}")
    monkeypatch.setattr(jobs, "_QUEUE", None)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=f"DEFORUM_WAN_FARM=127.0.0.1:{port}: no Ray head answers there"):
        jobs.get_queue(tmp_path / "jobs.sqlite3", outdir=tmp_path / "out")
    assert time.monotonic() - started < 30 and jobs._QUEUE is None
    assert "ray" not in sys.modules


def test_a_driver_without_ray_says_how_to_install_it(tmp_path):
    """The driver runs with the worker's python and libraries: where they lack Ray, it says what to run."""
    python = Path(__file__).resolve().parents[1] / ".venv-a1111" / "bin" / "python"
    if not python.exists():
        pytest.skip("needs the A1111 test venv (no Ray in it)")
    with socket.socket() as head:  # something answers at the address, so the driver itself is asked
        head.bind(("127.0.0.1", 0))
        head.listen()
        address = "127.0.0.1:%d" % head.getsockname()[1]
        runner = farm.FarmRunner(farm.FarmConfig(address=address, num_gpus=0),
                                 driver=bridge.WorkerConfig(python=str(python), deps_dir=""))
        with pytest.raises(RuntimeError, match=f"DEFORUM_WAN_FARM={address}: the render farm needs Ray in the "
                                               "renderer's libraries: run `deforum-wan install-deps --farm`"):
            runner.slots()
    assert "ray" not in sys.modules


# --------------------------------------------------------------------------- a cluster on loopback


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group), from /proc; zombies (already dead) left out."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            found[int(name)] = (int(fields[1]), int(fields[2]))
    return found


def _node_processes(group: int) -> set[int]:
    """Every process of a node we started: its process group (raylet, agents) and their descendants
    (Ray's workers make their own groups, and the render workers are their children)."""
    table = _processes()
    todo = [pid for pid, (_, pgid) in table.items() if pgid == group]
    seen: set[int] = set()
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo += [child for child, (parent, _) in table.items() if parent == pid]
    return seen


def _kill(pids: set[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


class LocalCluster:
    """A head (no CPUs for jobs) and named worker nodes, each `ray start` in its own process group."""

    def __init__(self) -> None:
        self.temp = tempfile.mkdtemp(prefix="dwray", dir="/tmp")  # short: Ray's socket paths are length-limited
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.groups: dict[str, int] = {}
        self.ray = str(Path(sys.executable).with_name("ray"))
        path = os.pathsep.join(p for p in (str(SCRIPTS), os.environ.get("PYTHONPATH", "")) if p)
        self.env = {**os.environ, "PYTHONPATH": path, "RAY_USAGE_STATS_ENABLED": "0",
                    # a dead node is noticed within seconds (defaults: 3 s x 5)
                    "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}

    def _start(self, name: str, ip: str, *args: str) -> None:
        proc = subprocess.Popen([self.ray, "start", "--node-ip-address", ip, "--disable-usage-stats",
                                 "--object-store-memory", str(80 * 2**20), *args], env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.groups[name] = proc.pid
        out, _ = proc.communicate(timeout=START_TIMEOUT)
        assert proc.returncode == 0, f"ray start {name} failed:\n{out[-3000:]}"

    def start(self, workers: tuple[str, ...]) -> "LocalCluster":
        self._start("head", "127.0.0.1", "--head", "--port", str(self.port), "--num-cpus", "0",
                    "--include-dashboard", "false", "--temp-dir", self.temp)
        for number, name in enumerate(workers, start=2):  # an address of its own, as another machine has
            self._start(name, f"127.0.0.{number}", "--address", self.address, "--num-cpus", "1",
                        "--resources", f'{{"{NODE_RESOURCE}": 1, "node_{name}": 1}}')
        return self

    def kill(self, name: str) -> None:
        """The node is gone at once, every process of it, as when its machine loses power."""
        pids = _node_processes(self.groups[name])
        _kill(pids)

    def stop(self) -> None:
        for name in reversed(list(self.groups)):
            pids = _node_processes(self.groups[name])
            _kill(pids, signal.SIGTERM)
        deadline = time.monotonic() + 5  # Ray's daemons may ignore SIGTERM; then they are killed
        while time.monotonic() < deadline and any(_node_processes(g) for g in self.groups.values()):
            time.sleep(0.2)
        for group in self.groups.values():
            _kill(_node_processes(group))
        shutil.rmtree(self.temp, ignore_errors=True)

    def nodes(self) -> list[dict]:
        """The cluster's nodes as Ray sees them, asked from a process of its own (this one never imports Ray)."""
        code = ("import json, ray; ray.init(address=%r, log_to_driver=False, configure_logging=False); "
                "print(json.dumps([{k: n[k] for k in ('NodeID', 'Alive', 'Resources')} for n in ray.nodes()]))"
                % self.address)
        out = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True,
                             timeout=START_TIMEOUT, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def cluster():
    if not sys.platform.startswith("linux"):
        pytest.skip("the cluster's processes are found and killed through /proc")
    if importlib.util.find_spec("ray") is None:  # looked up, not imported: the driver imports it, not this process
        pytest.skip('the farm tests need Ray: pip install -e ".[farm]" (the test extra has it)')
    made = LocalCluster()
    try:
        yield made.start(("a", "b"))
    finally:
        made.stop()


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


@pytest.mark.slow
def test_three_jobs_across_two_farm_machines_a_dead_machine_leaves_its_job_retryable(cluster, tiny_models, tmp_path):
    # The driver, like the farm machines, uses this test environment's libraries (it has Ray), never a
    # private folder a web UI may have filled beside the checkout.
    runner = farm.FarmRunner(farm.FarmConfig(address=cluster.address, num_gpus=0, num_cpus=1,
                                             resources={NODE_RESOURCE: 1}, deps_dir=""),
                             driver=bridge.WorkerConfig(deps_dir=""))
    _wait_for(lambda: len([n for n in cluster.nodes() if n["Alive"]]) == 3, START_TIMEOUT, "three live nodes")
    assert runner.slots() == 2
    node_names = {n["NodeID"]: name for n in cluster.nodes() for name in ("a", "b")
                  if f"node_{name}" in n["Resources"]}
    shared = tmp_path / "shared"  # every node writes here, as farm machines on one shared folder
    queue = JobQueue(tmp_path / "jobs.sqlite3", runner=runner, outdir=shared, slots=(None,) * runner.slots())
    queues = [queue]
    events: dict[str, list[dict]] = {}
    killed: dict[str, str] = {}
    lock = threading.Lock()
    long_job: list[str] = []

    def watch(record, event):
        if event is None:
            return
        with lock:
            events.setdefault(record.id, []).append(event)
            mine = events[record.id]
        if (record.id in long_job and not killed and event["type"] == "frames" and event["frames_written"] > 0):
            node = next(e["node"] for e in mine if e["type"] == "farm")
            killed[record.id] = node_names[node]
            cluster.kill(node_names[node])  # mid-job: frames on disk, more to come

    queue.subscribe(watch)
    short = {"prompts": {"0": "a red fox"}, "max_frames": 8, "fps": 16, "W": 32, "H": 32, "seed": 5,
             "batch_name": "farm_{timestring}"}
    long = {**short, "max_frames": 120}
    overrides = {"model": str(tiny_models["t2v"]), "steps": 1, "max_clip_frames": 5, "device": "cpu"}
    try:
        ids = queue.submit([long, short, short], overrides)[1]
        long_job.append(ids[0])
        queue.start()
        assert queue.wait(ids, JOB_TIMEOUT)
        first, *rest = [queue.get(i) for i in ids]
        assert [r.status for r in rest] == [SUCCEEDED, SUCCEEDED], [r.message for r in rest]
        assert killed, "the long job finished before its machine could be killed"
        assert (first.status, first.error_type) == (FAILED, RETRYABLE), first.message
        assert "farm machine stopped" in first.message and first.timestring in first.message
        assert 0 < first.frames_written < 120
        assert outputs.existing_frames(first.outdir, first.timestring)[:first.frames_written] == \
            list(range(first.frames_written))

        assert queue.retry(ids[0])  # resume: on the machine that is left, from the frames on disk
        assert queue.wait(ids[:1], JOB_TIMEOUT)
        again = queue.get(ids[0])
        assert again.status == SUCCEEDED, again.message
        assert again.attempts == 2 and again.timestring == first.timestring and again.outdir == first.outdir
        assert outputs.existing_frames(again.outdir, again.timestring) == list(range(120))
        starts = [e for e in events[ids[0]] if e["type"] == "start"]
        assert [s["resumed"] for s in starts] == [False, True] and starts[1]["frames_on_disk"] >= first.frames_written
        machines = {i: [node_names[e["node"]] for e in events[i] if e["type"] == "farm"] for i in ids}
        survivor = ({"a", "b"} - set(killed.values())).pop()
        assert machines[ids[0]] == [killed[ids[0]], survivor]
        assert {m for runs in machines.values() for m in runs} == {"a", "b"}  # both machines rendered
        assert all(len(machines[i]) == 1 for i in ids[1:])  # each short job ran exactly once
        for record in rest:
            assert outputs.existing_frames(record.outdir, record.timestring) == list(range(8))
            assert record.worker["farm_node"] in node_names and record.worker["host"] == socket.gethostname()
        assert "ray" not in sys.modules  # every job's Ray driver ran in a process of its own

        # cancel and resume on the farm: a running job stops between steps, keeps its frames, resumes
        (cancel_id,) = queue.submit([long], overrides)[1]
        _wait_for(lambda: any(e["type"] == "frames" and e["frames_written"] > 0 for e in events.get(cancel_id, [])),
                  JOB_TIMEOUT, "the job to write frames")
        assert queue.cancel(cancel_id)
        assert queue.wait([cancel_id], JOB_TIMEOUT)
        stopped = queue.get(cancel_id)
        assert stopped.status == CANCELLED and 0 < stopped.frames_written < 120, stopped.message
        assert not list((shared / farm.STOP_DIR).iterdir())  # stop requests are cleaned up
        assert queue.retry(cancel_id) and queue.wait([cancel_id], JOB_TIMEOUT)
        assert queue.get(cancel_id).status == SUCCEEDED
        assert outputs.existing_frames(stopped.outdir, stopped.timestring) == list(range(120))

        # the API host stops mid-job: the farm machine stops the render, and the next start resumes it
        (stop_id,) = queue.submit([long], overrides)[1]
        _wait_for(lambda: any(e["type"] == "frames" and e["frames_written"] > 0 for e in events.get(stop_id, [])),
                  JOB_TIMEOUT, "the job to write frames")
        queue.close(60)
        queues.append(JobQueue(tmp_path / "jobs.sqlite3", runner=runner, outdir=shared, slots=(None, None)))
        requeued = queues[-1].get(stop_id)
        assert (requeued.status, requeued.phase, requeued.error_type) == ("ACCEPTED", "QUEUED", RETRYABLE)
        assert 0 < requeued.frames_written < 120, requeued.message
        queues[-1].start()
        assert queues[-1].wait([stop_id], JOB_TIMEOUT)
        finished = queues[-1].get(stop_id)
        assert finished.status == SUCCEEDED and finished.attempts == 2, finished.message
        assert outputs.existing_frames(finished.outdir, finished.timestring) == list(range(120))
    finally:
        for each in queues:
            each.close(60)


def test_the_private_folder_shadows_the_hosts_protobuf_for_the_driver(tmp_path):
    """Ray's protobuf goes into the private folder; the driver (a worker-side process) sees that one, and never
    the host's pinned one, even where the private folder has none."""
    private = tmp_path / "deps"
    private.mkdir()
    (private / "deforum_wan_deps.json").write_text(json.dumps({"format": 2, "torch": {"mode": "host"}, "host": {}}))
    probe = ("from deforum_wan.service.isolation import install_from_environment; install_from_environment()\n"
             "try:\n    import google.protobuf as p; print(p.__version__, p.__file__)\n"
             "except ImportError as exc:\n    print('hidden', exc)\n")

    def seen() -> str:
        env = bridge.worker_env(bridge.WorkerConfig(deps_dir=str(private)))
        out = subprocess.run([sys.executable, "-s", "-c", probe], env=env, capture_output=True, text=True, check=True)
        return out.stdout.strip()

    host = subprocess.run([sys.executable, "-c", "import google.protobuf as p; print(p.__version__)"],
                          capture_output=True, text=True)
    assert seen().startswith("hidden"), seen()  # the host's protobuf (if any) is out of the driver's sight
    (private / "google" / "protobuf").mkdir(parents=True)
    (private / "google" / "protobuf" / "__init__.py").write_text("__version__ = '3.20.3.private'\n")
    assert seen() == f"3.20.3.private {private / 'google' / 'protobuf' / '__init__.py'}"
    if host.returncode == 0:
        assert host.stdout.strip() != "3.20.3.private"  # the host's own stays what it was


HOST = """
import json, sys
from deforum_wan.service import bridge, farm
address, outdir, model, resource = sys.argv[1:]
runner = farm.FarmRunner(farm.FarmConfig(address=address, num_gpus=0, num_cpus=1, resources={resource: 1}, deps_dir=""),
                         driver=bridge.WorkerConfig(deps_dir=""))
job = {"settings": {"prompts": {"0": "a red fox"}, "max_frames": 120, "fps": 16, "W": 32, "H": 32, "seed": 5,
                    "batch_name": "gone_{timestring}"}, "model": model, "outdir": outdir, "device": "cpu",
       "options": {"steps": 1, "max_clip_frames": 5}}
runner(job, on_event=lambda event: print(json.dumps(event), flush=True))
"""


def _children(parent: int, marker: bytes) -> list[int]:
    return [pid for pid, (ppid, _) in _processes().items()
            if ppid == parent and marker in Path(f"/proc/{pid}/cmdline").read_bytes()]


@pytest.mark.slow
def test_a_killed_web_ui_process_stops_its_render_on_the_farm(cluster, tiny_models, tmp_path):
    """The web UI's process dies (SIGKILL): its job's driver notices and stops the render; the frames stay."""
    _wait_for(lambda: len([n for n in cluster.nodes() if n["Alive"]]) == 3, START_TIMEOUT, "three live nodes")
    host = subprocess.Popen([sys.executable, "-c", HOST, cluster.address, str(tmp_path), str(tiny_models["t2v"]),
                             NODE_RESOURCE], env=cluster.env, stdout=subprocess.PIPE, text=True)
    try:
        assert host.stdout is not None
        for line in host.stdout:
            if json.loads(line)["type"] == "frames":
                break
        drivers = _children(host.pid, b"farm-job")
        assert len(drivers) == 1
        host.kill()
        host.wait()
        _wait_for(lambda: drivers[0] not in _processes(), 60, "the driver to stop the render and end")
        folder = next(tmp_path.glob("gone_*"))
        timestring = folder.name.split("_", 1)[1]
        kept = outputs.existing_frames(folder, timestring)
        time.sleep(5)  # nothing renders on any more
        assert outputs.existing_frames(folder, timestring) == kept and 0 < len(kept) < 120
        assert not list((tmp_path / farm.STOP_DIR).iterdir())
    finally:
        host.kill()
