"""The operator's CA: generation, chain verification, the rotation decision and the Secret round."""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from voltgrid.webhooks import certs, tls
from voltgrid.webhooks.config import UrlEndpoint, WebhookSettings, mutating_configuration, validating_configuration
from voltgrid.webhooks.review import JsonPatchOp

T0 = datetime(2030, 1, 1, tzinfo=UTC)
NAMES = tls.service_names("voltgrid-webhook", "voltgrid-system", ["127.0.0.1"])


def verify(state: tls.CertState, name: str, now: datetime, trust: bytes | None = None) -> None:
    store = Store(x509.load_pem_x509_certificates(trust or state.bundle))
    subject = x509.IPAddress(ipaddress.ip_address(name)) if name[0].isdigit() else x509.DNSName(name)
    verifier = PolicyBuilder().store(store).time(now).build_server_verifier(subject)
    verifier.verify(state.serving.cert, [])


@pytest.mark.parametrize("name", ["voltgrid-webhook.voltgrid-system.svc", "voltgrid-webhook", "127.0.0.1"])
def test_serving_cert_verifies_against_the_bundle(name: str) -> None:
    state = tls.plan(None, NAMES, T0)
    verify(state, name, T0)
    with pytest.raises(VerificationError):
        verify(state, "other.voltgrid-system.svc", T0)


def test_serving_cert_never_outlives_its_ca() -> None:
    ca = tls.generate_ca(T0, validity=timedelta(days=10))
    serving = tls.issue_serving(ca, NAMES, T0, validity=timedelta(days=90))
    assert serving.cert.not_valid_after_utc == ca.cert.not_valid_after_utc


@pytest.mark.parametrize(
    ("elapsed", "expected"),
    [(timedelta(0), False), (timedelta(days=59), False), (timedelta(days=61), True), (timedelta(days=95), True)],
)
def test_needs_rotation(elapsed: timedelta, expected: bool) -> None:
    cert = tls.issue_serving(tls.generate_ca(T0), NAMES, T0, validity=timedelta(days=90) - tls.CLOCK_SKEW).cert
    assert tls.needs_rotation(cert, T0 + elapsed) is expected


def test_plan_keeps_a_fresh_state() -> None:
    state = tls.plan(None, NAMES, T0)
    assert tls.plan(state, NAMES, T0 + timedelta(days=30)) is state
    assert tls.CertState.from_secret_data(state.secret_data()) == state


def test_plan_renews_the_serving_cert_under_the_same_ca() -> None:
    state = tls.plan(None, NAMES, T0)
    later = T0 + timedelta(days=70)
    renewed = tls.plan(state, NAMES, later)
    assert renewed.ca == state.ca and renewed.bundle == state.bundle
    assert renewed.serving != state.serving
    verify(renewed, "voltgrid-webhook.voltgrid-system.svc", later)


def test_plan_reissues_for_new_names() -> None:
    state = tls.plan(None, NAMES, T0)
    moved = tls.plan(state, [*NAMES, "webhook.example"], T0)
    assert moved.ca == state.ca and moved.serving != state.serving
    verify(moved, "webhook.example", T0)


def test_ca_rotation_keeps_the_old_ca_trusted_until_it_expires() -> None:
    first = tls.plan(None, NAMES, T0)
    old = tls.plan(first, NAMES, T0 + timedelta(days=200))  # serving cert renewed, same CA
    assert old.ca == first.ca
    at = T0 + timedelta(days=250)  # past two thirds of the CA's year
    rotated = tls.plan(old, NAMES, at)
    assert rotated.ca != old.ca
    bundle = x509.load_pem_x509_certificates(rotated.bundle)
    assert bundle == [rotated.ca.cert, old.ca.cert]
    verify(rotated, "voltgrid-webhook.voltgrid-system.svc", at)
    verify(old, "voltgrid-webhook.voltgrid-system.svc", at, trust=rotated.bundle)  # pods still serving the old cert
    expired = T0 + timedelta(days=366)
    later = tls.plan(rotated, NAMES, expired)
    assert x509.load_pem_x509_certificates(later.bundle) == [rotated.ca.cert]


@pytest.mark.parametrize("missing", [tls.SECRET_CA_KEY, tls.SECRET_TLS_CERT, tls.SECRET_BUNDLE])
def test_incomplete_or_garbage_secret_is_regenerated(missing: str) -> None:
    data = tls.plan(None, NAMES, T0).secret_data()
    assert tls.CertState.from_secret_data({k: v for k, v in data.items() if k != missing}) is None
    assert tls.CertState.from_secret_data(data | {missing: b"garbage"}) is None


class FakeStore:
    """An in-memory CertStore recording the order of writes; ``conflicts`` lose that many writes."""

    def __init__(self, conflicts: int = 0) -> None:
        self.secret: certs.StoredSecret | None = None
        self.version = 0
        self.conflicts = conflicts
        self.events: list[str] = []
        settings = WebhookSettings(operator_namespace="vg", endpoint=UrlEndpoint("https://127.0.0.1:1"))
        self.configurations: dict[str, dict[str, Any]] = {
            "MutatingWebhookConfiguration": mutating_configuration(settings),
            "ValidatingWebhookConfiguration": validating_configuration(settings),
        }

    async def read_secret(self) -> certs.StoredSecret | None:
        return self.secret

    async def write_secret(self, data: Mapping[str, bytes], resource_version: str | None) -> None:
        if self.conflicts:
            self.conflicts -= 1
            self.version += 1  # someone else wrote a state of their own
            self.secret = certs.StoredSecret(dict(tls.plan(None, NAMES, T0).secret_data()), str(self.version))
            raise certs.CertConflictError("conflict")
        assert resource_version == (self.secret.resource_version if self.secret else None)
        self.version += 1
        self.secret = certs.StoredSecret(dict(data), str(self.version))
        self.events.append("secret")

    async def read_configuration(self, kind: str, name: str) -> dict[str, Any] | None:
        return self.configurations.get(kind)

    async def patch_configuration(self, kind: str, name: str, patch: list[JsonPatchOp]) -> None:
        self.configurations[kind] = jsonpatch.apply_patch(self.configurations[kind], patch)
        self.events.append(kind)

    def bundles(self) -> set[bytes]:
        return {base64.b64decode(c["webhooks"][0]["clientConfig"]["caBundle"]) for c in self.configurations.values()}


SETTINGS = certs.CertSettings(namespace="voltgrid-system", extra_names=("127.0.0.1",))


async def test_reconcile_writes_secret_then_configurations_then_files(tmp_path: Path) -> None:
    store = FakeStore()
    files = (tmp_path / "tls.crt", tmp_path / "tls.key")
    state = await certs.reconcile(store, SETTINGS, T0, files)
    assert store.events == ["secret", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]
    assert store.bundles() == {state.bundle}
    assert files[0].read_bytes() == state.serving.cert_pem and files[1].read_bytes() == state.serving.key_pem
    assert oct(files[1].stat().st_mode & 0o777) == "0o600"
    store.events.clear()
    assert await certs.reconcile(store, SETTINGS, T0 + timedelta(hours=1), files) == state
    assert store.events == []  # steady state: no writes at all


async def test_reconcile_rotation_updates_everything(tmp_path: Path) -> None:
    store = FakeStore()
    files = (tmp_path / "tls.crt", tmp_path / "tls.key")
    old = await certs.reconcile(store, SETTINGS, T0, files)
    new = await certs.reconcile(store, SETTINGS, T0 + timedelta(days=250), files)
    assert new.ca != old.ca and store.bundles() == {new.bundle}
    assert files[0].read_bytes() == new.serving.cert_pem


async def test_reconcile_adopts_the_winner_of_a_write_race() -> None:
    store = FakeStore(conflicts=1)
    state = await certs.reconcile(store, SETTINGS, T0)
    assert store.secret is not None and tls.CertState.from_secret_data(store.secret.data) == state
    assert store.events == ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]


async def test_reconcile_gives_up_after_repeated_conflicts() -> None:
    with pytest.raises(certs.CertConflictError):
        await certs.reconcile(FakeStore(conflicts=certs.CONFLICT_RETRIES), SETTINGS, T0 + timedelta(days=300))


async def test_missing_configuration_is_skipped() -> None:
    store = FakeStore()
    del store.configurations["ValidatingWebhookConfiguration"]
    await certs.reconcile(store, SETTINGS, T0)
    assert store.events == ["secret", "MutatingWebhookConfiguration"]
