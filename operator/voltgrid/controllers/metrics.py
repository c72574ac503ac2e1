"""Prometheus metrics of the operator (``voltgrid_operator_*``), on a registry of its own.

What an operator's user watches in controller-runtime or Knative: how deep the work queue is, how
many reconciles succeed or fail and how long they take, retries, relists, status writes, and
whether this replica is the active one. Labels are bounded (queue and resource names, a result, a
reason); never an object name. Served on ``settings.metrics`` (``http://0.0.0.0:8082/metrics`` by
default; the chart's ServiceMonitor scrapes it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from voltgrid.controllers.settings import parse_http_endpoint

RECONCILE_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.reconciles = Counter(
            "voltgrid_operator_reconciles_total", "Reconciles by work queue and result", ["queue", "result"], registry=r
        )
        self.reconcile_seconds = Histogram(
            "voltgrid_operator_reconcile_seconds",
            "Time to handle one object",
            ["queue"],
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "voltgrid_operator_workqueue_retries_total", "Failed items scheduled for a retry", ["queue"], registry=r
        )
        self.depth = Gauge(
            "voltgrid_operator_workqueue_depth", "Objects waiting or being handled", ["queue"], registry=r
        )
        self.relists = Counter(
            "voltgrid_operator_relists_total",
            "LISTs of a watched resource, by reason",
            ["resource", "reason"],
            registry=r,
        )
        self.status_writes = Counter(
            "voltgrid_operator_status_writes_total", "Status writes by resource", ["resource"], registry=r
        )
        self.own_events_skipped = Counter(
            "voltgrid_operator_own_write_events_skipped_total",
            "Watch events of the operator's own status writes, recognised and not reconciled",
            ["resource"],
            registry=r,
        )
        self.active = Gauge("voltgrid_operator_active", "1 while this replica is the active one", registry=r)
        self.pool_pods = Gauge(
            "voltgrid_operator_pool_pods",
            "SandboxTemplate pool pods by state (ready, warming, claimed, dead), all templates together",
            ["state"],
            registry=r,
        )
        self.pool_pods_created = Counter(
            "voltgrid_operator_pool_pods_created_total", "Pool pods created (refills and rollouts)", registry=r
        )

    def watch_depth(self, queue: str, depth: Callable[[], int]) -> None:
        self.depth.labels(queue=queue).set_function(lambda: float(depth()))

    def watch_active(self, active: Callable[[], bool]) -> None:
        self.active.set_function(lambda: 1.0 if active() else 0.0)

    def watch_pools(self, states: Callable[[], Mapping[str, int]], names: Iterable[str]) -> None:
        """``states()``: pool pods per state, read at each scrape (no bookkeeping to drift)."""
        for name in names:
            self.pool_pods.labels(state=name).set_function(_count_of(states, name))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _count_of(states: Callable[[], Mapping[str, int]], name: str) -> Callable[[], float]:
    return lambda: float(states().get(name, 0))


async def serve(metrics: OperatorMetrics, url: str) -> web.AppRunner:
    """Serve the registry at ``url``; the caller cleans the runner up."""
    host, port, path = parse_http_endpoint("metrics", url, "/metrics")

    async def scrape(_: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get(path, scrape)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
