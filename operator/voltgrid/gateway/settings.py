"""Gateway settings: one documented model (:mod:`voltgrid.api.settings`: flag > env > file > default).

The environment variable of a field is ``VOLTGRID_GATEWAY_<FIELD>`` (upper case), its flag
``--<field-name>``, its documentation the docstring under it (``voltgrid gateway --help`` prints it). Every
limit and timeout of the gateway is a field here, with its default a named constant.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Self
from urllib.parse import urlsplit

import pydantic
from pydantic_settings import SettingsConfigDict

from voltgrid.api.settings import LayeredSettings, Names, SettingsError

ENV_PREFIX: Final = "VOLTGRID_GATEWAY_"
DEFAULT_PORT: Final = 8080
DEFAULT_MAX_QUEUE: Final = 100
DEFAULT_COLD_START_TIMEOUT: Final = 60.0
DEFAULT_UPSTREAM_TIMEOUT: Final = 60.0
DEFAULT_MAX_STREAM_DURATION: Final = 3600.0
DEFAULT_MAX_BODY_BYTES: Final = 64 * 1024 * 1024
DEFAULT_MAX_FIELD_BYTES: Final = 8190
DEFAULT_MAX_HEADERS: Final = 100
DEFAULT_FORWARD_CONNECT_TIMEOUT: Final = 2.0
DEFAULT_RETRY_AFTER: Final = 1
DEFAULT_SANDBOX_CLAIM_TIMEOUT: Final = 30.0
DEFAULT_SANDBOX_MAX_UPLOAD_BYTES: Final = 4 * 1024 * 1024 * 1024
DEFAULT_RESYNC_INTERVAL: Final = 60.0
#: Well under the operator's reap grace (300 s), so a pod in use is never mistaken for an idle one.
DEFAULT_CHECKPOINT_INTERVAL: Final = 60.0
#: Shortest pause between two LISTs for the operator's warm instances of one function.
DEFAULT_WARM_DISCOVERY_INTERVAL: Final = 1.0
DEFAULT_SHARDS: Final = 64
DEFAULT_INBOUND_BUFFER: Final = 64 * 1024
#: A client gets this long to send a request's line and headers (from its first byte, or from the
#: connection's opening) before the connection is answered 408 and closed: slowloris protection.
DEFAULT_HEADER_READ_TIMEOUT: Final = 15.0
#: Longest silence in the middle of a request body before the request is answered 408.
DEFAULT_BODY_IDLE_TIMEOUT: Final = 30.0
#: Most connections that have not yet sent a complete request head; more are closed at once.
DEFAULT_MAX_PENDING_CONNECTIONS: Final = 1024
#: New sessions per second one client may mint on one Function, sustained (a token bucket) ...
DEFAULT_SESSION_MINT_RATE: Final = 1.0
#: ... and at once: enough for an agent framework opening a few sessions in parallel.
DEFAULT_SESSION_MINT_BURST: Final = 10


@dataclass
class JwtPolicy:
    """Bearer-token validation for a function (or the Session API).

    ``keys`` are PEM public keys (RS*/ES*/PS*/EdDSA) or shared secrets (HS*); ``key_files`` are read
    at startup, e.g. a Kubernetes Secret mounted as files. A valid token without ``required_scope``
    in its ``scope`` claim gets 403; a missing or invalid token gets 401.
    """

    issuer: str | None = None
    audience: str | None = None
    keys: list[str] = field(default_factory=list)
    key_files: list[str] = field(default_factory=list)
    required_scope: str | None = None
    leeway: float = 30.0

    def all_keys(self) -> list[str]:
        return [*self.keys, *(Path(p).read_text() for p in self.key_files)]


class GatewaySettings(LayeredSettings):
    """Everything the gateway can be told. Durations are seconds, sizes bytes."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX)

    host: str = "0.0.0.0"
    """Address to listen on."""
    port: int = DEFAULT_PORT
    """Port clients (and, with one worker, other replicas) reach the gateway on."""
    workers: int = 1
    """Worker processes per gateway: each listens on ``port`` (SO_REUSEPORT: the kernel spreads the
    connections) and on its own member port ``worker_port_base + i``, and is one member of the ownership
    ring, exactly as a replica is (so requests and internal calls reach the owning worker in one hop).
    0 = one per CPU this process may run on. One worker is one CPU's worth of throughput (docs/benchmarks.md)."""
    worker_port_base: int | None = None
    """First member port of the workers (worker ``i`` listens on it plus ``i``); default ``port + 1``. Used
    only with several workers: every replica of a deployment must have the same ``workers`` and this."""
    worker_index: int | None = None
    """Which worker this process is: set by the process that starts the workers, not by users."""
    """Port to listen on."""
    replica_url: str | None = None
    """This replica's base URL as peers reach it (default ``http://127.0.0.1:<port>``)."""
    peers: list[str] = pydantic.Field(default_factory=list)
    """Static list of all gateway replicas' base URLs (local/multi-process); empty = alone."""
    membership_service: str | None = None
    """Gateway Service whose EndpointSlices list the replicas (in a cluster; overrides ``peers``)."""
    membership_namespace: str = "voltgrid-system"
    """Namespace of the membership Service."""
    membership_port_name: str | None = "http"
    """Port name of the membership Service's endpoints (None: the first port)."""
    internal_token: str = ""
    """Shared secret that marks internal hops between replicas (required with peers)."""
    max_queue: int = DEFAULT_MAX_QUEUE
    """Requests that may wait per function while an instance starts; beyond it, 503 + Retry-After."""
    cold_start_timeout: float = DEFAULT_COLD_START_TIMEOUT
    """How long a request waits for an instance to start before 504."""
    upstream_timeout: float = DEFAULT_UPSTREAM_TIMEOUT
    """How long an instance may take to send response headers before 504."""
    max_stream_duration: float = DEFAULT_MAX_STREAM_DURATION
    """Longest a stream (SSE, chunked, WebSocket) stays open; it counts as in flight until then."""
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    """Largest request body streamed through; larger gets 413."""
    max_field_bytes: int = DEFAULT_MAX_FIELD_BYTES
    """Largest request line or header field; beyond it, 400/431."""
    max_headers: int = DEFAULT_MAX_HEADERS
    """Most header fields of a request; beyond it, 431."""
    header_read_timeout: float = DEFAULT_HEADER_READ_TIMEOUT
    """Seconds a client has to send a request's line and headers; then 408 and the connection closes."""
    body_idle_timeout: float = DEFAULT_BODY_IDLE_TIMEOUT
    """Longest silence in the middle of a request body; then 408."""
    max_pending_connections: int = DEFAULT_MAX_PENDING_CONNECTIONS
    """Most connections at once that have not sent a complete request head (unauthenticated, maybe slow on
    purpose); connections beyond it are closed as they open."""
    trusted_proxies: list[str] = pydantic.Field(default_factory=list)
    """Addresses or networks (CIDR) of proxies in front of the gateway whose ``X-Forwarded-For``, ``-Proto`` and
    ``-Host`` are kept; from anyone else these headers are replaced."""
    forward_connect_timeout: float = DEFAULT_FORWARD_CONNECT_TIMEOUT
    """Connect timeout of an internal hop to the owning replica."""
    retry_after: int = DEFAULT_RETRY_AFTER
    """Retry-After seconds sent with 503."""
    resync_interval: float = DEFAULT_RESYNC_INTERVAL
    """Seconds between LISTs of instances that adopt sessions this replica now owns."""
    shards: int = DEFAULT_SHARDS
    """Shards of the in-process registry (a power of two)."""
    checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL
    """Seconds between activity checkpoints of an instance in use (the ``voltgrid.dev/last-active`` pod
    annotation the operator's scale-to-zero safety net reads); written at most this often per instance, and only
    for instances active since their last one."""
    manage_warm_pool: Annotated[bool, Names(takes_value=True)] = True
    """Let the gateway create warm-pool instances itself (local backend); in a cluster the operator does (the
    CLI defaults this to false with ``--backend kubernetes``) and the gateway discovers and claims them."""
    warm_discovery_interval: float = DEFAULT_WARM_DISCOVERY_INTERVAL
    """Cluster warm pools: least seconds between two LISTs for one function's warm instances when a new session
    finds none known (they are also found by every resync)."""
    default_function: str | None = None
    """Function (``namespace/name``) served at ``/`` in addition to ``/fn/<namespace>/<name>/``."""
    jwt: Annotated[dict[str, JwtPolicy], Names(file_only=True)] = pydantic.Field(default_factory=dict)
    """JWT policies by function (``namespace/name``, or ``*`` for every function)."""
    api_jwt: Annotated[JwtPolicy | None, Names(file_only=True)] = None
    """JWT policy of the Session API (falls back to the function's policy)."""
    api_tokens: list[str] = pydantic.Field(default_factory=list)
    """Operator bearer tokens of the Session API (every session of every Function); without one, and without a
    JWT policy, a Function's sessions cannot be listed or ended through the API."""
    api_token_files: list[str] = pydantic.Field(default_factory=list)
    """Files holding one operator token each (a mounted Secret), read at startup."""
    session_mint_rate: float = DEFAULT_SESSION_MINT_RATE
    """New sessions one client (address) may mint per second, sustained, per Function ..."""
    session_mint_burst: int = DEFAULT_SESSION_MINT_BURST
    """... and in a burst; beyond them, 429 with Retry-After. 0 turns the limit off."""
    client_address_header: str | None = None
    """Header whose LAST address names the client, set by the proxy in front of the gateway (e.g.
    ``X-Forwarded-For`` from an ingress that appends to it); only when clients cannot reach the gateway around
    that proxy. Unset: the connection's peer address."""
    events_url: str | None = None
    """Base URL of the trigger dispatcher's CloudEvents ingress (``voltgrid triggers``), which
    ``POST /_voltgrid/v1/events/<namespace>`` passes events to; unset: that route answers 404."""
    sandbox_claim_key_file: str | None = None
    """Ed25519 private key (PEM, PKCS#8) the gateway signs sandbox claims with (the chart mounts a generated
    one); the operator starts warm sandboxes with its public half. Unset: the Sandbox API answers 503."""
    sandbox_max_upload_bytes: int = DEFAULT_SANDBOX_MAX_UPLOAD_BYTES
    """Largest body streamed to a sandbox's agent (a file upload); the sandbox's own disk limits bound it too."""
    sandbox_claim_timeout: float = DEFAULT_SANDBOX_CLAIM_TIMEOUT
    """How long a sandbox claim waits for a warm pod when its template's pool is dry (the pool is grown for
    it meanwhile); then 503 with Retry-After."""
    _proxy_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = pydantic.PrivateAttr(default_factory=list)

    @pydantic.field_validator("jwt", mode="before")
    @classmethod
    def _policies(cls, value: Any) -> Any:
        """Policy keys may be written ``key-files`` in YAML, like the settings themselves."""
        return {k: _policy_keys(v) for k, v in value.items()} if isinstance(value, Mapping) else value

    @pydantic.field_validator("api_jwt", mode="before")
    @classmethod
    def _api_policy(cls, value: Any) -> Any:
        return _policy_keys(value)

    @pydantic.model_validator(mode="after")
    def _check(self) -> Self:
        if self.replica_url is None:
            self.replica_url = f"http://127.0.0.1:{self.port}"
        if not self.internal_token:
            if self.peers or self.membership_service:
                raise SettingsError("internal_token is required when there are several gateway replicas")
            self.internal_token = secrets.token_hex(16)
        if self.max_queue < 0 or self.max_body_bytes <= 0 or self.shards < 1:
            raise SettingsError("max_queue, max_body_bytes and shards must be positive")
        if self.checkpoint_interval <= 0:
            raise SettingsError("checkpoint_interval must be positive")
        if min(self.header_read_timeout, self.body_idle_timeout, self.max_pending_connections) <= 0:
            raise SettingsError("header_read_timeout, body_idle_timeout and max_pending_connections must be positive")
        try:
            self._proxy_networks = [ipaddress.ip_network(p, strict=False) for p in self.trusted_proxies]
        except ValueError as e:
            raise SettingsError(f"trusted_proxies: {e}") from None
        if self.workers < 0 or (self.worker_index is not None and not 0 <= self.worker_index < self.worker_count()):
            raise SettingsError("workers must be at least 0, and worker_index one of the workers")
        if self.session_mint_rate <= 0 or self.session_mint_burst < 0:
            raise SettingsError("session_mint_rate must be positive and session_mint_burst at least 0")
        return self

    def worker_count(self) -> int:
        """``workers``, with 0 resolved to the CPUs this process may run on."""
        return self.workers or len(os.sched_getaffinity(0))

    def member_urls(self, url: str) -> list[str]:
        """The ring members behind a replica's base URL: itself with one worker, else one URL per
        worker (its member port)."""
        count = self.worker_count()
        if count == 1:
            return [url]
        parts = urlsplit(url)
        base = self.worker_port_base or self.port + 1
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        return [f"{parts.scheme}://{host}:{base + i}" for i in range(count)]

    def for_worker(self, index: int) -> GatewaySettings:
        """These settings as worker ``index`` sees them: its member URL is its ``self_url``, and the
        static peers are every worker of every replica (its sibling workers at least)."""
        replicas = [peer.rstrip("/") for peer in self.peers] or [self.self_url]
        return self.model_copy(
            update={
                "worker_index": index,
                "replica_url": self.member_urls(self.self_url)[index],
                "peers": [member for replica in replicas for member in self.member_urls(replica)],
            }
        )

    @property
    def proxy_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """``trusted_proxies`` parsed."""
        return self._proxy_networks

    def all_api_tokens(self) -> list[str]:
        """The operator tokens, those from files included (blank ones ignored)."""
        tokens = [*self.api_tokens, *(Path(p).read_text() for p in self.api_token_files)]
        return [t.strip() for t in tokens if t.strip()]

    @property
    def self_url(self) -> str:
        assert self.replica_url is not None
        return self.replica_url.rstrip("/")


#: Settings only a ``--config`` file can hold (mappings of policies).
FILE_ONLY: Final = tuple(ref.name for ref in GatewaySettings.reference() if not ref.flag)


def _policy_keys(value: Any) -> Any:
    return {str(k).replace("-", "_"): v for k, v in value.items()} if isinstance(value, Mapping) else value


def load_settings(
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> GatewaySettings:
    """Settings from a YAML ``file``, overridden by ``env``, overridden by ``flags`` (None = unset);
    ``defaults`` replace the fields' defaults (e.g. those that depend on the backend)."""
    return GatewaySettings.load(config=file, env=env, flags=flags, defaults=defaults)
