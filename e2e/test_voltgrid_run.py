"""`make run` as a newcomer meets it: `voltgrid run` on the local cluster brings the chart up, the
gateway answers on 127.0.0.1 through both replicas, a session's count survives an idle release and
wake, and Ctrl-C removes what it installed (the claims stay)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from ports import free_port

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]
#: Image build (cached), helm install --wait, the examples Ready: a few minutes on this VM.
START_TIMEOUT_S = 420


def call(port: int, session: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/fn/default/echo/", data=b"hi", headers={"X-Voltgrid-Session": session}
    )
    with urllib.request.urlopen(request, timeout=180) as answer:
        out: dict[str, Any] = json.loads(answer.read())
        return out


@pytest.mark.timeout(START_TIMEOUT_S + 420)
def test_voltgrid_run_serves_the_product_and_cleans_up_on_ctrl_c(cluster: Any, voltgrid_image: str) -> None:
    if cluster.state_dir is None:
        pytest.skip("`voltgrid run` deploys to the local cluster; a user's cluster needs --yes-use-this-cluster")
    port = free_port()
    env = {
        **os.environ,
        "VOLTGRID_CLUSTER_DIR": str(cluster.state_dir),
        "VOLTGRID_RUN_VOLUMES": str(cluster.state_dir / "run-volumes"),
        "PATH": f"{cluster.bin_dir}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("VOLTGRID_KUBECONFIG", None)
    log = cluster.state_dir / "logs" / "voltgrid-run.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "voltgrid.cli.main", "run", "--port", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "Voltgrid is running" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(2)
        assert "2 gateways" in log.read_text()
        cluster.kubectl("patch", "-n", "default", "function/echo", "--type=merge",
                        "-p", json.dumps({"spec": {"sessions": {"idleTimeout": "5s"}}}))  # fmt: skip
        session = f"run-{os.urandom(4).hex()}"
        assert [call(port, session)["requests"] for _ in range(3)] == [1, 2, 3]
        deadline = time.monotonic() + 120
        while cluster.kubectl("get", "pods", "-n", "default", "-l", f"voltgrid.dev/session={session}",
                              "-o", "name").stdout.strip():  # fmt: skip
            assert time.monotonic() < deadline, "the idle session was never released"
            time.sleep(2)
        assert call(port, session)["requests"] == 4  # woken on a new pod, its directory intact
        gateways = cluster.kubectl("get", "pods", "-n", "voltgrid-system", "-l", "app.kubernetes.io/component=gateway",
                                   "-o", "name").stdout.split()  # fmt: skip
        assert len(gateways) == 2
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=300)
    assert proc.returncode == 0, log.read_text()
    assert cluster.kubectl("get", "functions", "-n", "default", "-o", "name").stdout.strip() == ""
    assert "voltgrid" not in cluster.kubectl("get", "deploy", "-n", "voltgrid-system", "-o", "name").stdout
    assert cluster.kubectl("get", "pvc", "-n", "default", "sessions", "-o", "name").stdout.strip()  # data kept
    for claim in ("default/sessions", "voltgrid-system/voltgrid-sessions"):  # leave the cluster as found
        namespace, name = claim.split("/")
        cluster.kubectl("delete", "pvc", "-n", namespace, name, "--ignore-not-found", "--wait=true")
    cluster.kubectl("delete", "pv", "voltgrid-run-sessions", "voltgrid-run-example-sessions", "--ignore-not-found")
    cluster.kubectl("delete", "namespace", "voltgrid-system", "--ignore-not-found", "--wait=true", timeout=300)
