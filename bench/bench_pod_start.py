"""Pod create-to-Running latency on the real node: gVisor (runsc) against runc, same run.

    .venv/bin/python bench/bench_pod_start.py --kubeconfig /tmp/voltgrid-cluster/kubeconfig [--n 10]

Creates ``--n`` pods of the local Python image one after another for each runtime (runc = no
runtimeClassName, gVisor = ``runtimeClassName: gvisor``), times creation until phase Running and
until Ready, deletes them, and prints p50/p99 per runtime and the gVisor/runc ratio: the price of
the sandbox a Voltgrid Sandbox pays by default.
"""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any, Final

from kubernetes import client, config, watch

NAMESPACE: Final = "voltgrid-bench"
IMAGE: Final = "localhost/voltgrid/python:3.11"
POD_TIMEOUT_S: Final = 120


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


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
    core.create_namespaced_pod(NAMESPACE, pod(name, runtime))
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
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--n", type=int, default=10)
    args = parser.parse_args()
    config.load_kube_config(args.kubeconfig)
    core = client.CoreV1Api()
    try:
        core.create_namespace({"metadata": {"name": NAMESPACE}})
    except client.ApiException as e:
        if e.status != 409:
            raise
    results: dict[str, list[tuple[float, float]]] = {}
    for runtime in (None, "gvisor"):
        results[runtime or "runc"] = [start_one(core, runtime) for _ in range(args.n)]
    print(f"pods per runtime: {args.n}")
    summary = {}
    for name, samples in results.items():
        running = [s[0] for s in samples]
        ready = [s[1] for s in samples]
        summary[name] = percentile(running, 0.5)
        print(
            f"{name:7s} create->Running p50 {percentile(running, 0.5):.2f}s p99 {percentile(running, 0.99):.2f}s"
            f" | create->Ready p50 {percentile(ready, 0.5):.2f}s p99 {percentile(ready, 0.99):.2f}s"
        )
    print(f"ratio gvisor/runc (p50 to Running): {summary['gvisor'] / summary['runc']:.2f}x")


if __name__ == "__main__":
    main()
