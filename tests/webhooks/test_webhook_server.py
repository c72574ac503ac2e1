"""The webhook server over real HTTPS: a generated CA, an aiohttp client trusting only that CA."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from voltgrid.webhooks import certs, server, tls, validate
from voltgrid.webhooks.lookup import FactLookupError
from voltgrid.webhooks.review import AdmissionRequest

NAMES = tls.service_names("voltgrid-webhook", "voltgrid-system", ["127.0.0.1"])


def client_context(bundle: bytes) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=bundle.decode())
    return context


def review(obj: dict[str, Any], user: str = "system:serviceaccount:team-a:tenant") -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "abc",
            "operation": "CREATE",
            "namespace": "team-a",
            "object": obj,
            "userInfo": {"username": user, "groups": ["system:authenticated"]},
        },
    }


SESSION_POD = {
    "metadata": {
        "labels": {"voltgrid.dev/managed": "true", "voltgrid.dev/function": "fn", "voltgrid.dev/session": "s1"},
        "annotations": {"voltgrid.dev/storage-claim": "sessions"},
    },
    "spec": {"containers": [{"name": "app", "image": "i"}]},
}
HOSTPATH_POD = {
    "metadata": {},
    "spec": {"containers": [{"name": "app"}], "volumes": [{"name": "h", "hostPath": {"path": "/etc"}}]},
}


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "tls.crt", tmp_path / "tls.key"


class FakeFacts:
    """The cluster as the webhook reads it: one Function names claim ``fn-sessions``; reads fail on demand."""

    def __init__(self) -> None:
        self.asked: list[validate.Lookups] = []
        self.fail = False

    async def facts(self, request: AdmissionRequest, needs: validate.Lookups) -> validate.ClusterFacts:
        self.asked.append(needs)
        if self.fail:
            raise FactLookupError("could not check the request against the cluster (Service Unavailable); try again")
        return validate.ClusterFacts(session_claims=frozenset({"fn-sessions"}))


@pytest.fixture
def facts() -> FakeFacts:
    return FakeFacts()


GATEWAY = "system:serviceaccount:voltgrid-system:voltgrid-gateway"


@pytest.fixture
async def running(
    files: tuple[Path, Path], facts: FakeFacts
) -> AsyncIterator[tuple[server.RunningServer, tls.CertState]]:
    state = tls.plan(None, NAMES, datetime.now(UTC))
    certs.write_files(state, *files)
    settings = server.ServerSettings(
        tls_cert=files[0],
        tls_key=files[1],
        host="127.0.0.1",
        port=0,
        cert_poll_interval=0.05,
        trusted_users=frozenset({GATEWAY}),
    )
    srv = await server.start(settings, facts)
    try:
        yield srv, state
    finally:
        await srv.close()


async def call(port: int, bundle: bytes, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method,
            f"https://127.0.0.1:{port}{path}",
            ssl=client_context(bundle),
            **({"data": body} if isinstance(body, bytes) else {"json": body}),
        ) as resp,
    ):
        return resp.status, await resp.json()


async def test_healthz_over_tls(running: tuple[server.RunningServer, tls.CertState]) -> None:
    srv, state = running
    assert await call(srv.port, state.bundle, "GET", "/healthz") == (200, {"status": "ok"})


async def test_an_untrusted_client_is_refused(running: tuple[server.RunningServer, tls.CertState]) -> None:
    srv, _ = running
    other = tls.plan(None, NAMES, datetime.now(UTC))
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await call(srv.port, other.bundle, "GET", "/healthz")


async def test_mutate_round_trip(running: tuple[server.RunningServer, tls.CertState]) -> None:
    srv, state = running
    status, body = await call(srv.port, state.bundle, "POST", "/mutate", review(SESSION_POD))
    assert status == 200
    response = body["response"]
    assert response["uid"] == "abc" and response["allowed"] is True and response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    assert {"op": "add", "path": "/spec/volumes", "value": [
        {"name": "voltgrid-session", "persistentVolumeClaim": {"claimName": "sessions"}}]} in ops  # fmt: skip


async def test_validate_round_trip(running: tuple[server.RunningServer, tls.CertState]) -> None:
    srv, state = running
    status, body = await call(srv.port, state.bundle, "POST", "/validate", review(HOSTPATH_POD))
    assert status == 200
    assert body["response"]["allowed"] is False
    assert "volume 'h' is a hostPath (/etc)" in body["response"]["status"]["message"]


CLAIM_ROOT_POD = {
    "metadata": {},
    "spec": {
        "containers": [{"name": "app", "volumeMounts": [{"name": "s", "mountPath": "/all"}]}],
        "volumes": [{"name": "s", "persistentVolumeClaim": {"claimName": "fn-sessions"}}],
    },
}


async def test_a_claim_found_in_the_cluster_is_guarded_from_a_tenant(
    running: tuple[server.RunningServer, tls.CertState], facts: FakeFacts
) -> None:
    srv, state = running
    status, body = await call(srv.port, state.bundle, "POST", "/validate", review(CLAIM_ROOT_POD))
    assert status == 200 and body["response"]["allowed"] is False
    assert "volume 's' is session storage" in body["response"]["status"]["message"]
    assert facts.asked == [validate.Lookups(session_claims=True)]
    # Voltgrid's own requests are judged without a read (cold starts never wait on one).
    status, body = await call(srv.port, state.bundle, "POST", "/validate", review(SESSION_POD, GATEWAY))
    assert body["response"]["allowed"] is True and len(facts.asked) == 1


async def test_a_failed_read_refuses_the_request(
    running: tuple[server.RunningServer, tls.CertState], facts: FakeFacts
) -> None:
    srv, state = running
    facts.fail = True
    status, body = await call(srv.port, state.bundle, "POST", "/validate", review({"metadata": {}, "spec": {}}))
    assert status == 200 and body["response"]["allowed"] is False
    assert "could not check the request against the cluster" in body["response"]["status"]["message"]


def test_trusted_users_from_flags_or_env() -> None:
    env = {"VOLTGRID_WEBHOOK_TRUSTED_USERS": "a, b"}
    assert server.parse_settings([], env).trusted_users == {"a", "b"}
    assert server.parse_settings(["--trusted-user", "c"], env).trusted_users == {"c"}


def test_no_trusted_user_is_a_settings_error(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("VOLTGRID_WEBHOOK_TRUSTED_USERS", raising=False)
    assert server.main(["--port", "0"]) == 2
    assert "no --trusted-user" in caplog.text


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "body is not JSON"),
        ("a string", "body must be a JSON object"),
        ({"kind": "Pod"}, "expected kind AdmissionReview"),
        ({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}, "uid is missing"),
        (review({"metadata": "x"}), "malformed pod object"),
    ],
)
async def test_bad_requests_get_400(
    running: tuple[server.RunningServer, tls.CertState], body: Any, message: str
) -> None:
    srv, state = running
    status, answer = await call(srv.port, state.bundle, "POST", "/validate", body)
    assert status == 400 and message in answer["message"]


async def _wait_trusted(port: int, bundle: bytes) -> None:
    for _ in range(100):
        try:
            await call(port, bundle, "GET", "/healthz")
        except aiohttp.ClientConnectorCertificateError:
            await asyncio.sleep(0.05)
        else:
            return
    raise AssertionError("the server never presented a certificate of the new CA")


async def test_certificate_files_are_hot_reloaded(
    running: tuple[server.RunningServer, tls.CertState], files: tuple[Path, Path]
) -> None:
    srv, old = running
    new = tls.plan(None, NAMES, datetime.now(UTC))  # a brand-new CA: only a reload makes it trusted
    certs.write_files(new, *files)
    await _wait_trusted(srv.port, new.bundle)
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await call(srv.port, old.bundle, "GET", "/healthz")


async def test_a_broken_pair_keeps_the_current_certificate(
    running: tuple[server.RunningServer, tls.CertState], files: tuple[Path, Path]
) -> None:
    srv, state = running
    other = tls.plan(None, NAMES, datetime.now(UTC))
    files[0].write_bytes(other.serving.cert_pem)  # cert of another key: half of a rotation
    assert srv.reloader.reload() is False
    assert await call(srv.port, state.bundle, "GET", "/healthz") == (200, {"status": "ok"})
    files[1].write_bytes(other.serving.key_pem)  # the other half arrives
    assert srv.reloader.reload() is True
    assert await call(srv.port, other.bundle, "GET", "/healthz") == (200, {"status": "ok"})


def test_settings_precedence_flag_over_env() -> None:
    env = {"VOLTGRID_WEBHOOK_PORT": "9443", "VOLTGRID_WEBHOOK_SESSION_CLAIMS": "a, b", "VOLTGRID_NAMESPACE": "vg"}
    settings = server.parse_settings(["--port", "7443"], env)
    assert settings.port == 7443 and settings.session_claims == {"a", "b"}
    assert settings.cert_settings.namespace == "vg"
    assert settings.tls_cert == Path("/etc/voltgrid/webhook-tls/tls.crt")
    assert server.parse_settings(["--session-claim", "c"], env).session_claims == {"c"}
