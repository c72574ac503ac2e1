"""``Function.spec.triggers[]``: events that call a Function without a client in front of it.

A trigger is a Kubernetes-style discriminated union: ``type`` names the kind and exactly the member
of that name is set (``cron``, ``cloudEvents``, ``queue``), as in a volume source. This keeps the
CRD schema structural (no ``oneOf`` of differing shapes) while the apiserver still refuses a
trigger whose member does not match its type (CEL below, mirrored in a model validator).

Every trigger is delivered through the gateway as a CloudEvent in binary mode, so affinity, the
cold-start queue, limits and metering apply to events as to requests. ``session`` says where the
session id of an event comes from, so all events of one conversation reach the same instance.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, ClassVar, Final, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import Field, StringConstraints, model_validator
from pydantic.config import JsonDict

from voltgrid.api.common import ConditionStatus, Duration, Model, ObjectName, cel, parse_duration

#: ``@every <duration>``: a fixed interval, as Knative's PingSource and Go's cron libraries accept.
EVERY_PREFIX: Final = "@every "
#: The shortest interval a cron trigger may tick at: each tick is a request into the cluster.
MIN_EVERY_SECONDS: Final = 1.0
#: CloudEvents attribute names: lowercase letters and digits (CloudEvents 1.0, section 3.1.1).
CE_ATTRIBUTE_PATTERN: Final = r"^[a-z0-9]{1,20}$"

TriggerName = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63),
    Field(description="The trigger's name, unique in the Function: it names its metrics, Events and condition."),
]
SinkUrl = Annotated[
    str,
    StringConstraints(pattern=r"^https?://[^\s/?#]+[^\s]*$", max_length=2048),
    Field(
        description="Where a CloudEvent the Function answers with is forwarded (HTTP POST, binary mode, retried"
        " per retry); unset: replies are dropped."
    ),
]
HttpPath = Annotated[
    str,
    StringConstraints(pattern=r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$", max_length=1024),
    Field(description="The path on the Function the event is POSTed to (below /fn/<namespace>/<function>)."),
]


class TriggerType(StrEnum):
    CRON = "cron"
    CLOUD_EVENTS = "cloudevents"
    QUEUE = "queue"


#: The union member each type requires; the others must be absent.
MEMBER_OF: Final = {TriggerType.CRON: "cron", TriggerType.CLOUD_EVENTS: "cloudEvents", TriggerType.QUEUE: "queue"}


class SessionSource(StrEnum):
    """Where an event's session id comes from."""

    ATTRIBUTE = "Attribute"  # a CloudEvents attribute or extension (e.g. 'subject', 'sessionid')
    HEADER = "Header"  # a message header: an AMQP header, a field of a Redis Streams entry
    KEY = "Key"  # the message key: the AMQP routing key, the Redis entry's 'key' field
    FIXED = "Fixed"  # one session for every event (a cron job that keeps its working directory)


class SessionFrom(Model):
    """The session id of each event; events without one are delivered session-less."""

    source: SessionSource
    name: Annotated[str, StringConstraints(min_length=1, max_length=253)] | None = Field(
        default=None, description="The attribute or header to read (Attribute, Header); the id itself for Fixed."
    )

    CEL: ClassVar = [
        cel(
            "self.source == 'Key' || has(self.name)",
            "name is required unless source is Key",
            ".name",
        ),
    ]

    @model_validator(mode="after")
    def _named(self) -> Self:
        if self.source is not SessionSource.KEY and not self.name:
            raise ValueError(f"session.name is required for source {self.source.value}")
        return self


class Retry(Model):
    """Redelivery after a non-2xx answer or no answer: exponential backoff, then the dead letter."""

    max_retries: Annotated[int, Field(ge=0, le=100)] = 3
    min_backoff: Duration = "1s"
    max_backoff: Duration = "5m"

    CEL: ClassVar = [
        cel(
            "duration(self.minBackoff) <= duration(self.maxBackoff)",
            "minBackoff must not exceed maxBackoff",
            ".minBackoff",
        )
    ]

    @model_validator(mode="after")
    def _order(self) -> Self:
        if parse_duration(self.min_backoff) > parse_duration(self.max_backoff):
            raise ValueError("minBackoff must not exceed maxBackoff")
        return self


class CatchUp(StrEnum):
    """What a dispatcher does with ticks it missed while none was running."""

    SKIP = "Skip"
    FIRE_ONCE = "FireOnce"


class Concurrency(StrEnum):
    """Whether a tick fires while the previous tick's delivery is still in flight."""

    ALLOW = "Allow"
    FORBID = "Forbid"


def check_schedule(schedule: str) -> str:
    """A 5-field cron expression or ``@every <duration>``; ValueError names what is wrong."""
    if schedule.startswith(EVERY_PREFIX):
        seconds = parse_duration(schedule.removeprefix(EVERY_PREFIX).strip()).total_seconds()
        if seconds < MIN_EVERY_SECONDS:
            raise ValueError(f"schedule {schedule!r}: the interval must be at least {MIN_EVERY_SECONDS:g}s")
        return schedule
    if len(schedule.split()) != 5 or not croniter.is_valid(schedule):
        raise ValueError(
            f"schedule {schedule!r} is not a 5-field cron expression (minute hour day month weekday) or '@every 10s'"
        )
    return schedule


class Cron(Model):
    """A timer: at each tick, a CloudEvent of type dev.voltgrid.cron.tick whose body is data."""

    schedule: Annotated[str, StringConstraints(min_length=1, max_length=128)] = Field(
        description="A 5-field cron expression ('*/5 * * * *') or '@every 10s'."
    )
    timezone: Annotated[str, StringConstraints(min_length=1, max_length=64)] = Field(
        default="UTC", description="The IANA time zone the cron fields are read in (ignored by @every)."
    )
    data: Annotated[str, StringConstraints(max_length=65536)] = Field(default="", description="The event's body.")
    content_type: Annotated[str, StringConstraints(min_length=1, max_length=128)] = "application/json"
    catch_up: CatchUp = CatchUp.SKIP
    concurrency: Concurrency = Concurrency.ALLOW

    @model_validator(mode="after")
    def _valid(self) -> Self:
        check_schedule(self.schedule)
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone {self.timezone!r} is not an IANA time zone such as 'Europe/Paris'") from None
        return self


class Filter(Model):
    """One attribute test; an event matches a trigger when every filter holds."""

    attribute: Annotated[str, StringConstraints(pattern=CE_ATTRIBUTE_PATTERN)]
    exact: Annotated[str, StringConstraints(max_length=1024)] | None = None
    prefix: Annotated[str, StringConstraints(min_length=1, max_length=1024)] | None = None

    CEL: ClassVar = [cel("has(self.exact) != has(self.prefix)", "set exactly one of exact and prefix")]

    @model_validator(mode="after")
    def _one(self) -> Self:
        if (self.exact is None) == (self.prefix is None):
            raise ValueError(f"filter on {self.attribute!r}: set exactly one of exact and prefix")
        return self


class CloudEvents(Model):
    """Events posted to the gateway's CloudEvents ingress that pass every filter."""

    filters: list[Filter] = Field(default_factory=list, max_length=32)


class Broker(StrEnum):
    RABBITMQ = "RabbitMQ"
    REDIS_STREAMS = "RedisStreams"


class SecretKeyRef(Model):
    """A key of a Secret in the Function's namespace."""

    name: ObjectName
    key: Annotated[str, StringConstraints(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)] = "url"


QueueName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:/-]{1,255}$")]


class Queue(Model):
    """A broker queue (RabbitMQ) or stream (Redis Streams) consumed at least once."""

    broker: Broker
    url_from: SecretKeyRef = Field(description="The Secret key holding the broker URL (amqp://…, redis://…).")
    queue: QueueName = Field(description="The RabbitMQ queue or the Redis stream.")
    group: ObjectName = Field(default="voltgrid", description="The Redis consumer group the dispatchers share.")
    prefetch: Annotated[int, Field(ge=1, le=1000, description="Messages in flight per dispatcher replica.")] = 10
    dead_letter: QueueName | None = Field(
        default=None, description="Where a message goes after maxRetries; default '<queue>.dead-letter'."
    )


class Trigger(Model):
    """One event source of a Function."""

    name: TriggerName
    type: TriggerType
    cron: Cron | None = None
    cloud_events: CloudEvents | None = None
    queue: Queue | None = None
    path: HttpPath = "/"
    session: SessionFrom | None = None
    retry: Retry = Field(default_factory=Retry)
    sink: SinkUrl | None = None

    CEL: ClassVar = [
        cel(
            f"(self.type == '{t.value}') == has(self.{member})",
            f"type {t.value} needs {member}, and only that type may set it",
            f".{member}",
        )
        for t, member in MEMBER_OF.items()
    ]

    @model_validator(mode="after")
    def _member(self) -> Self:
        for t, member in MEMBER_OF.items():
            is_set = getattr(self, _snake(member)) is not None
            if (t is self.type) != is_set:
                raise ValueError(f"trigger {self.name!r}: type {t.value} needs {member}, and only that type may set it")
        return self


def _snake(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def dead_letter_of(queue: Queue) -> str:
    """The dead-letter destination: the one named, or ``<queue>.dead-letter``."""
    return queue.dead_letter or f"{queue.queue}.dead-letter"


class TriggerStatus(Model):
    """One trigger as the trigger dispatcher last saw it; reason names the problem when it is not ready."""

    # A condition's fields (status, reason, message, lastTransitionTime), so tools that read
    # conditions read these alike. lastDelivered is coarse (it moves at most once a minute): it says
    # the trigger works, it is not a per-event record.
    name: TriggerName
    type: TriggerType
    status: ConditionStatus
    reason: Annotated[str, StringConstraints(max_length=1024)] = ""
    message: Annotated[str, StringConstraints(max_length=32768)] = ""
    last_transition_time: datetime | None = None
    last_delivered: datetime | None = None


#: ``status.triggers`` is a map keyed by trigger name (server-side apply and kubectl merge by it).
TRIGGERS_LIST: Final[JsonDict] = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}
