"""Pod create-to-Running latency on the real node: gVisor (runsc) against runc, same run.

    .venv/bin/python bench/bench_pod_start.py --kubeconfig /tmp/voltgrid-cluster/kubeconfig [--n 10]

Creates ``--n`` pods of the local Python image per runtime (runc = no runtimeClassName, gVisor =
``runtimeClassName: gvisor``), one at a time and alternating runc and gVisor, so a slow moment of
the node falls on both. Times creation until phase Running and until Ready, deletes each pod, and
prints p50 and the tail per runtime (a p99 from 100 samples up; below that the maximum, named so,
with the sample count) and the gVisor/runc ratio of the p50s: the price of the sandbox a Voltgrid
Sandbox pays by default. Needs a cluster with the RuntimeClass ``gvisor`` and the image
``localhost/voltgrid/python:3.11`` on its node (the local cluster of ``e2e/cluster/up.sh``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Final

from kubernetes import client, config, watch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, skip, tail

NAMESPACE: Final = "voltgrid-bench"
IMAGE: Final = "localhost/voltgrid/python:3.11"
POD_TIMEOUT_S: Final = 120


def pod(name: str, runtime: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [
            {
                "name": "main",
                "image": IMAGE,
                "imagePullPolicy": "Never",
                "command": ["python3", "-m", "http.server", "8080"],
                "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
            }
        ],
        "terminationGracePeriodSeconds": 0,
        "automountServiceAccountToken": False,
    }
    if runtime:
        spec["runtimeClassName"] = runtime
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def start_one(core: client.CoreV1Api, runtime: str | None) -> tuple[float, float]:
    """(seconds to Running, seconds to Ready) of one pod."""
    name = f"bench-{runtime or 'runc'}-{uuid.uuid4().hex[:6]}"
    t0 = time.perf_counter()
    body: Any = pod(name, runtime)  # the client takes plain dicts for its typed models
    core.create_namespaced_pod(NAMESPACE, body)
    running = ready = 0.0
    stream = watch.Watch()
    for event in stream.stream(
        core.list_namespaced_pod, NAMESPACE, field_selector=f"metadata.name={name}", timeout_seconds=POD_TIMEOUT_S
    ):
        status = event["object"].status
        if status.phase == "Running" and not running:
            running = time.perf_counter() - t0
        if any(c.type == "Ready" and c.status == "True" for c in status.conditions or []):
            ready = time.perf_counter() - t0
            stream.stop()
    core.delete_namespaced_pod(name, NAMESPACE, grace_period_seconds=0)
    if not ready:
        raise SystemExit(f"pod {name} ({runtime or 'runc'}) was not Ready within {POD_TIMEOUT_S}s")
    return running, ready


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubeconfig", help="the cluster to measure (without it, nothing runs)")
    parser.add_argument("--n", type=int, default=10, help="pods per runtime")
    args = parser.parse_args()
    if not args.kubeconfig:
        skip("needs a cluster: --kubeconfig PATH (e.g. /tmp/voltgrid-cluster/kubeconfig of e2e/cluster/up.sh)")
    print(machine())
    config.load_kube_config(args.kubeconfig)
    core = client.CoreV1Api()
    try:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
    except client.ApiException as e:
        if e.status != 409:
            raise
    results: dict[str, list[tuple[float, float]]] = {"runc": [], "gvisor": []}
    for _ in range(args.n):
        for runtime in (None, "gvisor"):  # interleaved: runc, gVisor, runc, ...
            results[runtime or "runc"].append(start_one(core, runtime))
    print(f"pods per runtime: {args.n}, alternating runc and gVisor")
    p50: dict[str, float] = {}
    for name, samples in results.items():
        running = [s[0] for s in samples]
        ready = [s[1] for s in samples]
        p50[name] = statistics.median(running)
        print(
            f"{name:7s} create->Running p50 {p50[name]:.2f}s {tail(running, unit='s')}"
            f" | create->Ready p50 {statistics.median(ready):.2f}s {tail(ready, unit='s')}"
        )
    print(f"ratio gvisor/runc (p50 to Running): {p50['gvisor'] / p50['runc']:.2f}x")


if __name__ == "__main__":
    main()
