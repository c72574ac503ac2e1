"""Trigger status and Events: what the dispatcher writes on a Function, how rarely, and why.

Against a fake apiserver over real HTTP (the access layer's client): ``status.triggers`` is merge
patched only when it changes, never per event; Events are aggregated (a burst of dead letters is one
Event whose count grows); an Event that expired is created again; an invalid schedule is named.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import ValidationError

from voltgrid.api.function import Function
from voltgrid.registry.kubeapi import KubeApi, StaticCredentials
from voltgrid.triggers.report import (
    DELIVERED_RESOLUTION,
    Described,
    Reporter,
    State,
    differs,
    entries,
    rejected_states,
)

Json = dict[str, Any]
T0 = datetime(2026, 1, 1, tzinfo=UTC)
CRON = {"name": "tick", "type": "cron", "cron": {"schedule": "@every 10s"}}
QUEUE = {"name": "orders", "type": "queue", "queue": {"broker": "RabbitMQ", "urlFrom": {"name": "mq"}, "queue": "o"}}


class Apiserver:
    """Records the status patches and Events; an Event PATCH to a name in ``expired`` answers 404."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str, Json]] = []  # method, path, content type, body
        self.expired: set[str] = set()
        self.created = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read() or b"{}")
        self.requests.append((request.method, request.path, request.content_type, body))
        if request.method == "PATCH" and request.match_info.get("name") in self.expired:
            return web.json_response({"kind": "Status", "code": 404, "reason": "NotFound"}, status=404)
        if request.method == "POST":
            self.created += 1
            body["metadata"]["name"] = f"{body['metadata']['generateName']}{self.created}"
        return web.json_response(body)

    def writes(self, kind: str) -> list[tuple[str, str, str, Json]]:
        return [r for r in self.requests if (kind == "status") == r[1].endswith("/status")]


@pytest.fixture
async def apiserver() -> AsyncIterator[tuple[Apiserver, KubeApi]]:
    fake = Apiserver()
    app = web.Application()
    app.router.add_patch("/apis/voltgrid.dev/v1alpha1/namespaces/{ns}/functions/{fn}/status", fake.handle)
    app.router.add_post("/api/v1/namespaces/{ns}/events", fake.handle)
    app.router.add_patch("/api/v1/namespaces/{ns}/events/{name}", fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    api = KubeApi(StaticCredentials(str(server.make_url("")).rstrip("/")))
    try:
        yield fake, api
    finally:
        await api.close()
        await server.close()


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def function(*triggers: Json, status: Json | None = None) -> Function:
    body: Json = {"metadata": {"name": "agent", "namespace": "shop", "uid": "u1"}, "spec": {"image": "x"}}
    body["spec"]["triggers"] = list(triggers)
    if status is not None:
        body["status"] = status
    return Function.model_validate(body)


def test_entries_keep_the_transition_time_and_move_last_delivered_coarsely() -> None:
    described = Described({}, {"tick": "cron", "orders": "queue"}, [])
    states = {"tick": State(True, "Scheduled", "every 10s")}  # orders has no state yet: no entry
    (first,) = entries(described, states, {}, T0)
    assert first == {
        "name": "tick",
        "type": "cron",
        "status": "True",
        "reason": "Scheduled",
        "message": "every 10s",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    described.current = [{**first, "lastDelivered": "2026-01-01T00:00:00Z"}]
    later = T0 + timedelta(seconds=30)
    (again,) = entries(described, states, {"tick": later}, later + timedelta(seconds=1))
    assert again["lastTransitionTime"] == "2026-01-01T00:00:00Z"  # the status held
    assert again["lastDelivered"] == "2026-01-01T00:00:00Z"  # 30s later: under the resolution
    assert not differs(described.current, [again])
    much_later = T0 + DELIVERED_RESOLUTION
    (moved,) = entries(described, {"tick": State(False, "X", "")}, {"tick": much_later}, much_later)
    assert moved["lastDelivered"] == "2026-01-01T00:01:00Z"
    assert moved["lastTransitionTime"] == "2026-01-01T00:01:00Z"  # flipped
    assert differs(described.current, [moved])


def test_an_invalid_schedule_is_named_on_its_trigger_and_the_others_wait() -> None:
    bad = {"name": "nightly", "type": "cron", "cron": {"schedule": "61 * * * *"}}
    body = {"metadata": {"name": "agent", "namespace": "shop"}, "spec": {"image": "x", "triggers": [bad, QUEUE]}}
    with pytest.raises(ValidationError) as caught:
        Function.model_validate(body)
    states = rejected_states(body, caught.value)
    assert states["nightly"].reason == "InvalidSchedule" and "61 * * * *" in states["nightly"].message
    assert states["orders"].reason == "FunctionInvalid" and not states["orders"].ready


async def test_status_is_written_on_change_only_never_per_event(apiserver: tuple[Apiserver, KubeApi]) -> None:
    fake, api = apiserver
    clock = Clock()
    reporter = Reporter(api, clock=clock)
    reporter.functions([function(CRON, QUEUE)])
    reporter.state("shop/agent/tick", True, "Scheduled", "schedule @every 10s")
    reporter.state("shop/agent/orders", False, "SecretMissing", "Secret shop/mq does not exist")
    await reporter.flush()
    ((method, path, content_type, body),) = fake.writes("status")
    assert (method, path, content_type) == (
        "PATCH",
        "/apis/voltgrid.dev/v1alpha1/namespaces/shop/functions/agent/status",
        "application/merge-patch+json",
    )
    assert list(body) == ["status"] and list(body["status"]) == ["triggers"]  # never the operator's keys
    reasons = {e["name"]: (e["status"], e["reason"]) for e in body["status"]["triggers"]}
    assert reasons == {"tick": ("True", "Scheduled"), "orders": ("False", "SecretMissing")}
    # The watch brings the Function back with what was written: nothing more to write.
    reporter.functions([function(CRON, QUEUE, status={"triggers": body["status"]["triggers"]})])
    for _ in range(1000):
        clock.now += timedelta(milliseconds=10)
        reporter.delivered("shop/agent/tick")
    await reporter.flush()
    await reporter.flush()
    assert len(fake.writes("status")) == 2  # 1000 deliveries, one lastDelivered write
    assert fake.writes("status")[1][3]["status"]["triggers"][0]["lastDelivered"] == "2026-01-01T00:00:10Z"
    reporter.state("shop/agent/orders", True, "Consuming", "consuming RabbitMQ queue o")
    await reporter.flush()
    assert len(fake.writes("status")) == 3


async def test_a_burst_of_dead_letters_is_one_event_whose_count_grows(apiserver: tuple[Apiserver, KubeApi]) -> None:
    fake, api = apiserver
    clock = Clock()
    reporter = Reporter(api, clock=clock, window=600)
    reporter.functions([function(QUEUE)])
    for _ in range(1000):
        reporter.event("shop/agent/orders", "Warning", "DeadLettered", "an event was dead-lettered after 4 attempts")
    await reporter.flush()
    ((method, _, _, event),) = fake.writes("event")
    assert method == "POST"
    assert event["involvedObject"] == {
        "apiVersion": "voltgrid.dev/v1alpha1",
        "kind": "Function",
        "namespace": "shop",
        "name": "agent",
        "uid": "u1",
    }
    assert (event["type"], event["reason"], event["count"]) == ("Warning", "DeadLettered", 1000)
    assert event["message"].startswith("trigger orders: ")
    await reporter.flush()
    assert len(fake.writes("event")) == 1  # no repeat, no write
    clock.now += timedelta(seconds=30)
    for _ in range(500):
        reporter.event("shop/agent/orders", "Warning", "DeadLettered", "again")
    await reporter.flush()
    (_, (method, path, _, patch)) = fake.writes("event")
    assert (method, path) == ("PATCH", "/api/v1/namespaces/shop/events/agent.1")
    assert patch == {"count": 1500, "lastTimestamp": "2026-01-01T00:00:30Z", "message": "trigger orders: again"}
    fake.expired.add("agent.1")  # the apiserver's event TTL passed
    reporter.event("shop/agent/orders", "Warning", "DeadLettered", "again")
    await reporter.flush()
    assert [r[0] for r in fake.writes("event")] == ["POST", "PATCH", "PATCH", "POST"]
    clock.now += timedelta(seconds=601)  # past the window: a new Event
    reporter.event("shop/agent/orders", "Warning", "DeadLettered", "later")
    await reporter.flush()
    assert fake.writes("event")[-1][3]["count"] == 1


async def test_state_changes_post_events_once_per_problem(apiserver: tuple[Apiserver, KubeApi]) -> None:
    fake, api = apiserver
    reporter = Reporter(api, clock=Clock())
    reporter.functions([function(QUEUE)])
    reporter.state("shop/agent/orders", False, "Connecting", "connecting to RabbitMQ")  # no Event for this
    for _ in range(3):  # the runner retries every 5s: the same problem is one Event
        reporter.state("shop/agent/orders", False, "BrokerUnreachable", "queue o: connection refused")
    reporter.state("shop/agent/orders", True, "Consuming", "consuming RabbitMQ queue o")
    await reporter.flush()
    assert [(r[3]["type"], r[3]["reason"]) for r in fake.writes("event")] == [
        ("Warning", "BrokerUnreachable"),
        ("Normal", "TriggerStarted"),
    ]
    assert reporter.snapshot() == {
        "shop/agent/orders": {"ready": True, "reason": "Consuming", "message": "consuming RabbitMQ queue o"}
    }


async def test_without_an_apiserver_states_are_kept_for_healthz_only() -> None:
    reporter = Reporter()
    reporter.functions([function(QUEUE)])
    reporter.state("shop/agent/orders", False, "SecretMissing", "no")
    await reporter.flush()  # nothing to write to, nothing raised
    assert reporter.snapshot()["shop/agent/orders"]["reason"] == "SecretMissing"
    reporter.functions([function(CRON)])  # orders went away: its state with it
    assert reporter.snapshot() == {}
