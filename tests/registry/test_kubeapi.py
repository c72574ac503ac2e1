"""The access layer's one LIST+WATCH loop against a scripted apiserver over real HTTP, as a table:
paging, bookmarks, the resume version, 410 Gone (in the stream, to the WATCH, to a LIST page),
errors and silence relist, deletions noticed across a relist; and the credentials protocol."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from kubernetes_asyncio import client

from apifake import ScriptedApiserver, scripted_apiserver
from bgtask import background
from voltgrid.registry.kubeapi import (
    LIST_PAGE_SIZE,
    RETRY_BACKOFF_S,
    WATCH_SILENCE_SLACK_S,
    WATCH_TIMEOUT_S,
    ConfigurationCredentials,
    KubeApi,
    Reflector,
)

NS = "team-a"
PATH = f"/api/v1/namespaces/{NS}/configmaps"
#: Seconds (of the loop's virtual time) a test waits for the loop's requests.
WAIT_S = 30.0

Json = dict[str, Any]


def obj(name: str, version: str = "1", namespace: str = NS) -> Json:
    return {"metadata": {"name": name, "namespace": namespace, "resourceVersion": version}}


def page(version: str | None, *items: Json, more: str | None = None) -> Json:
    meta: Json = {"continue": more} if more else {"resourceVersion": version}
    return {"metadata": meta, "items": list(items)}


def event(kind: str, body: Json) -> Json:
    return {"type": kind, "object": body}


def bookmark(version: str) -> Json:
    return event("BOOKMARK", {"metadata": {"resourceVersion": version}})


GONE_EVENT = event("ERROR", {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"})


@dataclass
class Case:
    pages: list[Json | int]
    streams: list[list[Json] | int]
    #: (event type, name) handed to the handler, in order; None: listed.
    calls: list[tuple[str | None, str]]
    #: The ``continue`` token of every LIST request.
    continues: list[str | None]
    #: The ``resourceVersion`` of every WATCH request.
    versions: list[str]
    listed: int = field(default=0)


CASES = {
    "a paged list, then a watch from the list's version": Case(
        pages=[page(None, obj("a"), more="p2"), page("10", obj("b"))],
        streams=[[event("ADDED", obj("c", "11"))]],
        calls=[(None, "a"), (None, "b"), ("ADDED", "c")],
        continues=[None, "p2"],
        versions=["10", "11"],
        listed=1,
    ),
    "a watch the server ended resumes from the last version, a bookmark's included, without a relist": Case(
        pages=[page("10", obj("a"))],
        streams=[[bookmark("15")], [event("MODIFIED", obj("a", "16"))], []],
        calls=[(None, "a"), ("MODIFIED", "a")],
        continues=[None],
        versions=["10", "15", "16", "16"],
        listed=1,
    ),
    "410 Gone in the stream relists, and a deletion meanwhile is noticed": Case(
        pages=[page("10", obj("a"), obj("b")), page("30", obj("b"))],
        streams=[[GONE_EVENT]],
        calls=[(None, "a"), (None, "b"), (None, "b"), ("DELETED", "a")],
        continues=[None, None],
        versions=["10", "30"],
        listed=2,
    ),
    "410 Gone answered to the WATCH request relists": Case(
        pages=[page("10", obj("a")), page("30")],
        streams=[410],
        calls=[(None, "a"), ("DELETED", "a")],
        continues=[None, None],
        versions=["10", "30"],
        listed=2,
    ),
    "410 Gone to a continue token relists from the first page": Case(
        pages=[page(None, obj("a"), more="p2"), 410, page(None, obj("a"), more="p2"), page("40", obj("b"))],
        streams=[],
        calls=[(None, "a"), (None, "a"), (None, "b")],
        continues=[None, "p2", None, "p2"],
        versions=["40"],
        listed=1,
    ),
    "an error answered to the WATCH relists": Case(
        pages=[page("10", obj("a")), page("20", obj("a", "19"))],
        streams=[500],
        calls=[(None, "a"), (None, "a")],
        continues=[None, None],
        versions=["10", "20"],
        listed=2,
    ),
    "a failed LIST is retried": Case(
        pages=[503, page("10", obj("a"))],
        streams=[],
        calls=[(None, "a")],
        continues=[None, None],
        versions=["10"],
        listed=1,
    ),
    "a deletion the watch delivered is not delivered again by a relist": Case(
        pages=[page("10", obj("a")), page("20")],
        streams=[[event("DELETED", obj("a", "11")), GONE_EVENT]],
        calls=[(None, "a"), ("DELETED", "a")],
        continues=[None, None],
        versions=["10", "20"],
        listed=2,
    ),
    "an object added by the watch and deleted while no watch ran is noticed": Case(
        pages=[page("10"), page("20")],
        streams=[[event("ADDED", obj("c", "11")), GONE_EVENT]],
        calls=[("ADDED", "c"), ("DELETED", "c")],
        continues=[None, None],
        versions=["10", "20"],
        listed=2,
    ),
}


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str | None, str]] = []
        self.listed = 0

    async def __call__(self, event_type: str | None, body: Json) -> None:
        self.calls.append((event_type, body["metadata"]["name"]))

    def on_listed(self) -> None:
        self.listed += 1


@pytest.fixture
async def apiserver() -> AsyncIterator[tuple[ScriptedApiserver, KubeApi]]:
    async with scripted_apiserver(PATH, token="s3cret") as served:
        yield served


@pytest.mark.looptime
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_list_and_watch(apiserver: tuple[ScriptedApiserver, KubeApi], case: Case) -> None:
    fake, api = apiserver
    fake.pages, fake.streams = case.pages, case.streams
    seen = Recorder()
    selector = {"labelSelector": "app=x"}
    reflector = Reflector(api, PATH, seen, name="test", params=selector, listed=seen.on_listed)
    async with background(reflector.run()):
        await fake.watches_began(len(case.versions), WAIT_S)  # the last one: past the script, open and silent
    assert seen.calls == case.calls
    assert seen.listed == case.listed
    assert [q.get("continue") for q in fake.lists] == case.continues
    assert [q["resourceVersion"] for q in fake.watches] == case.versions
    assert all(q["limit"] == str(LIST_PAGE_SIZE) and q["labelSelector"] == "app=x" for q in fake.lists)
    for q in fake.watches:
        assert (q["allowWatchBookmarks"], q["timeoutSeconds"], q["labelSelector"]) == (
            "true",
            str(WATCH_TIMEOUT_S),
            "app=x",
        )
    assert set(fake.authorizations) == {"Bearer s3cret"}


@pytest.mark.looptime
async def test_a_silent_watch_counts_as_dead_and_relists(apiserver: tuple[ScriptedApiserver, KubeApi]) -> None:
    """A connection dropped without a FIN never ends: past the watch's own timeout it is given up."""
    fake, api = apiserver
    fake.pages = [page("10", obj("a")), page("20")]
    seen = Recorder()
    reasons: list[str] = []
    reflector = Reflector(api, PATH, seen, name="test", relisting=reasons.append)
    loop = asyncio.get_running_loop()
    async with background(reflector.run()):
        await fake.watches_began(1, WAIT_S)
        began = loop.time()
        await fake.watches_began(1, WATCH_TIMEOUT_S * 2)
    assert loop.time() - began >= WATCH_TIMEOUT_S + WATCH_SILENCE_SLACK_S
    assert seen.calls == [(None, "a"), ("DELETED", "a")]
    assert reasons == ["start", "silence"]


@pytest.mark.looptime
async def test_a_resync_relists_at_once(apiserver: tuple[ScriptedApiserver, KubeApi]) -> None:
    fake, api = apiserver
    fake.pages = [page("10", obj("a"), obj("b")), page("20", obj("b"))]
    seen = Recorder()
    reasons: list[str] = []
    reflector = Reflector(api, PATH, seen, name="test", relisting=reasons.append)
    loop = asyncio.get_running_loop()
    async with background(reflector.run()):
        await fake.watches_began(1, WAIT_S)
        began = loop.time()
        reflector.resync()
        await fake.watches_began(1, WAIT_S)
        assert loop.time() - began < RETRY_BACKOFF_S
    assert seen.calls == [(None, "a"), (None, "b"), (None, "b"), ("DELETED", "a")]
    assert reasons == ["start", "requested"]
    assert [q["resourceVersion"] for q in fake.watches] == ["10", "20"]


@pytest.mark.looptime
async def test_objects_not_accepted_are_left_out_deletions_included(
    apiserver: tuple[ScriptedApiserver, KubeApi],
) -> None:
    fake, api = apiserver
    fake.pages = [page("10", obj("a"), obj("x", namespace="kube-system")), page("20")]
    fake.streams = [[event("ADDED", obj("y", "11", namespace="kube-system")), GONE_EVENT]]
    seen = Recorder()
    reflector = Reflector(api, PATH, seen, name="test", accept=lambda key: key[0] == NS)
    async with background(reflector.run()):
        await fake.watches_began(2, WAIT_S)
    assert seen.calls == [(None, "a"), ("DELETED", "a")]


async def test_the_credentials_of_a_kubernetes_asyncio_configuration_are_asked_per_request() -> None:
    """A service-account token is re-read when it rotates: the refresh hook runs for every request."""
    async with scripted_apiserver(PATH) as (fake, _):
        configuration = client.Configuration(host=fake.url)
        tokens = iter(["one", "two"])

        def refresh(conf: client.Configuration) -> None:
            conf.api_key["BearerToken"] = next(tokens)

        configuration.api_key_prefix["BearerToken"] = "Bearer"
        configuration.refresh_api_key_hook = refresh
        configuration.api_key["BearerToken"] = "zero"
        api = KubeApi(ConfigurationCredentials(configuration))
        fake.pages = [page("1"), page("2")]
        try:
            await api.list(PATH)
            await api.list(PATH)
        finally:
            await api.close()
    assert fake.authorizations == ["Bearer one", "Bearer two"]


@pytest.mark.parametrize(
    ("host", "verify", "expected"),
    [
        ("http://127.0.0.1:8001", True, True),  # plain HTTP (kubectl proxy): no TLS settings at all
        ("https://10.96.0.1", True, ssl.CERT_REQUIRED),
        ("https://10.96.0.1", False, ssl.CERT_NONE),  # insecure-skip-tls-verify in the kubeconfig
    ],
)
def test_the_tls_settings_of_a_configuration(host: str, verify: bool, expected: object) -> None:
    configuration = client.Configuration(host=host)
    configuration.verify_ssl = verify
    context = ConfigurationCredentials(configuration).ssl_context()
    assert (context if isinstance(context, bool) else context.verify_mode) == expected
