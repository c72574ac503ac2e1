"""The local cluster itself: real pods from the locally built images start under runc and under
gVisor (RuntimeClass ``gvisor``), serve HTTP on their pod IPs to the host, and gVisor pods really
run on gVisor's kernel. Prints how long each runtime takes from create to Running."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

import pytest

if TYPE_CHECKING:
    from e2e.conftest import Cluster

pytestmark = pytest.mark.e2e

PYTHON_IMAGE: Final = "localhost/voltgrid/python:3.11"
START_TIMEOUT_S: Final = 90
HTTP_TIMEOUT_S: Final = 10.0
PORT: Final = 8080


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"vg-e2e-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def web_pod(name: str, script: str, runtime_class: str | None = None) -> dict[str, Any]:
    """A pod of the Python image that runs a shell script, then serves HTTP on PORT."""
    spec: dict[str, Any] = {
        "containers": [
            {
                "name": "web",
                "image": PYTHON_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["sh", "-c", f"{script}; exec python3 -m http.server {PORT}"],
                "readinessProbe": {"tcpSocket": {"port": PORT}, "periodSeconds": 1},
            }
        ],
        "terminationGracePeriodSeconds": 1,
    }
    if runtime_class:
        spec["runtimeClassName"] = runtime_class
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def start(cluster: Cluster, namespace: str, pod: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """Creates the pod and waits until it is Running; returns its object and the seconds it took."""
    began = time.monotonic()
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod))
    name = pod["metadata"]["name"]
    waited = cluster.kubectl(
        "wait",
        "-n",
        namespace,
        "--for=jsonpath={.status.phase}=Running",
        f"pod/{name}",
        f"--timeout={START_TIMEOUT_S}s",
        check=False,
        timeout=START_TIMEOUT_S + 30,
    )
    took = time.monotonic() - began
    if waited.returncode != 0:
        described = cluster.kubectl("describe", "pod", "-n", namespace, name, check=False).stdout
        pytest.fail(f"pod {name} not Running after {START_TIMEOUT_S}s:\n{described[-3000:]}")
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Ready", f"pod/{name}", f"--timeout={START_TIMEOUT_S}s")
    got = json.loads(cluster.kubectl("get", "pod", "-n", namespace, name, "-o", "json").stdout)
    return got, took


def http_get(pod: dict[str, Any]) -> str:
    with urllib.request.urlopen(f"http://{pod['status']['podIP']}:{PORT}/", timeout=HTTP_TIMEOUT_S) as response:
        assert response.status == 200
        return str(response.read().decode())


def test_runc_pod_serves_http_on_its_pod_ip(cluster: Cluster, namespace: str) -> None:
    pod, took = start(cluster, namespace, web_pod("runc", "echo hello from runc"))
    print(f"runc pod: create -> Running in {took:.2f}s")
    assert "Directory listing" in http_get(pod)
    assert "hello from runc" in cluster.kubectl("logs", "-n", namespace, "runc").stdout
    # The apiserver's real address answers inside pods, as the in-cluster config finds it.
    probe = (
        "import os, ssl, urllib.request; "
        "ctx = ssl.create_default_context(cafile='/var/run/secrets/kubernetes.io/serviceaccount/ca.crt'); "
        "env = os.environ; "
        "url = 'https://%s:%s/version' % (env['KUBERNETES_SERVICE_HOST'], env['KUBERNETES_SERVICE_PORT']); "
        "print(urllib.request.urlopen(url, context=ctx, timeout=10).read().decode())"
    )
    version = cluster.kubectl("exec", "-n", namespace, "runc", "--", "python3", "-c", probe).stdout
    assert '"gitVersion"' in version


def test_gvisor_pod_runs_on_the_gvisor_kernel(cluster: Cluster, namespace: str) -> None:
    runtime_classes = cluster.kubectl("get", "runtimeclass", "-o", "name").stdout.split()
    if "runtimeclass.node.k8s.io/gvisor" not in runtime_classes:
        cluster.without_gvisor("no RuntimeClass gvisor")
    pod, took = start(cluster, namespace, web_pod("gvisor", "uname -r; dmesg", runtime_class="gvisor"))
    print(f"gvisor pod: create -> Running in {took:.2f}s")
    assert "Directory listing" in http_get(pod)
    logs = cluster.kubectl("logs", "-n", namespace, "gvisor").stdout.splitlines()
    assert logs[0] == "4.4.0", logs[:3]  # gVisor's emulated kernel, not the host's
    assert any("Starting gVisor" in line for line in logs), logs[:5]
    uname = cluster.kubectl("exec", "-n", namespace, "gvisor", "--", "uname", "-r").stdout.strip()
    assert uname == "4.4.0"


def test_gvisor_container_exit_code_and_output_reach_kubernetes(cluster: Cluster, namespace: str) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "exits"},
        "spec": {
            "runtimeClassName": "gvisor",
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": PYTHON_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c", "echo to-stdout; echo to-stderr >&2; exit 3"],
                }
            ],
        },
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod))
    cluster.kubectl(
        "wait",
        "-n",
        namespace,
        "--for=jsonpath={.status.phase}=Failed",
        "pod/exits",
        f"--timeout={START_TIMEOUT_S}s",
        timeout=START_TIMEOUT_S + 30,
    )
    got = json.loads(cluster.kubectl("get", "pod", "-n", namespace, "exits", "-o", "json").stdout)
    assert got["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3
    logs = cluster.kubectl("logs", "-n", namespace, "exits").stdout.split()
    assert sorted(logs) == ["to-stderr", "to-stdout"]
