"""The dispatcher's plan (pure) and the ``voltgrid triggers`` process against a real Redis and HTTP sink."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml
from trighelpers import Sink, delivered, wait_until

from brokers import Broker
from ports import free_port
from voltgrid.api.function import Function
from voltgrid.api.triggers import SecretKeyRef
from voltgrid.triggers.report import SECRET_KEY_MISSING, SECRET_MISSING
from voltgrid.triggers.runner import CronJob, Missing, Problem, QueueJob, plan

GW = "http://gw:8080"


def fn(name: str, *triggers: dict[str, Any], image: str = "x") -> Function:
    return Function.model_validate(
        {"metadata": {"name": name, "namespace": "shop"}, "spec": {"image": image, "triggers": list(triggers)}}
    )


QUEUE = {
    "name": "orders",
    "type": "queue",
    "queue": {"broker": "RedisStreams", "urlFrom": {"name": "redis"}, "queue": "o"},
}
CRON = {"name": "nightly", "type": "cron", "cron": {"schedule": "0 3 * * *"}, "path": "/cron"}
CE = {"name": "audit", "type": "cloudevents", "cloudEvents": {"filters": [{"attribute": "type", "prefix": "a."}]}}


def secrets(namespace: str, ref: SecretKeyRef) -> str | Missing:
    if (namespace, ref.name) != ("shop", "redis"):
        return Missing(SECRET_MISSING, f"Secret {namespace}/{ref.name} does not exist")
    return "redis://127.0.0.1:1/0" if ref.key == "url" else Missing(SECRET_KEY_MISSING, f"no key {ref.key!r}")


def test_plan_one_job_per_trigger_and_routes_for_the_ingress() -> None:
    jobs, routes, problems = plan(GW, [fn("agent", QUEUE, CRON, CE)], secrets)
    assert problems == []
    by_name = {job.target.name: job for job in jobs.values()}
    assert sorted(by_name) == ["shop/agent/nightly", "shop/agent/orders"]
    assert isinstance(by_name["shop/agent/orders"], QueueJob) and by_name["shop/agent/orders"].url.startswith("redis")
    assert isinstance(by_name["shop/agent/nightly"], CronJob)
    assert by_name["shop/agent/nightly"].target.url == "http://gw:8080/fn/shop/agent/cron"
    (route,) = routes
    assert (route.namespace, route.target.name, route.filters[0].prefix) == ("shop", "shop/agent/audit", "a.")


def test_plan_names_a_missing_secret_and_runs_the_rest() -> None:
    broken = {**QUEUE, "queue": {**QUEUE["queue"], "urlFrom": {"name": "redis", "key": "nope"}}}
    jobs, _, problems = plan(GW, [fn("agent", broken, CRON)], secrets)
    assert [j.target.name for j in jobs.values()] == ["shop/agent/nightly"]
    assert problems == [Problem("shop/agent/orders", "SecretKeyMissing", "no key 'nope'")]


@pytest.mark.parametrize(
    ("edit", "restarts"),
    [
        ({"image": "y"}, False),  # unrelated to the trigger: the consumer keeps running
        ({"triggers": [{**QUEUE, "retry": {"maxRetries": 5}}]}, True),
        ({"triggers": [{**QUEUE, "path": "/other"}]}, True),
        ({"sessions": {"header": "X-Conv"}}, True),  # the affinity header the events carry
    ],
)
def test_job_keys_change_with_what_the_job_does(edit: dict[str, Any], restarts: bool) -> None:
    base = fn("agent", QUEUE).to_wire()
    changed = Function.model_validate({**base, "spec": {**base["spec"], **edit}})
    (before,) = plan(GW, [Function.model_validate(base)], secrets)[0]
    (after,) = plan(GW, [changed], secrets)[0]
    assert (before != after) is restarts


async def test_the_process_consumes_fires_serves_the_ingress_and_stops_on_sigterm(
    tmp_path: Path, sink: Sink, redis_broker: Broker
) -> None:
    (tmp_path / "secrets" / "shop" / "redis").mkdir(parents=True)
    (tmp_path / "secrets" / "shop" / "redis" / "url").write_text(redis_broker.url + "\n")
    queue = {**QUEUE, "queue": {**QUEUE["queue"], "queue": "cli-orders"}}
    every = {"name": "tick", "type": "cron", "cron": {"schedule": "@every 1s"}, "path": "/cron"}
    functions = tmp_path / "functions.yaml"
    functions.write_text(yaml.safe_dump_all([fn("agent", queue, every, CE).to_wire(), {"kind": "ConfigMap"}]))
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voltgrid.cli.main", "triggers", "--gateway", sink.url, "--functions", str(functions),
        "--secrets", str(tmp_path / "secrets"), "--host", "127.0.0.1", "--port", str(port), "--replica", "r1",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    client = aioredis.Redis.from_url(redis_broker.url)
    try:
        entry = (await client.xadd("cli-orders", {"data": "{}"})).decode()
        await wait_until(lambda: entry in delivered(sink), what="the queue entry")
        await wait_until(lambda: any(r.path == "/fn/shop/agent/cron" for r in sink.received), what="a cron tick")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        event = json.dumps({"specversion": "1.0", "id": "ce-1", "source": "/s", "type": "a.b"})
        request = (
            f"POST /events/shop HTTP/1.1\r\nHost: x\r\nContent-Type: application/cloudevents+json\r\n"
            f"Content-Length: {len(event)}\r\nConnection: close\r\n\r\n{event}"
        )
        writer.write(request.encode())
        answer = await reader.read()
        writer.close()
        await writer.wait_closed()
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert "ce-1" in delivered(sink)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        health = json.loads((await reader.read()).split(b"\r\n\r\n", 1)[1])
        writer.close()
        await writer.wait_closed()
        states = {name: s["reason"] for name, s in health["states"].items()}
        assert states == {
            "shop/agent/orders": "Consuming",
            "shop/agent/tick": "Scheduled",
            "shop/agent/audit": "Routed",
        }
    finally:
        await client.aclose()
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, stderr.decode()[-2000:]
    assert b"Traceback" not in stderr
