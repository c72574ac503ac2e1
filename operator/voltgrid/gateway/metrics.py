"""Prometheus metrics of the gateway (``voltgrid_*``), on a registry of the app's own.

Per-function usage counters (active and held seconds) are computed at scrape time in O(1) per
function: besides the closed total, each function keeps how many sessions are currently active
(bound) and the sum of their start times, so the open stretches add up to ``n * now - sum``.
Per-session usage is in the Session API, not in labels (that would be unbounded cardinality).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
COLD_START_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)


class OpenIntervals:
    """A total of seconds plus intervals still open, summed in O(1)."""

    __slots__ = ("open", "since_sum", "total")

    def __init__(self) -> None:
        self.total = 0.0
        self.open = 0
        self.since_sum = 0.0

    def start(self, now: float) -> None:
        self.open += 1
        self.since_sum += now

    def stop(self, since: float, now: float) -> None:
        self.open -= 1
        self.since_sum -= since
        self.total += now - since

    def value(self, now: float) -> float:
        return self.total + (self.open * now - self.since_sum if self.open else 0.0)


class FunctionUsage:
    __slots__ = ("active", "held")

    def __init__(self) -> None:
        self.active = OpenIntervals()
        self.held = OpenIntervals()


class _UsageCollector(Collector):
    def __init__(self, usage: dict[str, FunctionUsage], clock: Callable[[], float]) -> None:
        self._usage = usage
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        now = self._clock()
        active = CounterMetricFamily(
            "voltgrid_session_active_seconds", "Seconds sessions had a request in flight", labels=["function"]
        )
        held = CounterMetricFamily(
            "voltgrid_session_held_seconds", "Seconds sessions held a bound instance", labels=["function"]
        )
        for function, u in list(self._usage.items()):
            active.add_metric([function], u.active.value(now))
            held.add_metric([function], u.held.value(now))
        yield active
        yield held


class GatewayMetrics:
    """The gateway's metric objects."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.usage: dict[str, FunctionUsage] = {}
        self._children: dict[tuple[str, int], tuple[Any, Any, Any, Any]] = {}
        r.register(_UsageCollector(self.usage, clock))
        self.requests = Counter("voltgrid_requests", "Requests proxied", ["function", "code"], registry=r)
        self.latency = Histogram(
            "voltgrid_request_duration_seconds",
            "Time to response headers through the gateway",
            ["function"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.bytes = Counter("voltgrid_request_bytes", "Body bytes proxied", ["function", "direction"], registry=r)
        self.session_requests = Counter(
            "voltgrid_session_requests", "Requests that belonged to a session", ["function"], registry=r
        )
        self.sessions = Gauge("voltgrid_sessions", "Sessions known to this replica", ["function", "state"], registry=r)
        self.instances = Gauge("voltgrid_instances", "Instances known to this replica", ["function"], registry=r)
        self.cold_starts = Counter("voltgrid_cold_starts", "Instance starts", ["function", "result"], registry=r)
        self.cold_start_seconds = Histogram(
            "voltgrid_cold_start_seconds", "Instance start time", ["function"], buckets=COLD_START_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("voltgrid_queue_depth", "Requests waiting for an instance", ["function"], registry=r)
        self.queue_rejected = Counter(
            "voltgrid_queue_rejected", "Requests refused because the queue was full", ["function"], registry=r
        )
        self.warm_claims = Counter(
            "voltgrid_warm_claims", "Sessions placed on a warm instance", ["function"], registry=r
        )
        self.prestop = Counter("voltgrid_prestop_calls", "preStop calls", ["function", "result"], registry=r)
        self.releases = Counter("voltgrid_releases", "Session releases", ["function", "reason"], registry=r)
        self.forwarded = Counter(
            "voltgrid_forwarded", "Requests forwarded to the owning replica", ["result"], registry=r
        )
        self.sandbox_claims = Counter(
            "voltgrid_sandbox_claims", "Sandbox claims answered here", ["template", "result"], registry=r
        )
        self.sandbox_claim_seconds = Histogram(
            "voltgrid_sandbox_claim_seconds",
            "Time to answer a sandbox claim (waiting for a dry pool included)",
            ["template"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.sandbox_pool = Gauge(
            "voltgrid_sandbox_pool_pods",
            "Ready unclaimed pods of a pool as this replica sees them",
            ["template"],
            registry=r,
        )
        self.sandboxes = Gauge("voltgrid_sandboxes", "Claimed sandboxes this replica knows", registry=r)

    def request_done(self, function: str, status: int, seconds: float, bytes_in: int, bytes_out: int) -> None:
        """Count one finished request (label children are cached: this runs per request)."""
        key = (function, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(function, str(status)),
                self.latency.labels(function),
                self.bytes.labels(function, "in"),
                self.bytes.labels(function, "out"),
            )
        requests, latency, b_in, b_out = children
        requests.inc()
        latency.observe(seconds)
        if bytes_in:
            b_in.inc(bytes_in)
        if bytes_out:
            b_out.inc(bytes_out)

    def function_usage(self, function: str) -> FunctionUsage:
        usage = self.usage.get(function)
        if usage is None:
            usage = self.usage[function] = FunctionUsage()
        return usage
