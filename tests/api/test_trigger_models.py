"""``Function.spec.triggers[]``: the union by ``type``, each member's rules, and their CRD twins (CEL)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from voltgrid.api import Function
from voltgrid.api.triggers import Broker, CatchUp, Concurrency, TriggerType, dead_letter_of

QUEUE = {"broker": "RabbitMQ", "urlFrom": {"name": "amqp"}, "queue": "orders"}


def fn(*triggers: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "echo"}, "spec": {"image": "x", "triggers": list(triggers)}}


def test_each_type_with_its_defaults() -> None:
    spec = Function.model_validate(
        fn(
            {"name": "nightly", "type": "cron", "cron": {"schedule": "0 3 * * *", "timezone": "Europe/Paris"}},
            {"name": "orders", "type": "queue", "queue": QUEUE, "session": {"source": "Header", "name": "conv"}},
            {
                "name": "audit",
                "type": "cloudevents",
                "cloudEvents": {"filters": [{"attribute": "type", "prefix": "a."}]},
            },
        )
    ).spec
    cron, queue, ce = spec.triggers
    assert cron.type is TriggerType.CRON and cron.cron is not None
    assert (cron.cron.catch_up, cron.cron.concurrency) == (CatchUp.SKIP, Concurrency.ALLOW)
    assert queue.queue is not None and queue.queue.broker is Broker.RABBITMQ
    assert (queue.queue.prefetch, queue.queue.url_from.key, dead_letter_of(queue.queue)) == (
        10,
        "url",
        "orders.dead-letter",
    )
    assert (queue.retry.max_retries, queue.path) == (3, "/")
    assert ce.cloud_events is not None and ce.cloud_events.filters[0].prefix == "a."
    assert Function.model_validate(fn()).spec.triggers == []


BAD = [
    ({"name": "t", "type": "cron"}, "type cron needs cron"),
    ({"name": "t", "type": "queue", "queue": QUEUE, "cron": {"schedule": "* * * * *"}}, "only that type may set it"),
    ({"name": "t", "type": "kafka"}, "type"),
    ({"name": "T_1", "type": "queue", "queue": QUEUE}, "name"),
    ({"name": "t", "type": "queue", "queue": {**QUEUE, "broker": "Kafka"}}, "broker"),
    ({"name": "t", "type": "queue", "queue": {**QUEUE, "prefetch": 0}}, "prefetch"),
    ({"name": "t", "type": "queue", "queue": {**QUEUE, "queue": "has space"}}, "queue"),
    ({"name": "t", "type": "queue", "queue": QUEUE, "retry": {"maxRetries": 101}}, "maxRetries"),
    ({"name": "t", "type": "queue", "queue": QUEUE, "retry": {"minBackoff": "1m", "maxBackoff": "1s"}}, "minBackoff"),
    ({"name": "t", "type": "queue", "queue": QUEUE, "session": {"source": "Header"}}, "session.name is required"),
    ({"name": "t", "type": "queue", "queue": QUEUE, "session": {"source": "Body"}}, "source"),
    ({"name": "t", "type": "queue", "queue": QUEUE, "path": "no-slash"}, "path"),
    ({"name": "t", "type": "cron", "cron": {"schedule": "every day"}}, "not a 5-field cron expression"),
    ({"name": "t", "type": "cron", "cron": {"schedule": "* * * * *", "catchUp": "All"}}, "catchUp"),
    ({"name": "t", "type": "cloudevents", "cloudEvents": {"filters": [{"attribute": "type"}]}}, "exactly one of"),
    (
        {"name": "t", "type": "cloudevents", "cloudEvents": {"filters": [{"attribute": "Type", "exact": "x"}]}},
        "attribute",
    ),
]


@pytest.mark.parametrize(("trigger", "message"), BAD)
def test_trigger_rejects(trigger: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Function.model_validate(fn(trigger))


def test_trigger_names_are_unique() -> None:
    t = {"name": "t", "type": "queue", "queue": QUEUE}
    with pytest.raises(ValidationError, match="trigger names must be unique: t repeated"):
        Function.model_validate(fn(t, t))


def test_crd_carries_the_union_rules_and_the_list_map() -> None:
    """The apiserver refuses what the model refuses: member per type by CEL, names unique by list-map."""
    schema = Function.model_json_schema(by_alias=True, mode="validation")
    rules = {r["rule"] for r in schema["$defs"]["Trigger"]["x-kubernetes-validations"]}
    assert rules == {
        "(self.type == 'cron') == has(self.cron)",
        "(self.type == 'cloudevents') == has(self.cloudEvents)",
        "(self.type == 'queue') == has(self.queue)",
    }
    triggers = schema["$defs"]["FunctionSpec"]["properties"]["triggers"]
    assert (triggers["x-kubernetes-list-type"], triggers["x-kubernetes-list-map-keys"]) == ("map", ["name"])
