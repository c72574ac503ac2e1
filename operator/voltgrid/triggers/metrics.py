"""Prometheus metrics of the dispatcher, per trigger (``<namespace>/<function>/<trigger>``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge


@dataclass
class TriggerMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        labels = ["trigger"]
        r = self.registry
        self.delivered = Counter("voltgrid_trigger_delivered", "Events the Function answered 2xx", labels, registry=r)
        self.failed = Counter("voltgrid_trigger_failed", "Delivery attempts without a 2xx answer", labels, registry=r)
        self.retried = Counter("voltgrid_trigger_retried", "Redeliveries after a failed attempt", labels, registry=r)
        self.dead_lettered = Counter(
            "voltgrid_trigger_dead_lettered", "Events moved to the dead letter after maxRetries", labels, registry=r
        )
        self.skipped = Counter(
            "voltgrid_trigger_skipped", "Cron ticks not fired (catch-up Skip, concurrency Forbid)", labels, registry=r
        )
        self.replies_forwarded = Counter(
            "voltgrid_trigger_replies_forwarded",
            "CloudEvent replies the trigger's sink answered 2xx",
            labels,
            registry=r,
        )
        self.replies_failed = Counter(
            "voltgrid_trigger_replies_failed",
            "Attempts to forward a reply without a 2xx from the sink",
            labels,
            registry=r,
        )
        self.replies_dropped = Counter(
            "voltgrid_trigger_replies_dropped",
            "Replies given up on: the sink refused them past maxRetries, or they were not valid CloudEvents",
            labels,
            registry=r,
        )
        self.in_flight = Gauge("voltgrid_trigger_in_flight", "Events being delivered now", labels, registry=r)
        self.lag = Gauge(
            "voltgrid_trigger_lag",
            "Messages no replica has received yet: a Redis Streams consumer group's lag, a RabbitMQ queue's"
            " ready messages",
            labels,
            registry=r,
        )
