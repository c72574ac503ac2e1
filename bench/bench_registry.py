"""Registry create+bind: throughput and p99 in process, against apiserver object creates.

    .venv/bin/python bench/bench_registry.py [--n 200000] [--kubeconfig PATH --objects 3000 --writers 16]

Without ``--kubeconfig`` only the registry side is measured (and the comparison is reported as
skipped). With it, the same run creates ``--objects`` ConfigMaps (one etcd write each, the cost of
"one object per session") through the real apiserver from ``--writers`` concurrent clients (the
apiserver serves writes in parallel, so one writer would understate it), deletes them, and prints
the ratio of per-session costs. Goal: >= 100x.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, percentile, tail
from voltgrid.registry.ids import mint_session_id
from voltgrid.registry.store import SessionRegistry


def bench_registry(n: int) -> tuple[float, list[float]]:
    """(ops/s, latencies in seconds) of create + bind + touch of ``n`` sessions."""
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
    return n / total, latencies


def bench_apiserver(kubeconfig: str, n: int, writers: int) -> tuple[float, list[float]]:
    """(creates/s, latencies in seconds) of ``n`` ConfigMap creates from ``writers`` concurrent clients."""
    from kubernetes import client, config  # noqa: PLC0415 (only with --kubeconfig)

    configuration = client.Configuration()
    config.load_kube_config(kubeconfig, client_configuration=configuration)
    configuration.connection_pool_maxsize = writers
    core = client.CoreV1Api(client.ApiClient(configuration))
    namespace = "default"
    prefix = f"vg-bench-{uuid.uuid4().hex[:6]}"

    def create(i: int) -> float:
        t0 = time.perf_counter()
        body = client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=f"{prefix}-{i}", labels={"voltgrid.dev/bench": prefix}),
            data={"instance": f"inst-{i}"},
        )
        core.create_namespaced_config_map(namespace, body)
        return time.perf_counter() - t0

    start = time.perf_counter()
    try:
        with ThreadPoolExecutor(writers) as pool:
            latencies = list(pool.map(create, range(n)))
        total = time.perf_counter() - start
    finally:
        core.delete_collection_namespaced_config_map(namespace, label_selector=f"voltgrid.dev/bench={prefix}")
    return n / total, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--kubeconfig", help="also measure apiserver creates on this cluster, in the same run")
    parser.add_argument("--objects", type=int, default=3000)
    parser.add_argument("--writers", type=int, default=16, help="concurrent apiserver clients")
    args = parser.parse_args()
    print(machine())
    ops, lat = bench_registry(args.n)
    r50, r99 = statistics.median(lat), percentile(lat, 0.99)
    print(
        f"registry create+bind+touch: {args.n} sessions, {ops:,.0f} ops/s, "
        f"p50 {r50 * 1e6:.2f} µs, {tail(lat, 1e6, ' µs')}"
    )
    if not args.kubeconfig:
        print("apiserver comparison SKIPPED: needs a cluster (--kubeconfig PATH)")
        return
    k_ops, k_lat = bench_apiserver(args.kubeconfig, args.objects, args.writers)
    k99 = percentile(k_lat, 0.99)
    print(
        f"apiserver ConfigMap create: {args.objects} objects, {args.writers} concurrent writers, {k_ops:,.0f} ops/s, "
        f"p50 {statistics.median(k_lat) * 1e3:.1f} ms, {tail(k_lat, 1e3, ' ms')}"
    )
    print(f"ratio: throughput {ops / k_ops:,.0f}x, p99 latency {k99 / r99:,.0f}x (goal >= 100x; tails as above)")


if __name__ == "__main__":
    main()
