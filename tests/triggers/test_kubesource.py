"""The dispatcher in a cluster: Functions followed by the access layer's LIST+WATCH (a change arrives
by the watch, never by a relist; 410 relists), their Secrets read per change; no credentials exits 2."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from apifake import ScriptedApiserver
from voltgrid.api import constants
from voltgrid.api.function import Function
from voltgrid.api.triggers import SecretKeyRef
from voltgrid.registry.kubeapi import KubeApi, StaticCredentials
from voltgrid.triggers import main as triggers_main
from voltgrid.triggers.kubesource import PATH, KubeSource
from voltgrid.triggers.report import Reporter
from voltgrid.triggers.runner import Missing, SecretLookup, plan

QUEUE = {"broker": "RedisStreams", "urlFrom": {"name": "redis"}, "queue": "o"}
#: Seconds (of the loop's virtual time) a test waits for the source's next yield.
WAIT_S = 30.0
#: A safety relist far past every test's end.
NEVER = 10_000.0
GATEWAY = "http://127.0.0.1:1"

Json = dict[str, Any]


def function(ns: str, name: str, version: str = "1", **spec: Any) -> Json:
    return {
        "apiVersion": constants.API_VERSION,
        "kind": "Function",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": version},
        "spec": {"image": "x", **spec},
    }


def queue(name: str, stream: str = "o") -> dict[str, Any]:
    return {"name": name, "type": "queue", "queue": {**QUEUE, "queue": stream}}


AGENT = function("shop", "agent", triggers=[queue("orders")])
LEDGER = function("bank", "ledger", triggers=[queue("tx")])  # no Secret in bank
FUNCTIONS = [AGENT, LEDGER, function("shop", "broken", port=99999)]  # broken: skipped, named in the log
SECRETS = {("shop", "redis"): {"url": base64.b64encode(b"redis://127.0.0.1:6379/0\n").decode(), "bad": "!!"}}


class Cluster:
    def __init__(self) -> None:
        self.fake = ScriptedApiserver()
        self.secret_reads: list[tuple[str, str]] = []

    async def secret(self, request: web.Request) -> web.Response:
        where = (request.match_info["ns"], request.match_info["name"])
        self.secret_reads.append(where)
        data = SECRETS.get(where)
        if data is None:
            return web.json_response({"kind": "Status", "code": 404, "reason": "NotFound"}, status=404)
        return web.json_response({"apiVersion": "v1", "kind": "Secret", "metadata": {}, "data": data})


@pytest.fixture
async def apiserver() -> AsyncIterator[tuple[Cluster, KubeApi]]:
    served = Cluster()
    app = web.Application()
    app.router.add_get(PATH, served.fake.handle)
    app.router.add_get("/api/v1/namespaces/{ns}/secrets/{name}", served.secret)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    api = KubeApi(StaticCredentials(str(server.make_url("")).rstrip("/")))
    try:
        yield served, api
    finally:
        await api.close()
        await server.close()


Loaded = tuple[list[Function], SecretLookup]


@pytest.fixture
async def follow(apiserver: tuple[Cluster, KubeApi]) -> AsyncIterator[Any]:
    """Start following with a given safety resync; the loads arrive on the queue it returns."""
    _, api = apiserver
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    def start(resync: float = NEVER, reporter: Reporter | None = None) -> asyncio.Queue[Loaded]:
        loads: asyncio.Queue[Loaded] = asyncio.Queue()

        async def consume() -> None:
            async for loaded in KubeSource(api, reporter).follow(stop, resync):
                loads.put_nowait(loaded)

        tasks.append(asyncio.create_task(consume()))
        return loads

    yield start
    stop.set()
    async with asyncio.timeout(WAIT_S):  # stopping ends the source (and its reflector) by itself
        await asyncio.gather(*tasks)


def names(functions: list[Function]) -> list[str]:
    return [f"{f.metadata.namespace}/{f.metadata.name}" for f in functions]


async def until(loads: asyncio.Queue[Loaded], expected: list[str]) -> Loaded:
    """The first load whose Functions are ``expected`` (changes close together may come as one)."""
    async with asyncio.timeout(WAIT_S):
        while True:
            loaded = await loads.get()
            if names(loaded[0]) == expected:
                return loaded


@pytest.mark.looptime
async def test_functions_and_their_secrets(
    apiserver: tuple[Cluster, KubeApi], follow: Any, caplog: pytest.LogCaptureFixture
) -> None:
    served, _ = apiserver
    served.fake.pages = [{"metadata": {"resourceVersion": "10"}, "items": FUNCTIONS}]
    _, get = await until(follow(), ["bank/ledger", "shop/agent"])
    assert get("shop", SecretKeyRef(name="redis")) == "redis://127.0.0.1:6379/0"
    # another namespace's Secret is never used; a miss names the missing part
    assert get("bank", SecretKeyRef(name="redis")) == Missing("SecretMissing", "Secret bank/redis does not exist")
    assert get("shop", SecretKeyRef(name="redis", key="nope")) == Missing(
        "SecretKeyMissing", "Secret shop/redis has no key 'nope' (or its value is not text)"
    )
    messages = [r.getMessage() for r in caplog.records]
    assert any("shop/broken skipped" in m and "port" in m for m in messages)
    assert any("Secret bank/redis cannot be read (404)" in m for m in messages)
    assert any("key bad is not text" in m for m in messages)


@pytest.mark.looptime
async def test_added_changed_and_deleted_functions_arrive_by_the_watch_without_a_relist(
    apiserver: tuple[Cluster, KubeApi], follow: Any
) -> None:
    served, _ = apiserver
    fake = served.fake
    fake.pages = [{"metadata": {"resourceVersion": "10"}, "items": [AGENT, LEDGER]}]
    changed = function("shop", "agent", "12", triggers=[queue("orders", stream="o2")])
    added = function("shop", "mailer", "13", triggers=[queue("mail")])
    fake.streams = [
        [],  # the first WATCH ends at once: the changes come on the next, after the listed state was seen
        [
            {"type": "MODIFIED", "object": changed},
            {"type": "DELETED", "object": function("bank", "ledger", "14")},
            {"type": "ADDED", "object": added},
        ],
    ]
    loads = follow()
    before, get = await until(loads, ["bank/ledger", "shop/agent"])
    jobs_before, _, _ = plan(GATEWAY, before, get)
    after, get = await until(loads, ["shop/agent", "shop/mailer"])
    jobs_after, _, _ = plan(GATEWAY, after, get)
    assert [q["resourceVersion"] for q in fake.watches][:2] == ["10", "10"]
    assert len(fake.lists) == 1  # every change came by the watch
    assert after[0].spec.triggers[0].queue is not None and after[0].spec.triggers[0].queue.queue == "o2"
    # the runner restarts only what changed: the changed agent's job has a new key, the rest as before
    assert not set(jobs_before) & set(jobs_after)
    assert len(jobs_after) == 2
    assert served.secret_reads.count(("shop", "redis")) >= 2  # read again for the change


@pytest.mark.looptime
async def test_an_expired_watch_relists_and_notices_deletions(apiserver: tuple[Cluster, KubeApi], follow: Any) -> None:
    served, _ = apiserver
    fake = served.fake
    gone = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version"}
    fake.pages = [
        {"metadata": {"resourceVersion": "10"}, "items": [AGENT, LEDGER]},
        {"metadata": {"resourceVersion": "30"}, "items": [AGENT]},
    ]
    fake.streams = [[{"type": "ERROR", "object": gone}]]
    loads = follow()
    await until(loads, ["bank/ledger", "shop/agent"])
    await until(loads, ["shop/agent"])  # ledger was deleted while the watch was gone
    assert len(fake.lists) == 2
    assert [q["resourceVersion"] for q in fake.watches][:2] == ["10", "30"]


@pytest.mark.looptime
async def test_without_changes_a_safety_relist_rereads_functions_and_secrets(
    apiserver: tuple[Cluster, KubeApi], follow: Any
) -> None:
    served, _ = apiserver
    served.fake.pages = [{"metadata": {"resourceVersion": "10"}, "items": [AGENT]}] * 2
    loop = asyncio.get_running_loop()
    loads = follow(resync=60.0)
    await until(loads, ["shop/agent"])
    began = loop.time()
    async with asyncio.timeout(120):
        await loads.get()
    assert loop.time() - began >= 60.0
    assert len(served.fake.lists) == 2
    assert served.secret_reads == [("shop", "redis")] * 2


def test_without_functions_and_credentials_exits_2_naming_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    assert triggers_main.main(["--gateway", "http://127.0.0.1:1", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "without --functions, voltgrid triggers reads the cluster's Functions" in err


@pytest.mark.looptime
async def test_an_invalid_schedule_is_reported_on_its_trigger(apiserver: tuple[Cluster, KubeApi], follow: Any) -> None:
    """The CRD cannot check a cron expression; the dispatcher names it on the trigger (InvalidSchedule)."""
    served, _ = apiserver
    bad = {"name": "nightly", "type": "cron", "cron": {"schedule": "0 25 * * *"}}
    fixed = {**bad, "cron": {"schedule": "0 23 * * *"}}
    served.fake.pages = [{"metadata": {"resourceVersion": "10"}, "items": [function("shop", "cron", triggers=[bad])]}]
    served.fake.streams = [[], [{"type": "MODIFIED", "object": function("shop", "cron", "11", triggers=[fixed])}]]
    reporter = Reporter()
    loads = follow(reporter=reporter)
    await until(loads, [])
    state = reporter.snapshot()["shop/cron/nightly"]
    assert (state["ready"], state["reason"]) == (False, "InvalidSchedule")
    assert state["message"].startswith("schedule '0 25 * * *' is not a 5-field cron expression")
    await until(loads, ["shop/cron"])  # fixed: served again (the runner then reports it Scheduled)
