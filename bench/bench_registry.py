"""Registry create+bind: throughput and p99 in process, against apiserver object creates.

    .venv/bin/python bench/bench_registry.py [--n 200000] [--kubeconfig PATH --objects 300]

Without ``--kubeconfig`` only the registry side is measured. With it, the same run creates
``--objects`` ConfigMaps (one etcd write each, the cost of "one object per session") through the
real apiserver, deletes them, and prints the ratio of per-session costs. Goal: >= 100x.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

from voltgrid.registry.ids import mint_session_id
from voltgrid.registry.store import SessionRegistry


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def bench_registry(n: int) -> tuple[float, float, float]:
    """(ops/s, p50 µs, p99 µs) of create + bind + touch of ``n`` sessions."""
    reg = SessionRegistry()
    ids = [mint_session_id() for _ in range(n)]
    latencies = []
    clock = time.perf_counter
    start = clock()
    for i, sid in enumerate(ids):
        t0 = clock()
        record = reg.create(sid, "bench/fn", now=t0, idle_timeout=900, max_lifetime=21600)
        reg.bind(record, f"inst-{i % 1000}", t0)
        reg.begin(record, t0)
        reg.end(record, t0, 100, 100)
        latencies.append(clock() - t0)
    total = clock() - start
    return n / total, statistics.median(latencies) * 1e6, percentile(latencies, 0.99) * 1e6


def bench_apiserver(kubeconfig: str, n: int) -> tuple[float, float, float]:
    from kubernetes import client, config  # noqa: PLC0415 (only with --kubeconfig)

    config.load_kube_config(kubeconfig)
    core = client.CoreV1Api()
    namespace = "default"
    prefix = f"vg-bench-{uuid.uuid4().hex[:6]}"
    latencies = []
    start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        core.create_namespaced_config_map(
            namespace,
            {
                "metadata": {"name": f"{prefix}-{i}", "labels": {"voltgrid.dev/bench": prefix}},
                "data": {"instance": f"inst-{i}"},
            },
        )
        latencies.append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    core.delete_collection_namespaced_config_map(namespace, label_selector=f"voltgrid.dev/bench={prefix}")
    return n / total, statistics.median(latencies) * 1e6, percentile(latencies, 0.99) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--kubeconfig")
    parser.add_argument("--objects", type=int, default=300)
    args = parser.parse_args()
    ops, p50, p99 = bench_registry(args.n)
    print(f"registry create+bind+touch: {args.n} sessions, {ops:,.0f} ops/s, p50 {p50:.2f} µs, p99 {p99:.2f} µs")
    if args.kubeconfig:
        k_ops, k50, k99 = bench_apiserver(args.kubeconfig, args.objects)
        print(
            f"apiserver ConfigMap create:  {args.objects} objects, {k_ops:,.0f} ops/s, "
            f"p50 {k50:.0f} µs, p99 {k99:.0f} µs"
        )
        print(f"ratio: throughput {ops / k_ops:,.0f}x, p99 latency {k99 / p99:,.0f}x (goal >= 100x)")
    else:
        print("(no --kubeconfig: apiserver comparison skipped)")


if __name__ == "__main__":
    main()
