"""The real Kubernetes cluster of the end-to-end tests, one per pytest session.

Tests marked ``e2e`` ask for the ``cluster`` fixture. With ``$VOLTGRID_KUBECONFIG`` set, that is
the user's own cluster (kind, k3d, ...), used as is. Otherwise it is the local single-node cluster
of ``e2e/cluster/up.sh`` (real etcd, apiserver, controller-manager, scheduler, kubelet, containerd
with runc and gVisor), started once for the session and stopped with ``down.sh`` at its end --
unless ``VOLTGRID_KEEP_CLUSTER=1``, or unless it was already running before the session (then it
is somebody's cluster, reused and left up). Tests that are not marked ``e2e`` cannot use it, so a
plain unit run never starts a cluster.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NoReturn

import pytest

from e2ehelpers import IMAGE_BUILD_TIMEOUT_S, SANDBOX_IMAGE_BUILD_TIMEOUT_S

SCRIPTS: Final = Path(__file__).resolve().parent / "cluster"
DEFAULT_STATE_DIR: Final = Path("/tmp/voltgrid-cluster")
UP_TIMEOUT_S: Final = 600.0
DOWN_TIMEOUT_S: Final = 180.0
KUBECTL_TIMEOUT_S: Final = 120.0
TEARDOWN_MARKER: Final = "cluster_teardown"


@dataclass(frozen=True)
class Cluster:
    """A reachable cluster: its admin kubeconfig and the directory holding a matching kubectl."""

    kubeconfig: Path
    bin_dir: Path
    # The local cluster's state dir (scripts' $VOLTGRID_CLUSTER_DIR); None for a user's cluster.
    state_dir: Path | None
    # Whether this session started it (and so may stop it).
    owned: bool

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = KUBECTL_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        """Runs kubectl against the cluster; with check, a failure raises with kubectl's stderr."""
        argv = [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args]
        done = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done

    def without_gvisor(self, why: str) -> NoReturn:
        """A test that needs gVisor found none. The local cluster of ``up.sh`` always installs it, so
        there its absence is a failure (CI must not go green without the sandbox); a user's cluster
        may lack it, so there the test is skipped with the reason."""
        if self.state_dir is not None:
            pytest.fail(f"the local cluster has no gVisor: {why}", pytrace=False)
        pytest.skip(f"this cluster has no gVisor: {why}")


def script_env(state_dir: Path) -> dict[str, str]:
    return {**os.environ, "VOLTGRID_CLUSTER_DIR": str(state_dir)}


def run_script(name: str, state_dir: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """Runs one of e2e/cluster/*.sh on the given state dir, capturing its output."""
    return subprocess.run(
        ["bash", str(SCRIPTS / name)],
        env=script_env(state_dir),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def k8s_bin_dir() -> Path:
    """The pinned Kubernetes binaries (built on first use; instant when cached)."""
    built = subprocess.run(
        ["bash", str(SCRIPTS / "build-k8s.sh")], capture_output=True, text=True, timeout=UP_TIMEOUT_S, check=False
    )
    if built.returncode != 0:
        pytest.fail(f"build-k8s.sh failed:\n{tail(built.stderr)}", pytrace=False)
    return Path(built.stdout.strip().splitlines()[-1])


def is_up(cluster: Cluster) -> bool:
    if not cluster.kubeconfig.is_file():
        return False
    return cluster.kubectl("get", "--raw", "/readyz", check=False, timeout=10).returncode == 0


def keep_cluster() -> bool:
    return os.environ.get("VOLTGRID_KEEP_CLUSTER", "") not in ("", "0")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{TEARDOWN_MARKER}: stops the session's local cluster; such tests run after all others"
    )


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()) and item.get_closest_marker("e2e") is None:
            raise pytest.UsageError(f"{item.nodeid} uses the cluster fixture but is not marked e2e")
    # Stable: everything else keeps its order, tests that tear the cluster down go last.
    items.sort(key=lambda item: item.get_closest_marker(TEARDOWN_MARKER) is not None)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The session's cluster (see the module docstring)."""
    external = os.environ.get("VOLTGRID_KUBECONFIG")
    bin_dir = k8s_bin_dir()
    if external:
        yield Cluster(kubeconfig=Path(external), bin_dir=bin_dir, state_dir=None, owned=False)
        return
    state_dir = Path(os.environ.get("VOLTGRID_CLUSTER_DIR", str(DEFAULT_STATE_DIR)))
    local = Cluster(kubeconfig=state_dir / "kubeconfig", bin_dir=bin_dir, state_dir=state_dir, owned=True)
    if is_up(local):
        yield Cluster(kubeconfig=local.kubeconfig, bin_dir=bin_dir, state_dir=state_dir, owned=False)
        return
    started = time.monotonic()
    up = run_script("up.sh", state_dir, UP_TIMEOUT_S)
    if up.returncode != 0:
        run_script("down.sh", state_dir, DOWN_TIMEOUT_S)
        pytest.fail(f"up.sh failed ({up.returncode}):\n{tail(up.stderr)}", pytrace=False)
    print(f"\nlocal cluster up in {time.monotonic() - started:.1f}s ({state_dir})", file=sys.stderr)
    try:
        yield local
    finally:
        if not keep_cluster():
            down = run_script("down.sh", state_dir, DOWN_TIMEOUT_S)
            if down.returncode != 0:
                print(f"down.sh failed ({down.returncode}):\n{tail(down.stderr)}", file=sys.stderr)


@pytest.fixture(scope="session")
def voltgrid_crds(cluster: Cluster) -> Cluster:
    """The cluster with the repo's CRDs applied (server-side, so a chart's earlier copy is adopted)."""
    crds = SCRIPTS.parent.parent / "crds"
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds))
    for name in ("functions", "sessions", "sandboxes"):
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}.voltgrid.dev")
    return cluster


def chart_app_version() -> str:
    chart = (SCRIPTS.parent.parent / "charts" / "voltgrid" / "Chart.yaml").read_text()
    match = re.search(r'^appVersion: "?([^"\n]+)"?$', chart, re.M)
    assert match
    return match.group(1)


@pytest.fixture(scope="session")
def voltgrid_image(cluster: Cluster) -> str:
    """localhost/voltgrid/voltgrid:dev in the node's containerd, also tagged as the chart's default image
    (the one the chart and examples/ name); returns that default's full name."""
    if cluster.state_dir is None:
        pytest.skip("a user's cluster: load localhost/voltgrid/voltgrid:dev (e2e/images/build-voltgrid-image.sh) first")
    script_env = {**os.environ, "VOLTGRID_CLUSTER_DIR": str(cluster.state_dir)}
    out = subprocess.run(
        ["bash", str(SCRIPTS.parent / "images" / "build-voltgrid-image.sh"), "--import"],
        env=script_env,
        capture_output=True,
        text=True,
        timeout=IMAGE_BUILD_TIMEOUT_S,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    # The build tags the archive with the chart's default short name; ctr's import normalises it
    # exactly as the kubelet resolves the pod's image, so we look it up rather than spell it out.
    sock = str(cluster.state_dir / "containerd" / "containerd.sock")
    names = subprocess.run(
        ["ctr", "-a", sock, "-n", "k8s.io", "images", "ls", "-q"], capture_output=True, text=True, check=True
    ).stdout.split()
    wanted = f"/voltgrid/voltgrid:{chart_app_version()}"
    default = next((n for n in names if n.endswith(wanted)), None)
    assert default is not None, f"no image ending in {wanted} after the import: {names}"
    return default


@pytest.fixture(scope="session")
def sandbox_image(cluster: Cluster) -> str:
    """localhost/voltgrid/sandbox:dev (the Voltgrid image plus the agent's eight languages from the
    host's Debian packages, e2e/images/build-sandbox-image.sh) in the node's containerd."""
    if cluster.state_dir is None:
        pytest.skip("a user's cluster: load localhost/voltgrid/sandbox:dev (e2e/images/build-sandbox-image.sh) first")
    out = subprocess.run(
        ["bash", str(SCRIPTS.parent / "images" / "build-sandbox-image.sh"), "--import"],
        env={**os.environ, "VOLTGRID_CLUSTER_DIR": str(cluster.state_dir)},
        capture_output=True,
        text=True,
        timeout=SANDBOX_IMAGE_BUILD_TIMEOUT_S,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return "localhost/voltgrid/sandbox:dev"
