"""The admission webhook server: ``/mutate``, ``/validate`` and ``/healthz`` over TLS (aiohttp).

Why aiohttp and not kopf's admission support: the webhooks layer must not import kopf (import-linter
contract) — the webhook has to keep answering while the operator restarts, and failurePolicy Fail
makes it critical for every pod in a Voltgrid namespace; kopf would also tie the webhook's lifetime and
TLS to an operator process and to kopf's own certificate handling, whereas here the same small aiohttp
process serves both webhooks, reloads its certificate files when they change (an operator-generated CA
rotating, cert-manager renewing, or the kubelet refreshing a mounted Secret — no restart), and can
keep its own CA (``--manage-certs``, :mod:`voltgrid.webhooks.certs`). The decisions are pure functions
(:mod:`voltgrid.webhooks.mutate`, :mod:`voltgrid.webhooks.validate`); this module is transport only.

Entry point: :func:`main` (``voltgrid webhook`` in the CLI). Settings: :class:`WebhookSettings`, flag >
environment > ``--config`` file > default (:mod:`voltgrid.api.settings`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Final

import pydantic
from aiohttp import web
from pydantic_settings import SettingsConfigDict

from voltgrid.api.settings import LayeredSettings, Names, SettingsError
from voltgrid.errors import VoltgridError
from voltgrid.webhooks import certs, contract, mutate, validate
from voltgrid.webhooks.kube import api_client
from voltgrid.webhooks.lookup import FactLookupError, FactSource, KubernetesFacts
from voltgrid.webhooks.review import AdmissionRequest, ReviewError, Verdict, parse_review, review_response

log = logging.getLogger(__name__)

#: How often the certificate files are checked for changes.
CERT_POLL_INTERVAL: Final = 2.0
#: An AdmissionReview carries one pod (at most ~1.5 MiB in etcd) twice at most.
MAX_REVIEW_BYTES: Final = 4 * 1024 * 1024
#: After a failed certificate round, try again after this long (seconds).
CERT_RETRY_DELAY: Final = 60.0


@dataclass(frozen=True)
class ServerSettings:
    """How the webhook server runs (``voltgrid webhook --help`` lists flags and env names)."""

    tls_cert: Path
    tls_key: Path
    host: str = "0.0.0.0"
    port: int = contract.DEFAULT_PORT
    #: Claims that hold session directories in every namespace, besides a pod's own annotation.
    session_claims: frozenset[str] = field(default_factory=frozenset)
    #: Users (Voltgrid's own service accounts) allowed to create session pods; see validate.py.
    trusted_users: frozenset[str] = field(default_factory=frozenset)
    #: Keep our own CA in a Secret and write tls_cert/tls_key from it (no cert-manager).
    manage_certs: bool = False
    #: Where the own CA lives and which configurations get its bundle (with ``manage_certs``).
    cert_settings: certs.CertSettings = field(default_factory=lambda: certs.CertSettings(namespace="voltgrid-system"))
    kubeconfig: str | None = None
    cert_poll_interval: float = CERT_POLL_INTERVAL


class WebhookSettings(LayeredSettings):
    """What ``voltgrid webhook`` can be told (flag > ``VOLTGRID_WEBHOOK_*`` > ``--config`` file > default)."""

    model_config = SettingsConfigDict(env_prefix="VOLTGRID_WEBHOOK_")

    host: str = "0.0.0.0"
    """Address to listen on."""
    port: int = contract.DEFAULT_PORT
    """Port to listen on (HTTPS)."""
    cert_dir: Path = Path("/etc/voltgrid/webhook-tls")
    """Directory of the serving certificate's ``tls.crt`` and ``tls.key``."""
    tls_cert: Path | None = None
    """The serving certificate (default ``<cert_dir>/tls.crt``)."""
    tls_key: Path | None = None
    """The serving certificate's key (default ``<cert_dir>/tls.key``)."""
    session_claims: Annotated[list[str], Names(flag="--session-claim", repeatable=True)] = pydantic.Field(
        default_factory=list
    )
    """A claim holding session directories in every namespace, besides a pod's own annotation (the flag
    repeats; the environment variable is comma-separated)."""
    trusted_users: Annotated[list[str], Names(flag="--trusted-user", repeatable=True)] = pydantic.Field(
        default_factory=list
    )
    """A user allowed to create session pods, e.g. system:serviceaccount:voltgrid-system:voltgrid-gateway (the
    flag repeats; the environment variable is comma-separated); at least one is required."""
    manage_certs: bool = False
    """Generate and rotate our own CA (a Secret) and patch caBundle; off with cert-manager."""
    namespace: Annotated[str, Names(env=("VOLTGRID_NAMESPACE", "POD_NAMESPACE"))] = "voltgrid-system"
    """Namespace of the webhook's Service and of the own CA's Secret."""
    service: str = "voltgrid-webhook"
    """The webhook's Service (the serving certificate's DNS names)."""
    secret: str = "voltgrid-webhook-tls"
    """The Secret holding the own CA and serving pair (with ``manage_certs``)."""
    configuration_prefix: str = "voltgrid"
    """Prefix of the webhook configurations that get the CA bundle (``<prefix>-session-storage``,
    ``<prefix>-session-isolation``)."""
    extra_names: Annotated[list[str], Names(flag="--extra-name", repeatable=True)] = pydantic.Field(
        default_factory=list
    )
    """Another DNS name or IP for the serving certificate (the flag repeats; the environment variable is
    comma-separated)."""
    kubeconfig: Annotated[str | None, Names(env=("KUBECONFIG",))] = None
    """Kubeconfig used outside a cluster."""


def parse_settings(argv: Sequence[str] | None, env: Mapping[str, str]) -> ServerSettings:
    """Flags over ``VOLTGRID_WEBHOOK_*`` environment variables over a ``--config`` file over defaults."""
    given = WebhookSettings.parse(
        argv, env, prog="voltgrid webhook", description="Voltgrid admission webhooks over TLS"
    )
    prefix = given.configuration_prefix
    return ServerSettings(
        tls_cert=given.tls_cert or given.cert_dir / "tls.crt",
        tls_key=given.tls_key or given.cert_dir / "tls.key",
        host=given.host,
        port=given.port,
        session_claims=frozenset(given.session_claims),
        trusted_users=frozenset(given.trusted_users),
        manage_certs=given.manage_certs,
        cert_settings=certs.CertSettings(
            namespace=given.namespace,
            service=given.service,
            secret=given.secret,
            mutating_configuration=f"{prefix}-session-storage",
            validating_configuration=f"{prefix}-session-isolation",
            extra_names=tuple(given.extra_names),
        ),
        kubeconfig=given.kubeconfig,
    )


class CertReloader:
    """One SSLContext whose certificate follows the files on disk.

    A change is loaded into a scratch context first (from a private copy, so a half-written pair is
    never used); only a pair that loads cleanly replaces the live certificate. The live context is
    changed in place: new handshakes use the new certificate, open connections keep theirs.
    """

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert, self.key = cert, key
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._stamp: tuple[int, ...] | None = None
        if not self.reload():
            raise ssl.SSLError(f"cannot load the TLS certificate {cert} and key {key}")

    def _current_stamp(self) -> tuple[int, ...]:
        a, b = os.stat(self.cert), os.stat(self.key)
        return (a.st_mtime_ns, a.st_size, a.st_ino, b.st_mtime_ns, b.st_size, b.st_ino)

    def reload(self) -> bool:
        """Load the files if they changed since the last load; True when a new pair is in use."""
        try:
            stamp = self._current_stamp()
            if stamp == self._stamp:
                return False
            with tempfile.TemporaryDirectory(prefix="voltgrid-tls-") as tmp:
                cert, key = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
                shutil.copyfile(self.cert, cert)
                shutil.copyfile(self.key, key)
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
                self.context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            log.warning("TLS files %s, %s not (re)loaded, keeping the current pair: %s", self.cert, self.key, exc)
            return False
        self._stamp = stamp
        log.info("TLS certificate loaded from %s", self.cert)
        return True

    async def watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.reload()


Decide = Callable[[AdmissionRequest], Awaitable[Verdict]]


def _validator(policy: validate.ValidationPolicy, source: FactSource) -> Decide:
    """The validating decision, with the cluster reads it needs first (a failed read refuses)."""

    async def decide(review: AdmissionRequest) -> Verdict:
        needs = validate.lookups_needed(review, policy)
        facts = validate.ClusterFacts()
        if needs.session_claims or needs.target_pod:
            try:
                facts = await source.facts(review, needs)
            except FactLookupError as exc:
                return Verdict(allowed=False, message=f"voltgrid: {exc}")
        return validate.review(review, policy, facts)

    return decide


async def _mutator(review: AdmissionRequest) -> Verdict:
    return mutate.review(review)


def _handler(decide: Decide) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        try:
            try:
                body = json.loads(await request.read())
            except ValueError as exc:
                raise ReviewError(f"body is not JSON: {exc}") from exc
            review = parse_review(body)
            verdict = await decide(review)
        except ReviewError as exc:
            return web.json_response({"code": "BadRequest", "message": str(exc)}, status=400)
        except (AttributeError, TypeError, KeyError) as exc:
            return web.json_response({"code": "BadRequest", "message": f"malformed pod object: {exc}"}, status=400)
        if not verdict.allowed:
            log.info("%s denied %s in %s: %s", request.path, review.operation, review.namespace, verdict.message)
        return web.json_response(review_response(review.uid, verdict))

    return handle


async def _healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def make_app(policy: validate.ValidationPolicy, source: FactSource) -> web.Application:
    """The aiohttp application (no TLS, no cert management): routes to the pure decisions."""
    app = web.Application(client_max_size=MAX_REVIEW_BYTES)
    app.router.add_post(contract.MUTATE_PATH, _handler(_mutator))
    app.router.add_post(contract.VALIDATE_PATH, _handler(_validator(policy, source)))
    app.router.add_get(contract.HEALTHZ_PATH, _healthz)
    return app


async def _cert_loop(settings: ServerSettings, store: certs.CertStore, reloader: CertReloader) -> None:
    delay = certs.CERT_CHECK_INTERVAL.total_seconds()
    while True:
        await asyncio.sleep(delay)
        try:
            await certs.reconcile(
                store, settings.cert_settings, datetime.now(UTC), (settings.tls_cert, settings.tls_key)
            )
            reloader.reload()
            delay = certs.CERT_CHECK_INTERVAL.total_seconds()
        except Exception:  # the next round retries; a failing round must not stop serving
            log.exception("certificate round failed; retrying in %ss", CERT_RETRY_DELAY)
            delay = CERT_RETRY_DELAY


@dataclass
class RunningServer:
    """A started server: its bound port, and what :meth:`close` stops."""

    port: int
    reloader: CertReloader
    runner: web.AppRunner
    tasks: list[asyncio.Task[None]]
    closers: list[Callable[[], Awaitable[Any]]]

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.runner.cleanup()
        for closer in self.closers:
            await closer()


async def start(settings: ServerSettings, source: FactSource | None = None) -> RunningServer:
    """Bootstrap certificates (with ``manage_certs``), then listen; ``port=0`` picks a free port.

    ``source`` answers the validating webhook's cluster reads (default: the apiserver, through the
    same client the certificate upkeep uses)."""
    tasks: list[asyncio.Task[None]] = []
    closers: list[Callable[[], Awaitable[Any]]] = []
    store: certs.CertStore | None = None
    if settings.manage_certs or source is None:
        client = await api_client(settings.kubeconfig)
        closers.append(client.close)
        source = source or KubernetesFacts(client)
        if settings.manage_certs:
            store = certs.KubernetesCertStore(client, settings.cert_settings)
            await certs.reconcile(
                store, settings.cert_settings, datetime.now(UTC), (settings.tls_cert, settings.tls_key)
            )
    reloader = CertReloader(settings.tls_cert, settings.tls_key)
    policy = validate.ValidationPolicy(settings.session_claims, settings.trusted_users)
    runner = web.AppRunner(make_app(policy, source))
    await runner.setup()
    sock = socket.create_server((settings.host, settings.port), reuse_port=False)
    port: int = sock.getsockname()[1]
    await web.SockSite(runner, sock, ssl_context=reloader.context).start()
    tasks.append(asyncio.create_task(reloader.watch(settings.cert_poll_interval)))
    if store is not None:
        tasks.append(asyncio.create_task(_cert_loop(settings, store, reloader)))
    log.info("webhook listening on https://%s:%s", settings.host, port)
    return RunningServer(port=port, reloader=reloader, runner=runner, tasks=tasks, closers=closers)


async def serve(settings: ServerSettings) -> None:
    """Run until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    running = await start(settings)
    try:
        await stop.wait()
    finally:
        await running.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``voltgrid webhook``: serve the admission webhooks until terminated; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = parse_settings(argv, os.environ)
    except SettingsError as exc:
        log.error("voltgrid webhook: %s", exc)
        return 2
    if not settings.trusted_users:
        log.error(
            "voltgrid webhook: no --trusted-user (VOLTGRID_WEBHOOK_TRUSTED_USERS): name the service accounts "
            "of Voltgrid's operator and gateway, the only users allowed to create session pods"
        )
        return 2
    try:
        asyncio.run(serve(settings))
    except (OSError, ssl.SSLError, VoltgridError) as exc:
        log.error("voltgrid webhook: %s", exc)
        return 1
    return 0
