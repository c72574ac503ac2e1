"""The GPU slicer against the real kubelet, with fake cards: what the unit tests' fake kubelet cannot prove.

``voltgrid gpu-slicer --fake`` runs as a real process on the host, as the DaemonSet would: the real kubelet
registers it, the node advertises its slices, the scheduler places pods that ask for them, and the
containers get what Allocate returned (card UUID, MPS env, the host's MPS directories mounted). Packing
(GetPreferredAllocation), re-registration after a kubelet restart and the empty list on SIGTERM are seen
from the node's status, the way the scheduler sees them. Prints how long the kubelet took each time.

The kubelet restart uses the harness's own mechanism (kill by pid file, ``up.sh`` starts what is missing)
and only happens while no other e2e run uses the shared cluster.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest

from e2ehelpers import wait_for
from voltgrid.api.gpu import slice_resource_name

if TYPE_CHECKING:
    from e2e.conftest import Cluster

pytestmark = pytest.mark.e2e

REPO: Final = Path(__file__).resolve().parent.parent
VOLTGRID: Final = REPO / ".venv" / "bin" / "voltgrid"
UP_SH: Final = REPO / "e2e" / "cluster" / "up.sh"
NODE: Final = "localhost"
PYTHON_IMAGE: Final = "localhost/voltgrid/python:3.11"
# The kubelet serves device-plugin registration at this fixed path whatever its --root-dir
# (pluginapi.DevicePluginPath); the harness's kubelet runs with --root-dir under the state dir.
DEVICE_PLUGIN_DIR: Final = Path("/var/lib/kubelet/device-plugins")
FAKE_GPUS: Final = 2
SLICES_PER_CARD: Final = 4  # --profile quarter
RESOURCE: Final = slice_resource_name(SLICES_PER_CARD)
ALL_SLICES: Final = str(FAKE_GPUS * SLICES_PER_CARD)
PLUGIN_SOCKET: Final = DEVICE_PLUGIN_DIR / f"voltgrid-gpu-1-{SLICES_PER_CARD}.sock"
# fake.fake_gpus: 16 GiB cards with these UUIDs; a quarter is 4096 MiB and 25 % of the SMs.
FAKE_UUIDS: Final = [f"GPU-00000000-0000-4000-8000-{i + 1:012d}" for i in range(FAKE_GPUS)]
SLICE_MEMORY: Final = "0=4096M"
SLICE_THREADS: Final = "25"
CONTAINER_PIPE_DIR: Final = "/tmp/nvidia-mps"
# The kubelet updates node status every 5 s here (nodeStatusUpdateFrequency).
REGISTER_TIMEOUT_S: Final = 30.0
POD_TIMEOUT_S: Final = 60.0
PLUGIN_EXIT_TIMEOUT_S: Final = 15.0
KUBELET_EXIT_TIMEOUT_S: Final = 30.0
UP_TIMEOUT_S: Final = 180.0
# How long the restart waits for other e2e runs on the shared cluster to finish before skipping.
OTHERS_WAIT_S: Final = 600.0
OTHERS_POLL_S: Final = 5.0
OTHER_E2E_RUNS: Final = r"pytest.*e2e/test_(platform|chart)"
END_MARKER: Final = "--- end"
# Written into the host's MPS directories: seeing them in a container proves the mounts are the host's.
PIPE_MARKER: Final = "voltgrid-e2e-pipe"
SHM_MARKER: Final = "voltgrid-e2e-shm"


def node_resource(cluster: Cluster, field: str) -> str | None:
    """The node's ``status.<field>`` (capacity or allocatable) of the slice resource."""
    node = json.loads(cluster.kubectl("get", "node", NODE, "-o", "json").stdout)
    value = node["status"].get(field, {}).get(RESOURCE)
    return None if value is None else str(value)


@dataclass
class Slicer:
    proc: subprocess.Popen[bytes]
    log: Path
    registered_in: float

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def registrations(self) -> int:
        return self.log_text().count(f"registered {RESOURCE} with the kubelet")


@pytest.fixture(scope="module")
def slicer(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slicer]:
    """The plugin process with two fake cards, registered with the kubelet; SIGTERMed by pid at the end."""
    if not (DEVICE_PLUGIN_DIR / "kubelet.sock").exists():
        pytest.skip(f"no kubelet device-plugin registration socket in {DEVICE_PLUGIN_DIR} (not the local cluster?)")
    if node_resource(cluster, "allocatable") not in (None, "0"):
        pytest.skip(f"another {RESOURCE} plugin is registered on node {NODE}")
    work = tmp_path_factory.mktemp("gpu-slicer")
    mps_root = work / "mps"
    for sub, marker in (("pipe", PIPE_MARKER), ("shm", SHM_MARKER)):
        (mps_root / sub).mkdir(parents=True)
        (mps_root / sub / marker).touch()
    config = work / "gpu-slicer.yaml"
    config.write_text("{}\n")  # not the host's /etc/voltgrid/gpu-slicer.yaml
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOLTGRID_GPU_SLICER_")}
    argv = [str(VOLTGRID), "gpu-slicer", "--fake", "--fake-gpus", str(FAKE_GPUS), "--profile", "quarter"]
    argv += ["--kubelet-dir", str(DEVICE_PLUGIN_DIR), "--mps-root", str(mps_root), "--config", str(config)]
    log = work / "slicer.log"
    with log.open("wb") as out:
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        try:
            wait_for(
                f"node {NODE} to advertise {RESOURCE}: {ALL_SLICES}",
                lambda: proc.poll() is not None or node_resource(cluster, "allocatable") == ALL_SLICES,
                REGISTER_TIMEOUT_S,
            )
        except AssertionError as e:
            raise AssertionError(f"{e}; slicer log:\n{log.read_text(errors='replace')[-3000:]}") from None
        assert proc.poll() is None, f"slicer exited ({proc.returncode}):\n{log.read_text(errors='replace')[-3000:]}"
        yield Slicer(proc=proc, log=log, registered_in=time.monotonic() - started)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(PLUGIN_EXIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture(scope="module")
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"vg-e2e-gpu-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--timeout=60s", check=False, timeout=90)


def slice_pod(name: str) -> dict[str, Any]:
    """A runc pod holding one slice: prints its environment and the MPS mounts, then stays up."""
    script = (
        f"env; echo '--- ls {CONTAINER_PIPE_DIR}'; ls {CONTAINER_PIPE_DIR}; echo '--- ls /dev/shm'; ls /dev/shm; "
        f"echo '{END_MARKER}'; exec sleep 3600"
    )
    container = {
        "name": "main",
        "image": PYTHON_IMAGE,
        "imagePullPolicy": "Never",
        "command": ["sh", "-c", script],
        "resources": {"limits": {RESOURCE: "1"}},
    }
    spec = {"containers": [container], "restartPolicy": "Never", "terminationGracePeriodSeconds": 0}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


@dataclass(frozen=True)
class PodView:
    """What a slice pod printed: its environment and the listings of its MPS mounts."""

    env: dict[str, str]
    listings: dict[str, list[str]]


def parse_output(logs: str) -> PodView:
    env: dict[str, str] = {}
    listings: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in logs.splitlines():
        if line == END_MARKER:
            break
        if line.startswith("--- ls "):
            current = listings.setdefault(line.removeprefix("--- ls "), [])
        elif current is not None:
            current.append(line)
        elif "=" in line:
            key, _, value = line.partition("=")
            env[key] = value
    return PodView(env=env, listings=listings)


def printed_view(cluster: Cluster, namespace: str, name: str) -> str:
    """The pod's logs once it has printed its whole view, else empty."""
    logs = cluster.kubectl("logs", "-n", namespace, name, check=False).stdout
    return logs if END_MARKER in logs else ""


def run_slice_pods(cluster: Cluster, namespace: str, *names: str) -> dict[str, PodView]:
    """Creates the pods together, waits until each has printed its view; returns the views by pod name."""
    items = [slice_pod(name) for name in names]
    cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    )
    views: dict[str, PodView] = {}
    for name in names:
        waited = cluster.kubectl(
            "wait",
            "-n",
            namespace,
            "--for=jsonpath={.status.phase}=Running",
            f"pod/{name}",
            f"--timeout={POD_TIMEOUT_S:.0f}s",
            check=False,
            timeout=POD_TIMEOUT_S + 30,
        )
        if waited.returncode != 0:
            described = cluster.kubectl("describe", "pod", "-n", namespace, name, check=False).stdout
            pytest.fail(f"pod {name} not Running after {POD_TIMEOUT_S}s:\n{described[-3000:]}")
        logs = wait_for(f"pod {name} to print its view", partial(printed_view, cluster, namespace, name), POD_TIMEOUT_S)
        views[name] = parse_output(logs)
    return views


def test_node_advertises_the_slices(cluster: Cluster, slicer: Slicer) -> None:
    print(f"\n{RESOURCE}: plugin start -> node allocatable {ALL_SLICES} in {slicer.registered_in:.2f}s")
    assert node_resource(cluster, "capacity") == ALL_SLICES
    assert PLUGIN_SOCKET.is_socket()
    assert slicer.registrations() == 1, slicer.log_text()


def test_pod_sees_what_allocate_returned(cluster: Cluster, slicer: Slicer, namespace: str) -> None:
    view = run_slice_pods(cluster, namespace, "one-slice")["one-slice"]
    assert view.env.get("NVIDIA_VISIBLE_DEVICES") in FAKE_UUIDS, view.env
    assert view.env["CUDA_VISIBLE_DEVICES"] == view.env["NVIDIA_VISIBLE_DEVICES"]
    assert view.env["CUDA_MPS_PIPE_DIRECTORY"] == CONTAINER_PIPE_DIR
    assert view.env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == SLICE_MEMORY
    assert view.env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == SLICE_THREADS
    # The host's MPS pipe and shm directories (with the markers the fixture put there) are mounted.
    assert PIPE_MARKER in view.listings[CONTAINER_PIPE_DIR], view.listings
    assert SHM_MARKER in view.listings["/dev/shm"], view.listings
    assert re.search(rf"allocating {re.escape(view.env['NVIDIA_VISIBLE_DEVICES'])}::\d\b", slicer.log_text())


def test_one_slice_pods_are_packed_on_one_card(cluster: Cluster, slicer: Slicer, namespace: str) -> None:
    views = run_slice_pods(cluster, namespace, "packed-a", "packed-b")
    cards = {name: view.env.get("NVIDIA_VISIBLE_DEVICES") for name, view in views.items()}
    assert cards["packed-a"] in FAKE_UUIDS, cards
    assert cards["packed-a"] == cards["packed-b"], cards
    allocated = re.findall(r"allocating (\S+)", slicer.log_text())
    assert len(set(allocated)) == len(allocated), f"a slice was handed out twice: {allocated}"


def other_e2e_runs() -> list[str]:
    found = subprocess.run(["pgrep", "-af", OTHER_E2E_RUNS], capture_output=True, text=True, check=False)
    return [line for line in found.stdout.splitlines() if not line.startswith(f"{os.getpid()} ")]


def kubelet_socket_identity() -> tuple[int, int]:
    """Inode and ctime of kubelet.sock: the filesystem may give a re-created socket the same inode."""
    st = (DEVICE_PLUGIN_DIR / "kubelet.sock").stat()
    return st.st_ino, st.st_ctime_ns


def kubelet_pid(state_dir: Path) -> int:
    pid = int((state_dir / "run" / "kubelet.pid").read_text())
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    assert "kubelet" in cmdline and str(state_dir) in cmdline, f"pid {pid} is not the harness's kubelet: {cmdline}"
    return pid


@pytest.mark.timeout(OTHERS_WAIT_S + 240)
def test_resource_comes_back_after_a_kubelet_restart(cluster: Cluster, slicer: Slicer, namespace: str) -> None:
    if cluster.state_dir is None:
        pytest.skip("the kubelet of a user's cluster is not ours to restart")
    try:
        wait_for("no other e2e run", lambda: not other_e2e_runs(), OTHERS_WAIT_S, OTHERS_POLL_S)
    except AssertionError:
        pytest.skip(f"other e2e runs kept using the shared cluster for {OTHERS_WAIT_S:.0f}s: {other_e2e_runs()}")
    before = slicer.registrations()
    socket_before = kubelet_socket_identity()
    pid = kubelet_pid(cluster.state_dir)
    killed = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    wait_for(f"kubelet pid {pid} to exit", lambda: not Path(f"/proc/{pid}").exists(), KUBELET_EXIT_TIMEOUT_S, 0.1)
    up = subprocess.run(
        ["bash", str(UP_SH)],
        env={**os.environ, "VOLTGRID_CLUSTER_DIR": str(cluster.state_dir)},
        capture_output=True,
        text=True,
        timeout=UP_TIMEOUT_S,
        check=False,
    )
    assert up.returncode == 0, f"up.sh failed ({up.returncode}):\n{up.stderr[-3000:]}"
    up_done = time.monotonic()
    assert kubelet_socket_identity() != socket_before, "kubelet.sock was not re-created"
    wait_for("the slicer to register again", lambda: slicer.registrations() > before, REGISTER_TIMEOUT_S)
    wait_for(
        f"node {NODE} to advertise {RESOURCE}: {ALL_SLICES} again",
        lambda: node_resource(cluster, "allocatable") == ALL_SLICES,
        REGISTER_TIMEOUT_S,
    )
    back = time.monotonic()
    print(
        f"\nkubelet restart: kill -> {RESOURCE} back in {back - killed:.2f}s "
        f"(up.sh took {up_done - killed:.2f}s, then {back - up_done:.2f}s)"
    )
    # The re-registered plugin serves Allocate: a new pod gets a slice.
    view = run_slice_pods(cluster, namespace, "after-restart")["after-restart"]
    assert view.env.get("NVIDIA_VISIBLE_DEVICES") in FAKE_UUIDS, view.env


def test_sigterm_empties_the_node_and_exits_0(cluster: Cluster, slicer: Slicer) -> None:
    wait_for(
        f"node {NODE} to advertise {RESOURCE}: {ALL_SLICES}",
        lambda: node_resource(cluster, "allocatable") == ALL_SLICES,
        REGISTER_TIMEOUT_S,
    )
    stopped = time.monotonic()
    os.kill(slicer.proc.pid, signal.SIGTERM)
    assert slicer.proc.wait(PLUGIN_EXIT_TIMEOUT_S) == 0, slicer.log_text()
    wait_for(f"node {NODE} to advertise {RESOURCE}: 0", lambda: node_resource(cluster, "allocatable") == "0", 30.0)
    print(f"\nSIGTERM -> {RESOURCE} allocatable 0 in {time.monotonic() - stopped:.2f}s")
    assert not PLUGIN_SOCKET.exists()
    assert "stopping: advertising no devices" in slicer.log_text()
