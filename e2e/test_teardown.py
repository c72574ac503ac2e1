"""down.sh leaves nothing behind. Runs after every other test of the session (marker
``cluster_teardown``): it stops the session's own local cluster while runc and gVisor pods are
running, then check-clean.sh must find no process, mount, bridge, iptables chain or cgroup of it,
and a second down.sh must be a no-op. Also: down.sh on a state dir that was never up is harmless."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Final

import pytest

if TYPE_CHECKING:
    from e2e.conftest import Cluster

SCRIPTS: Final = Path(__file__).resolve().parent / "cluster"
SCRIPT_TIMEOUT_S: Final = 180


def script(name: str, state_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPTS / name)],
        env={**os.environ, "VOLTGRID_CLUSTER_DIR": str(state_dir)},
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
        check=False,
    )


def sleeper(name: str, runtime_class: str | None) -> str:
    spec: dict[str, object] = {
        "containers": [{"name": "main", "image": "localhost/voltgrid/python:3.11", "command": ["sleep", "3600"]}],
        "terminationGracePeriodSeconds": 1,
    }
    if runtime_class:
        spec["runtimeClassName"] = runtime_class
    return json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})


@pytest.mark.e2e
@pytest.mark.cluster_teardown
def test_down_leaves_nothing_behind(cluster: Cluster) -> None:
    if cluster.state_dir is None or not cluster.owned:
        pytest.skip("not this session's cluster (VOLTGRID_KUBECONFIG, or it was up before the session)")
    if os.environ.get("VOLTGRID_KEEP_CLUSTER", "") not in ("", "0"):
        pytest.skip("VOLTGRID_KEEP_CLUSTER keeps the cluster up")
    # Something to clean up: running pods under both runtimes, with volumes, netns and shims.
    cluster.kubectl("apply", "-f", "-", input=sleeper("teardown-runc", None))
    cluster.kubectl("apply", "-f", "-", input=sleeper("teardown-gvisor", "gvisor"))
    cluster.kubectl("wait", "--for=condition=Ready", "pod/teardown-runc", "pod/teardown-gvisor", "--timeout=90s")

    down = script("down.sh", cluster.state_dir)
    assert down.returncode == 0, down.stderr
    clean = script("check-clean.sh", cluster.state_dir)
    assert clean.returncode == 0, clean.stderr
    again = script("down.sh", cluster.state_dir)
    assert again.returncode == 0, again.stderr
    assert not (cluster.state_dir / "kubeconfig").exists()


def test_down_on_a_cluster_that_was_never_up_is_harmless(tmp_path: Path) -> None:
    never = script("down.sh", tmp_path / "never-created")
    assert never.returncode == 0, never.stderr
    assert "nothing to stop" in never.stderr
    assert not (tmp_path / "never-created").exists()
