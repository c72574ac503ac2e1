"""Control-plane scale: N Functions applied to a real apiserver, until every one reports Ready.

Creates a namespace, applies N Functions (no pool: they must cost nothing until used), starts the
operator (``voltgrid.controllers``) scoped to that namespace as a child process, and measures:
the time from operator start until all N report ``Ready=True``, the operator's peak RSS, and the
number of pods it created (must be 0). The anchor, measured in the same run, is the time the
apiserver took to accept the N creates: the ratio says how much the operator adds on top of merely
storing the objects. Usage:

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
from voltgrid.controllers.builders import status as st
from voltgrid.controllers.builders.pods import count
from voltgrid.controllers.builders.runtime import select_runtime
from voltgrid.controllers.kube import KubeClient, core_path, voltgrid_path
from voltgrid.controllers.settings import OperatorSettings

CREATE_CONCURRENCY: Final = 64
POLL_INTERVAL: Final = 5.0
#: Functions per second of poll interval: a LIST of all N loads the apiserver being measured, so at
#: 100,000 the bench lists every 50 s, not every 5 (the figure's resolution is the interval).
LISTED_PER_POLL_SECOND: Final = 2000
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
    status = st.function_status(
        None,
        generation=1,
        choice=select_runtime(fn.spec.isolation, {}, [], fn.spec.resources.gpu),
        counts=count([]),
        url=OperatorSettings().invoke_url(ns, f"fn-{i:06d}"),
        now=datetime.now(UTC),
    )
    return {"status": status}


async def patch_all_statuses(client: KubeClient, ns: str, n: int) -> float:
    """The apiserver's own ceiling for the operator's only write: N status PATCHes, no operator."""
    sem = asyncio.Semaphore(CREATE_CONCURRENCY)

    async def one(i: int) -> None:
        async with sem:
            await client.patch(voltgrid_path("functions", ns, f"fn-{i:06d}") + "/status", operator_status(ns, i))

    start = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(n)))
    return time.monotonic() - start


async def count_ready(client: KubeClient, ns: str) -> int:
    ready = 0
    for fn in await client.list(voltgrid_path("functions", ns)):
        conds = (fn.get("status") or {}).get("conditions") or []
        ready += any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)
    return ready


async def bench(kubeconfig: str, n: int, ns: str, wait_s: float, status_ceiling: bool = False) -> int:
    os.environ["KUBECONFIG"] = kubeconfig
    info = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings(), logger=logging.getLogger("bench"))
    assert info is not None, "no credentials in the kubeconfig"
    client = KubeClient(info)
    try:
        await client.create(
            core_path("namespaces"), {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
        )
        create_s = await create_all(client, ns, n)
        print(f"applied {n} Functions in {create_s:.1f} s ({n / create_s:.0f}/s): the anchor")
        if status_ceiling:
            patch_s = await patch_all_statuses(client, ns, n)
            print(
                f"RESULT n={n} direct_status_patches={patch_s:.1f} s ({n / patch_s:.0f}/s, "
                f"{CREATE_CONCURRENCY} concurrent, no operator): the apiserver's ceiling for the operator's writes"
            )
            return 0
        env = {**os.environ, "VOLTGRID_OPERATOR_NAMESPACES": ns, "VOLTGRID_OPERATOR_LIVENESS": ""}
        start = time.monotonic()
        proc = subprocess.Popen(  # noqa: ASYNC220 (a benchmark driver, nothing else runs)
            [sys.executable, "-c", OPERATOR_CMD],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            ready, peak = 0, 0
            poll_s = max(POLL_INTERVAL, n / LISTED_PER_POLL_SECOND)
            while time.monotonic() - start < wait_s:
                await asyncio.sleep(poll_s)
                peak = max(peak, rss_kib(proc.pid)[1])
                ready = await count_ready(client, ns)
                print(
                    f"  t={time.monotonic() - start:6.1f} s ready={ready}/{n} rss_peak={peak / 1024:.0f} MiB",
                    flush=True,
                )
                if ready == n:
                    break
            ready_s = time.monotonic() - start
            pods = len(await client.list(core_path("pods", ns)))
            rss, peak = rss_kib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        print(
            f"RESULT n={n} ready={ready} time_to_all_ready={ready_s:.1f} s operator_rss={rss / 1024:.0f} MiB "
            f"operator_rss_peak={peak / 1024:.0f} MiB pods_created={pods} "
            f"ratio_ready_vs_apply={ready_s / create_s:.2f}"
        )
        return 0 if ready == n and pods == 0 else 1
    finally:
        await client.delete(core_path("namespaces", None, ns))
        await client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("-n", "--functions", type=int, default=10_000)
    parser.add_argument("--namespace", default="voltgrid-bench")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for all Ready")
    parser.add_argument(
        "--status-ceiling",
        action="store_true",
        help="instead of running the operator, PATCH every status from here: what the apiserver alone sustains",
    )
    args = parser.parse_args()
    return asyncio.run(bench(args.kubeconfig, args.functions, args.namespace, args.timeout, args.status_ceiling))


if __name__ == "__main__":
    sys.exit(main())
