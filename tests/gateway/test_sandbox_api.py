"""The Sandbox API across two gateway replicas, with real in-sandbox agents as the pool's pods.

The pool's pods are real agents (``voltgrid.sandbox_agent`` on loopback ports) started as a warm pool
starts them: the gateway's public claim key and a pre-minted id, no token. What the cluster's watch
would report is fed to both replicas by :class:`Pool`, which also plays the apiserver's part in
the after-the-fact writes (claimed label and annotations, deletes, the waiting-claims annotation).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from gwhelpers import ADMIN, Replica

from ports import free_port
from voltgrid.api import constants, pool
from voltgrid.api.podspec import Role
from voltgrid.sandbox_agent.agent import AgentSettings
from voltgrid.sandbox_agent.server import build_app
from voltgrid.sandbox_claims import public_key_text, sign_claim, token_digest

API = "/_voltgrid/v1/sandboxes"
TEMPLATE = {
    "metadata": {"name": "py", "namespace": "default"},
    "spec": {"image": "local", "ttl": "10m", "maxTtl": "1h"},
}


def _pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class Pool:
    """Warm agents and the apiserver's view of their pods, fed to every replica's pools."""

    def __init__(self, key: Ed25519PrivateKey, workspace: Path) -> None:
        self.key = key
        self.public = public_key_text(key)
        self.workspace = workspace
        self.replicas: list[Replica] = []
        self.pods: dict[str, dict[str, Any]] = {}
        self.runners: dict[str, web.AppRunner] = {}
        self.burnt: list[str] = []
        self.waiting: list[int] = []

    def feed(self, event: str, pod: dict[str, Any]) -> None:
        for replica in self.replicas:
            if not replica.stopped:
                assert replica.gateway.sandboxes is not None
                replica.gateway.sandboxes.apply_pod(event, json.loads(json.dumps(pod)))

    async def add(self, n: int) -> list[str]:
        names = []
        for _ in range(n):
            index = len(self.pods)
            name, sandbox_id = f"py-{index}", f"sb-{os.urandom(12).hex()}"
            ws = self.workspace / name
            ws.mkdir(parents=True)
            settings = AgentSettings(workspace=str(ws), claim_key=self.public, sandbox_id=sandbox_id)
            runner = web.AppRunner(build_app(settings, dict(os.environ)), shutdown_timeout=1.0)
            await runner.setup()
            port = free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            self.runners[name] = runner
            labels = {
                constants.LABEL_ROLE: str(Role.POOL),
                pool.LABEL_TEMPLATE: "py",
                pool.LABEL_TEMPLATE_HASH: "rev1",
                pool.LABEL_SANDBOX_ID: sandbox_id,
            }
            self.pods[name] = {
                "metadata": {
                    "name": name,
                    "namespace": "default",
                    "labels": labels,
                    "annotations": {},
                    "creationTimestamp": f"2026-12-08T00:00:{index:02d}Z",
                },
                "spec": {"containers": [{"ports": [{"containerPort": port}]}]},
                "status": {
                    "phase": "Running",
                    "podIP": "127.0.0.1",
                    "conditions": [{"type": "Ready", "status": "True"}],
                },
            }
            self.feed("ADDED", self.pods[name])
            names.append(name)
        return names

    def fail(self, pod: str) -> None:
        """The kubelet's report of a sandbox killed (out of memory): phase Failed, the pod still there."""
        self.pods[pod]["status"]["phase"] = "Failed"
        self.feed("MODIFIED", self.pods[pod])

    def runners_url(self, pod: str) -> str:
        port = self.pods[pod]["spec"]["containers"][0]["ports"][0]["containerPort"]
        return f"http://127.0.0.1:{port}"

    async def mark_claimed(
        self, namespace: str, pod: str, labels: Mapping[str, str], annotations: dict[str, Any]
    ) -> None:
        meta = self.pods[pod]["metadata"]
        meta["labels"].update(labels)
        meta["annotations"].update(annotations)
        self.feed("MODIFIED", self.pods[pod])

    async def burn(self, namespace: str, pod: str) -> None:
        self.burnt.append(pod)
        body = self.pods.pop(pod, None)
        runner = self.runners.pop(pod, None)
        if runner is not None:
            await runner.cleanup()
        if body is not None:
            self.feed("DELETED", body)

    async def set_waiting(self, namespace: str, template: str, waiting: int) -> None:
        self.waiting.append(waiting)

    async def close(self) -> None:
        for runner in self.runners.values():
            await runner.cleanup()


def signed_by(key: Ed25519PrivateKey, sandbox_id: str) -> dict[str, str]:
    return {"claim": sign_claim(key, sandbox_id, token_digest("someone-elses-token-0123"), {}, time.time())}


@pytest.fixture
def claim_key(tmp_path: Path) -> tuple[Ed25519PrivateKey, Path]:
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "claim-key.pem"
    path.write_bytes(_pem(key))
    return key, path


@pytest.fixture
async def pool_of(replicas: Any, claim_key: tuple[Ed25519PrivateKey, Path], tmp_path: Path) -> AsyncIterator[Any]:
    """``await pool_of(n_replicas, **settings)`` -> (Pool, replicas), the template known to all."""
    pools: list[Pool] = []

    async def start(n: int = 2, key_file: Path | None = None, **settings: Any) -> tuple[Pool, list[Replica]]:
        the_pool = Pool(claim_key[0], tmp_path / f"ws{len(pools)}")
        pools.append(the_pool)
        started = await replicas(
            [], n, pool_pods=the_pool, sandbox_claim_key_file=str(key_file or claim_key[1]), **settings
        )
        the_pool.replicas = started
        for r in started:
            assert r.gateway.sandboxes is not None
            r.gateway.sandboxes.apply_template("ADDED", TEMPLATE)
        return the_pool, started

    yield start
    for p in pools:
        await p.close()


async def _claim(http: aiohttp.ClientSession, replica: Replica, **body: Any) -> tuple[int, dict[str, Any]]:
    async with http.post(replica.url + API, json={"template": "py", **body}, headers=ADMIN) as r:
        return r.status, await r.json()


async def _run(http: aiohttp.ClientSession, url: str, token: str, code: str, language: str = "bash") -> list[Any]:
    async with http.post(
        url + "/execute", json={"code": code, "language": language}, headers={"Authorization": f"Bearer {token}"}
    ) as r:
        assert r.status == 200, await r.text()
        return [json.loads(line) for line in (await r.text()).splitlines()]


async def test_claims_on_either_replica_run_code_through_the_other_and_burn_on_delete(
    pool_of: Any, http: aiohttp.ClientSession
) -> None:
    the_pool, (a, b) = await pool_of()
    await the_pool.add(4)
    claimed = []
    for replica in (a, b, a, b):
        status, body = await _claim(http, replica, env={"GREETING": "hello"}, metadata={"run": "r1"})
        assert status == 201, body
        claimed.append(body)
    assert len({c["sandboxId"] for c in claimed}) == 4  # four pods, four claimants: none handed out twice
    first = claimed[0]
    token, sid = first["token"], first["sandboxId"]
    assert first["metadata"] == {"run": "r1"} and first["template"] == "py"
    for replica in (a, b):  # served by whichever replica the call lands on
        events = await _run(http, replica.url + first["url"], token, 'echo "$GREETING from $((6*7))"')
        assert events[0] == {"type": "stdout", "text": "hello from 42\n"}, events
    # Another sandbox's token, the operator's token, none: the agent's API stays closed.
    for headers in ({"Authorization": f"Bearer {claimed[1]['token']}"}, ADMIN, {}):
        async with http.post(b.url + first["url"] + "/execute", json={"code": "1"}, headers=headers) as r:
            assert r.status == 401, await r.text()
    listed = await (await http.get(a.url + API, headers=ADMIN)).json()
    assert {i["sandboxId"] for i in listed["items"]} == {c["sandboxId"] for c in claimed}
    async with http.delete(b.url + first["url"], headers={"Authorization": f"Bearer {token}"}) as r:
        assert r.status == 200 and (await r.json())["deleted"] is True
    assert len(the_pool.burnt) == 1
    for replica in (a, b):
        async with http.post(
            replica.url + first["url"] + "/execute", json={"code": "1"}, headers={"Authorization": f"Bearer {token}"}
        ) as r:
            assert r.status == 404 and (await r.json())["error"]["code"] == "sandbox_not_found"
    assert sid not in {p["metadata"]["labels"][pool.LABEL_SANDBOX_ID] for p in the_pool.pods.values()}


async def test_the_claim_is_recorded_on_the_pod_for_the_operator_and_other_replicas(
    pool_of: Any, http: aiohttp.ClientSession
) -> None:
    the_pool, (a, b) = await pool_of()
    [name] = await the_pool.add(1)
    status, body = await _claim(http, a, ttl="2m")
    assert status == 201, body
    for r in (a, b):
        assert r.gateway.sandboxes is not None
        await r.gateway.sandboxes.drain()
    meta = the_pool.pods[name]["metadata"]
    assert meta["labels"][pool.LABEL_CLAIMED] == "true"
    ann = meta["annotations"]
    assert ann[pool.ANNOTATION_TOKEN_SHA256] == hashlib.sha256(body["token"].encode()).hexdigest()
    assert body["token"] not in json.dumps(the_pool.pods)  # only its digest is written down
    assert abs(float(ann[pool.ANNOTATION_EXPIRES]) - (time.time() + 120)) < 5
    for r in (a, b):  # both replicas know it now, whichever claimed it
        assert r.gateway.sandboxes is not None and body["sandboxId"] in r.gateway.sandboxes.sandboxes


async def test_extend_is_capped_by_max_ttl_and_expiry_burns_the_sandbox(
    pool_of: Any, http: aiohttp.ClientSession
) -> None:
    the_pool, (a, b) = await pool_of()
    await the_pool.add(2)
    _, long = await _claim(http, a, ttl="1m")
    auth = {"Authorization": f"Bearer {long['token']}"}
    async with http.post(b.url + long["url"] + "/extend", json={"ttl": "5h"}, headers=auth) as r:
        extended = await r.json()
    assert r.status == 200
    claimed_at = time.mktime(time.strptime(extended["claimedAt"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    expires = time.mktime(time.strptime(extended["expiresAt"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert 3590 <= expires - claimed_at <= 3601  # maxTtl 1h from the claim, not 5h
    status, short = await _claim(http, b, ttl=1)
    assert status == 201
    for _ in range(100):
        if len(the_pool.burnt) == 1:
            break
        await asyncio.sleep(0.05)
    assert len(the_pool.burnt) == 1
    async with http.get(a.url + short["url"], headers={"Authorization": f"Bearer {short['token']}"}) as r:
        assert r.status == 404


async def test_a_dry_pool_waits_for_the_next_pod_and_asks_for_it(pool_of: Any, http: aiohttp.ClientSession) -> None:
    the_pool, (a,) = await pool_of(1)
    claim = asyncio.ensure_future(_claim(http, a))
    for _ in range(100):
        if the_pool.waiting:
            break
        await asyncio.sleep(0.02)
    assert the_pool.waiting == [1] and not claim.done()
    await the_pool.add(1)
    status, body = await claim
    assert status == 201, body
    await asyncio.sleep(0.05)
    assert the_pool.waiting == [1, 0]


async def test_a_pool_that_stays_dry_answers_503_with_retry_after(pool_of: Any, http: aiohttp.ClientSession) -> None:
    _, (a,) = await pool_of(1, sandbox_claim_timeout=0.3)
    async with http.post(a.url + API, json={"template": "py"}, headers=ADMIN) as r:
        assert r.status == 503 and r.headers["Retry-After"] == "1"
        assert (await r.json())["error"]["code"] == "pool_empty"


async def test_concurrent_claims_never_share_a_pod(pool_of: Any, http: aiohttp.ClientSession) -> None:
    the_pool, (a, b) = await pool_of(sandbox_claim_timeout=1.0)
    await the_pool.add(6)
    results = await asyncio.gather(*(_claim(http, r) for r in (a, b) * 4))
    served = [body["sandboxId"] for status, body in results if status == 201]
    assert len(served) == 6 and len(set(served)) == 6
    assert sorted(status for status, _ in results) == [201] * 6 + [503] * 2


async def test_pods_that_refuse_a_claim_are_burnt_not_handed_out(
    pool_of: Any, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A gateway whose key the pool does not know (a rotated key): the agents refuse its claims."""
    other = tmp_path / "other-key.pem"
    other.write_bytes(_pem(Ed25519PrivateKey.generate()))
    the_pool, (a,) = await pool_of(1, key_file=other, sandbox_claim_timeout=0.3)
    await the_pool.add(2)
    status, body = await _claim(http, a)
    assert status == 503, body
    assert sorted(the_pool.burnt) == ["py-0", "py-1"]


async def test_files_stream_through_the_gateway_both_ways(pool_of: Any, http: aiohttp.ClientSession) -> None:
    the_pool, (a, b) = await pool_of()
    await the_pool.add(1)
    _, sandbox = await _claim(http, a)
    auth = {"Authorization": f"Bearer {sandbox['token']}"}
    data = os.urandom(3 * 1024 * 1024 + 17)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 65536):
            yield data[i : i + 65536]

    async with http.put(b.url + sandbox["url"] + "/files/dir/blob.bin", data=chunks(), headers=auth) as r:
        assert r.status == 201 and (await r.json())["size"] == len(data)
    async with http.get(a.url + sandbox["url"] + "/files/dir/blob.bin", headers=auth) as r:
        assert r.status == 200 and int(r.headers["Content-Length"]) == len(data)
        assert hashlib.sha256(await r.read()).digest() == hashlib.sha256(data).digest()
    async with http.get(a.url + sandbox["url"] + "/files/..%2F..%2Fetc%2Fpasswd", headers=auth) as r:
        assert r.status == 400  # the gateway refuses encoded separators before any sandbox sees them
    async with http.get(a.url + sandbox["url"] + "/stat/nothing-here", headers=auth) as r:
        assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"  # the agent's own answer


@pytest.mark.parametrize(
    "case",
    [
        ({"template": "py"}, {}, 401, "unauthenticated"),
        ({"template": "py"}, {"Authorization": "Bearer wrong"}, 401, "unauthenticated"),
        ({"template": "nope"}, ADMIN, 404, "template_not_found"),
        ({}, ADMIN, 400, "bad_request"),
        ({"template": "py", "ttl": "2h"}, ADMIN, 400, "bad_request"),
        ({"template": "py", "ttl": "-1s"}, ADMIN, 400, "bad_request"),
        ({"template": "py", "env": {"A": 1}}, ADMIN, 400, "bad_request"),
        ({"template": "py", "metadata": ["x"]}, ADMIN, 400, "bad_metadata"),
        ("[1]", ADMIN, 400, "bad_request"),
    ],
    ids=[
        "no-credential",
        "wrong-token",
        "no-template",
        "no-name",
        "ttl-over-max",
        "ttl-negative",
        "env",
        "metadata",
        "not-object",
    ],
)
async def test_bad_claims_get_a_4xx_naming_the_problem(
    pool_of: Any, http: aiohttp.ClientSession, case: tuple[Any, dict[str, str], int, str]
) -> None:
    body, headers, status, code = case
    the_pool, (a,) = await pool_of(1)
    await the_pool.add(1)
    payload = body if isinstance(body, str) else json.dumps(body)
    async with http.post(a.url + API, data=payload, headers={**headers, "Content-Type": "application/json"}) as r:
        answer = await r.json()
    assert r.status == status and answer["error"]["code"] == code, answer
    assert the_pool.burnt == [] and len(the_pool.pods) == 1  # nothing claimed, nothing burnt


async def test_without_a_claim_key_the_api_says_which_setting_is_missing(
    replicas: Any, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    [a] = await replicas([])
    async with http.post(a.url + API, json={"template": "py"}, headers=ADMIN) as r:
        assert r.status == 503 and "sandbox_claim_key_file" in (await r.json())["error"]["message"]


async def test_a_silent_execution_outlasts_the_instance_head_timeout(pool_of: Any, http: aiohttp.ClientSession) -> None:
    """A sandbox answers an execution at its first event and an upload once it has it all: its own
    timeouts bound those, not ``upstream_timeout`` (which would cut them with 504)."""
    the_pool, (a,) = await pool_of(1, upstream_timeout=0.5)
    await the_pool.add(1)
    _, sandbox = await _claim(http, a)
    events = await _run(http, a.url + sandbox["url"], sandbox["token"], "sleep 1.5; echo done")
    assert events[0] == {"type": "stdout", "text": "done\n"}, events


async def test_a_pod_someone_else_claimed_is_left_alone_and_the_next_one_handed_out(
    pool_of: Any, http: aiohttp.ClientSession
) -> None:
    """The operator binds Sandbox objects from the same pool: a pod it won answers 409, and stays its."""
    the_pool, (a,) = await pool_of(1)
    first, second = await the_pool.add(2)
    taken = the_pool.pods[first]["metadata"]["labels"][pool.LABEL_SANDBOX_ID]
    async with http.post(
        the_pool.runners_url(first) + "/claim",
        json=signed_by(the_pool.key, taken),
    ) as r:
        assert r.status == 200  # the other claimer, before any watch event tells the gateway
    status, body = await _claim(http, a)
    assert status == 201 and body["pod"] == second, body
    assert the_pool.burnt == []


async def test_a_call_to_a_sandbox_that_dies_ends_with_502_and_the_sandbox_is_burnt(
    pool_of: Any, http: aiohttp.ClientSession
) -> None:
    """A killed gVisor sandbox's network stack goes with it, so nothing resets the gateway's connection:
    the pod's status is what tells the gateway to stop waiting."""
    the_pool, (a, b) = await pool_of()
    [name] = await the_pool.add(1)
    _, sandbox = await _claim(http, a)
    auth = {"Authorization": f"Bearer {sandbox['token']}"}
    for r in (a, b):
        assert r.gateway.sandboxes is not None
        await r.gateway.sandboxes.drain()
    started = time.monotonic()
    call = asyncio.ensure_future(
        http.post(b.url + sandbox["url"] + "/execute", json={"code": "sleep 30", "language": "bash"}, headers=auth)
    )
    await asyncio.sleep(0.5)
    the_pool.fail(name)
    async with await call as r:
        assert r.status == 502 and (await r.json())["error"]["code"] == "sandbox_ended"
    assert time.monotonic() - started < 10
    for _ in range(100):
        if the_pool.burnt:
            break
        await asyncio.sleep(0.02)
    assert the_pool.burnt == [name]  # its owner burns what is left of it
