"""Gateway settings: one documented dataclass, filled from a YAML file, then env, then flags.

Precedence is flag > environment (``VOLTGRID_GATEWAY_<FIELD>``, upper case) > file > default. Every
limit and timeout of the gateway is a field here, with its default a named constant.
"""

from __future__ import annotations

import dataclasses
import inspect
import ipaddress
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from voltgrid.errors import VoltgridError

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


class SettingsError(VoltgridError):
    """A setting has a value the gateway cannot use."""


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


@dataclass
class GatewaySettings:
    """Everything the gateway can be told. Durations are seconds, sizes bytes."""

    #: Address to listen on.
    host: str = "0.0.0.0"
    #: Port to listen on.
    port: int = DEFAULT_PORT
    #: This replica's base URL as peers reach it (default ``http://127.0.0.1:<port>``).
    replica_url: str | None = None
    #: Static list of all gateway replicas' base URLs (local/multi-process); empty = alone.
    peers: list[str] = field(default_factory=list)
    #: Gateway Service whose EndpointSlices list the replicas (in a cluster; overrides ``peers``).
    membership_service: str | None = None
    #: Namespace of the membership Service.
    membership_namespace: str = "voltgrid-system"
    #: Port name of the membership Service's endpoints (None: the first port).
    membership_port_name: str | None = "http"
    #: Shared secret that marks internal hops between replicas (required with peers).
    internal_token: str = ""
    #: Requests that may wait per function while an instance starts; beyond it, 503 + Retry-After.
    max_queue: int = DEFAULT_MAX_QUEUE
    #: How long a request waits for an instance to start before 504.
    cold_start_timeout: float = DEFAULT_COLD_START_TIMEOUT
    #: How long an instance may take to send response headers before 504.
    upstream_timeout: float = DEFAULT_UPSTREAM_TIMEOUT
    #: Longest a stream (SSE, chunked, WebSocket) stays open; it counts as in flight until then.
    max_stream_duration: float = DEFAULT_MAX_STREAM_DURATION
    #: Largest request body streamed through; larger gets 413.
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    #: Largest request line or header field; beyond it, 400/431.
    max_field_bytes: int = DEFAULT_MAX_FIELD_BYTES
    #: Most header fields of a request; beyond it, 431.
    max_headers: int = DEFAULT_MAX_HEADERS
    #: Seconds a client has to send a request's line and headers; then 408 and the connection closes.
    header_read_timeout: float = DEFAULT_HEADER_READ_TIMEOUT
    #: Longest silence in the middle of a request body; then 408.
    body_idle_timeout: float = DEFAULT_BODY_IDLE_TIMEOUT
    #: Most connections at once that have not sent a complete request head (unauthenticated, maybe
    #: slow on purpose); connections beyond it are closed as they open.
    max_pending_connections: int = DEFAULT_MAX_PENDING_CONNECTIONS
    #: Addresses or networks (CIDR) of proxies in front of the gateway whose ``X-Forwarded-For``,
    #: ``-Proto`` and ``-Host`` are kept; from anyone else these headers are replaced.
    trusted_proxies: list[str] = field(default_factory=list)
    #: Connect timeout of an internal hop to the owning replica.
    forward_connect_timeout: float = DEFAULT_FORWARD_CONNECT_TIMEOUT
    #: Retry-After seconds sent with 503.
    retry_after: int = DEFAULT_RETRY_AFTER
    #: Seconds between LISTs of instances that adopt sessions this replica now owns.
    resync_interval: float = DEFAULT_RESYNC_INTERVAL
    #: Shards of the in-process registry (a power of two).
    shards: int = DEFAULT_SHARDS
    #: Seconds between activity checkpoints of an instance in use (the ``voltgrid.dev/last-active``
    #: pod annotation the operator's scale-to-zero safety net reads); written at most this often per
    #: instance, and only for instances active since their last one.
    checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL
    #: Let the gateway create warm-pool instances itself (local backend); in a cluster the operator
    #: does (the CLI defaults this to false with ``--backend kubernetes``) and the gateway discovers
    #: and claims them.
    manage_warm_pool: bool = True
    #: Cluster warm pools: least seconds between two LISTs for one function's warm instances when a
    #: new session finds none known (they are also found by every resync).
    warm_discovery_interval: float = DEFAULT_WARM_DISCOVERY_INTERVAL
    #: Function (``namespace/name``) served at ``/`` in addition to ``/fn/<namespace>/<name>/``.
    default_function: str | None = None
    #: JWT policies by function (``namespace/name``, or ``*`` for every function).
    jwt: dict[str, JwtPolicy] = field(default_factory=dict)
    #: JWT policy of the Session API (falls back to the function's policy).
    api_jwt: JwtPolicy | None = None
    #: Operator bearer tokens of the Session API (every session of every Function); without one,
    #: and without a JWT policy, a Function's sessions cannot be listed or ended through the API.
    api_tokens: list[str] = field(default_factory=list)
    #: Files holding one operator token each (a mounted Secret), read at startup.
    api_token_files: list[str] = field(default_factory=list)
    #: New sessions one client (address) may mint per second, sustained, per Function ...
    session_mint_rate: float = DEFAULT_SESSION_MINT_RATE
    #: ... and in a burst; beyond them, 429 with Retry-After. 0 turns the limit off.
    session_mint_burst: int = DEFAULT_SESSION_MINT_BURST
    #: Header whose LAST address names the client, set by the proxy in front of the gateway (e.g.
    #: ``X-Forwarded-For`` from an ingress that appends to it); only when clients cannot reach the
    #: gateway around that proxy. Unset: the connection's peer address.
    client_address_header: str | None = None
    #: ``trusted_proxies`` parsed (derived, not a setting).
    proxy_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(
        default_factory=list, init=False, repr=False
    )

    def __post_init__(self) -> None:
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
            self.proxy_networks = [ipaddress.ip_network(p, strict=False) for p in self.trusted_proxies]
        except ValueError as e:
            raise SettingsError(f"trusted_proxies: {e}") from None
        if self.session_mint_rate <= 0 or self.session_mint_burst < 0:
            raise SettingsError("session_mint_rate must be positive and session_mint_burst at least 0")
        self.jwt = {k: _policy(v) for k, v in self.jwt.items()}
        if self.api_jwt is not None:
            self.api_jwt = _policy(self.api_jwt)

    def all_api_tokens(self) -> list[str]:
        """The operator tokens, those from files included (blank ones ignored)."""
        tokens = [*self.api_tokens, *(Path(p).read_text() for p in self.api_token_files)]
        return [t.strip() for t in tokens if t.strip()]

    @property
    def self_url(self) -> str:
        assert self.replica_url is not None
        return self.replica_url.rstrip("/")


@dataclass(frozen=True)
class SettingReference:
    """One setting as ``--help`` and the docs list it."""

    name: str
    flag: str
    env: str
    default: str
    doc: str


#: Settings only a ``--config`` file can hold (mappings of policies).
FILE_ONLY: Final = ("jwt", "api_jwt")


def settings_reference() -> list[SettingReference]:
    """Every setting with its flag, environment variable, default and documentation. The text is
    the ``#:`` comment above the field in this module, so that it is written in one place."""
    comments: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(GatewaySettings).splitlines():
        text = line.strip()
        if text.startswith("#:"):
            pending.append(text[2:].strip())
        elif (match := re.match(r"(\w+): ", text)) and pending:
            comments[match.group(1)] = " ".join(pending)
            pending = []
    out = []
    for f in dataclasses.fields(GatewaySettings):
        if not f.init:
            continue
        default: Any = f.default
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        shown = ",".join(default) if isinstance(default, list) else "" if default in (None, {}) else str(default)
        flag = "" if f.name in FILE_ONLY else "--" + f.name.replace("_", "-")
        env = "" if f.name in FILE_ONLY else ENV_PREFIX + f.name.upper()
        out.append(SettingReference(f.name, flag, env, shown, comments.get(f.name, "")))
    return out


def _policy(value: JwtPolicy | Mapping[str, Any]) -> JwtPolicy:
    if isinstance(value, JwtPolicy):
        return value
    try:
        return JwtPolicy(**{k.replace("-", "_"): v for k, v in value.items()})
    except TypeError as e:
        raise SettingsError(f"bad JWT policy: {e}") from e


def _coerce(name: str, kind: Any, raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    kind_text = str(kind)
    try:
        if kind_text.startswith("int"):
            return int(raw)
        if kind_text.startswith("float"):
            return float(raw)
        if kind_text.startswith("bool"):
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if kind_text.startswith("list"):
            return [p.strip() for p in raw.split(",") if p.strip()]
    except ValueError as e:
        raise SettingsError(f"setting {name}: {raw!r} is not a valid {kind_text}") from e
    return raw or None if "None" in kind_text else raw


def load_settings(
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> GatewaySettings:
    """Settings from a YAML ``file``, overridden by ``env``, overridden by ``flags`` (None = unset);
    ``defaults`` replace the dataclass defaults (e.g. those that depend on the backend)."""
    fields = {f.name: f.type for f in dataclasses.fields(GatewaySettings) if f.init}
    merged: dict[str, Any] = dict(defaults or {})
    if file is not None:
        data = yaml.safe_load(file.read_text()) or {}
        if not isinstance(data, dict):
            raise SettingsError(f"{file}: expected a mapping of settings")
        for key, value in data.items():
            name = str(key).replace("-", "_")
            if name not in fields:
                raise SettingsError(f"{file}: unknown setting {key!r}")
            merged[name] = value
    for key, value in (env or {}).items():
        if key.startswith(ENV_PREFIX):
            name = key[len(ENV_PREFIX) :].lower()
            if name in fields and name not in ("jwt", "api_jwt"):
                merged[name] = value
    for key, value in (flags or {}).items():
        if value is not None:
            merged[key] = value
    coerced = {name: _coerce(name, fields[name], value) for name, value in merged.items()}
    return GatewaySettings(**coerced)
