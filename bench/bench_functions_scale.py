"""Control-plane scale: N Functions applied to a real apiserver, until every one reports Ready.

One run measures both sides of the ratio on the same cluster, with the same concurrency:

1. the ceiling: N Functions applied to ``NAMESPACE-ceiling``, then their N status writes sent by
   the bench itself, ``FUNCTION_WORKERS`` (the operator's worker count) at a time, with the exact
   status the operator's own builders produce and no operator running: what the apiserver alone
   sustains of the operator's only write;
2. the operator: N Functions applied to ``NAMESPACE`` (no pool, ``allowUnsandboxed``: they must
   cost nothing until used), then the operator (``voltgrid.controllers``) started as a child
   process scoped to it, timed until all N report ``Ready=True``, with its peak RSS and CPU time,
   the apiserver's CPU time meanwhile, and the number of pods created (must be 0).

Readiness is counted from a WATCH (one event per status write; a LIST of 100,000 objects per poll
would load the apiserver being measured). The ratio printed is operator time / ceiling time.

    .venv/bin/python bench/bench_functions_scale.py --kubeconfig /tmp/voltgrid-cluster/kubeconfig -n 10000
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import kopf

from voltgrid.api.function import Function
from voltgrid.controllers.builders import status as status_builder
from voltgrid.controllers.builders.pods import count
from voltgrid.controllers.builders.runtime import select_runtime
from voltgrid.controllers.core import FUNCTION_WORKERS
from voltgrid.controllers.kube import KubeClient, core_path, voltgrid_path
from voltgrid.controllers.settings import OperatorSettings

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, skip

#: Concurrent creates of the anchor (not part of the ratio).
CREATE_CONCURRENCY: Final = 64
#: Seconds between progress lines.
REPORT_INTERVAL: Final = 15.0
NAMESPACE_POLL_S: Final = 5.0
OPERATOR_CMD: Final = "from voltgrid.controllers.main import run_operator; run_operator()"


def function(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "voltgrid.dev/v1alpha1",
        "kind": "Function",
        "metadata": {"name": f"fn-{i:06d}"},
        "spec": {"image": "localhost/voltgrid/echo:1", "isolation": {"allowUnsandboxed": True}},
    }


def rss_kib(pid: int) -> tuple[int, int]:
    """(current, peak) resident set size of a process, in KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


async def create_all(client: KubeClient, ns: str, n: int) -> float:
    sem = asyncio.Semaphore(CREATE_CONCURRENCY)

    async def one(i: int) -> None:
        async with sem:
            await client.create(voltgrid_path("functions", ns), function(i))

    start = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.monotonic() - start


def operator_status(ns: str, i: int) -> dict[str, Any]:
    """The status the operator writes for this bench's Function ``i``, built by the operator's own
    builders (no pods, no sandboxed runtime: ``allowUnsandboxed``)."""
    fn = Function.model_validate({**function(i), "metadata": {"name": f"fn-{i:06d}", "namespace": ns}})
    status = status_builder.function_status(
        None,
        generation=1,
        choice=select_runtime(fn.spec.isolation, {}, [], fn.spec.resources.gpu),
        counts=count([]),
        url=OperatorSettings().invoke_url(ns, f"fn-{i:06d}"),
        now=datetime.now(UTC),
    )
    return {"status": status}


async def patch_all_statuses(client: KubeClient, ns: str, n: int) -> float:
    """The apiserver's own ceiling for the operator's only write: N status PATCHes, no operator, as
    many in flight as the operator has workers."""
    sem = asyncio.Semaphore(FUNCTION_WORKERS)

    async def one(i: int) -> None:
        async with sem:
            await client.patch(voltgrid_path("functions", ns, f"fn-{i:06d}") + "/status", operator_status(ns, i))

    start = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.monotonic() - start


def is_ready(body: dict[str, Any]) -> bool:
    conds = (body.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


async def current_version(client: KubeClient, ns: str) -> str:
    """The collection's resourceVersion now (a LIST of one item: cheap at any N)."""
    page = await client.request("GET", voltgrid_path("functions", ns), params={"limit": "1"})
    return str(page["metadata"]["resourceVersion"])


async def watch_ready(client: KubeClient, ns: str, version: str, n: int, ready: set[str]) -> None:
    """Follow the Functions from ``version`` until all ``n`` are in ``ready``."""
    while len(ready) < n:
        params = {"resourceVersion": version, "allowWatchBookmarks": "true"}  # the layer sets timeoutSeconds
        async for event in client.watch(voltgrid_path("functions", ns), params):
            body = event.get("object") or {}
            version = str((body.get("metadata") or {}).get("resourceVersion") or version)
            name = str((body.get("metadata") or {}).get("name"))
            if event.get("type") in ("ADDED", "MODIFIED") and is_ready(body):
                ready.add(name)
            elif event.get("type") in ("MODIFIED", "DELETED"):
                ready.discard(name)
            if len(ready) == n:
                return


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def apiserver_pid() -> int | None:
    found = subprocess.run(["pgrep", "-x", "kube-apiserver"], capture_output=True, text=True, check=False)
    return int(found.stdout.split()[0]) if found.stdout.split() else None


async def bench(kubeconfig: str, n: int, *, ns: str, wait_s: float, keep: bool = False) -> int:
    os.environ["KUBECONFIG"] = kubeconfig
    info = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings(), logger=logging.getLogger("bench"))
    assert info is not None, "no credentials in the kubeconfig"
    client = KubeClient(info)
    ceiling_ns = f"{ns}-ceiling"
    made: list[str] = []
    try:
        for name in (ceiling_ns, ns):
            await client.create(
                core_path("namespaces"), {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
            )
            made.append(name)
        create_s = await create_all(client, ceiling_ns, n)
        print(f"ceiling: applied {n} Functions in {create_s:.1f} s ({n / create_s:.0f}/s)", flush=True)
        ceiling_s = await patch_all_statuses(client, ceiling_ns, n)
        print(
            f"ceiling: {n} status PATCHes in {ceiling_s:.1f} s ({n / ceiling_s:.0f}/s, "
            f"{FUNCTION_WORKERS} concurrent, no operator)",
            flush=True,
        )
        create_s = await create_all(client, ns, n)
        print(f"operator: applied {n} Functions in {create_s:.1f} s ({n / create_s:.0f}/s): the anchor", flush=True)
        result = await run_operator(client, ns, n, wait_s)
        ready_s = result["time_to_all_ready"]
        print(
            f"RESULT n={n} ceiling={ceiling_s:.1f} s "
            + " ".join(f"{k}={v}" for k, v in result.items() if k != "time_to_all_ready")
            + f" time_to_all_ready={ready_s:.1f} s ratio_operator_vs_ceiling={ready_s / ceiling_s:.2f} "
            f"(same run, same cluster, {FUNCTION_WORKERS} concurrent writes on both sides)"
        )
        return 0 if result["ready"] == n and result["pods_created"] == 0 else 1
    finally:
        if keep:
            print(f"kept namespaces {made} and their Functions")
        else:
            for name in made:
                await delete_namespace(client, name)
        await client.close()


async def run_operator(client: KubeClient, ns: str, n: int, wait_s: float) -> dict[str, Any]:
    """Start the operator on ``ns`` and follow it until all ``n`` Functions are Ready (or ``wait_s``)."""
    env = {
        **os.environ,
        "VOLTGRID_OPERATOR_NAMESPACES": ns,
        "VOLTGRID_OPERATOR_LIVENESS": "",
        "VOLTGRID_OPERATOR_METRICS": "",
    }
    ready: set[str] = set()
    watcher = asyncio.create_task(watch_ready(client, ns, await current_version(client, ns), n, ready))
    apiserver = apiserver_pid()
    apiserver_cpu0 = cpu_seconds(apiserver) if apiserver else 0.0
    start = time.monotonic()
    proc = subprocess.Popen(  # noqa: ASYNC220 (a benchmark driver, nothing else runs)
        [sys.executable, "-c", OPERATOR_CMD],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        peak = 0
        while not watcher.done() and time.monotonic() - start < wait_s:
            await asyncio.wait([watcher], timeout=REPORT_INTERVAL)
            peak = max(peak, rss_kib(proc.pid)[1])
            print(
                f"  t={time.monotonic() - start:6.1f} s ready={len(ready)}/{n} rss_peak={peak / 1024:.0f} MiB",
                flush=True,
            )
        ready_s = time.monotonic() - start
        rss, peak = rss_kib(proc.pid)
        operator_cpu = cpu_seconds(proc.pid)
        apiserver_cpu = (cpu_seconds(apiserver) - apiserver_cpu0) if apiserver else float("nan")
        pods = len(await client.list(core_path("pods", ns)))
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        proc.terminate()
        proc.wait(timeout=60)
    return {
        "ready": len(ready),
        "time_to_all_ready": ready_s,
        "operator_rss": f"{rss / 1024:.0f}MiB",
        "operator_rss_peak": f"{peak / 1024:.0f}MiB",
        "operator_cpu": f"{operator_cpu:.0f}s",
        "apiserver_cpu": f"{apiserver_cpu:.0f}s",
        "pods_created": pods,
    }


async def delete_namespace(client: KubeClient, ns: str) -> None:
    """Delete the bench's namespace and wait until it is gone: the apiserver deletes its N Functions
    one by one, and a next run started meanwhile would be measured against that work."""
    start = time.monotonic()
    await client.delete(core_path("namespaces", None, ns))
    while await client.get(core_path("namespaces", None, ns)) is not None:  # noqa: ASYNC110 (polling the apiserver)
        await asyncio.sleep(NAMESPACE_POLL_S)
    print(f"cleanup: namespace {ns} gone after {time.monotonic() - start:.0f} s", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", help="the cluster to measure (without it, nothing runs)")
    parser.add_argument("-n", "--functions", type=int, default=10_000)
    parser.add_argument("--namespace", default="voltgrid-bench", help="and NAMESPACE-ceiling for the ceiling")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for all Ready")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="leave the namespaces: the apiserver deletes Functions at ~125/s, so at 100,000 tearing the "
        "throwaway cluster down is faster",
    )
    args = parser.parse_args()
    if not args.kubeconfig:
        skip("needs a cluster: --kubeconfig PATH (e.g. /tmp/voltgrid-cluster/kubeconfig of e2e/cluster/up.sh)")
    print(machine())
    return asyncio.run(bench(args.kubeconfig, args.functions, ns=args.namespace, wait_s=args.timeout, keep=args.keep))


if __name__ == "__main__":
    sys.exit(main())
