"""Operator settings: one documented model (:mod:`voltgrid.api.settings`: flag > env > file > default).

``voltgrid operator`` has a flag for each field, ``VOLTGRID_OPERATOR_<FIELD>`` environment variables
(handy in the chart) and a ``--config`` YAML file (or ``VOLTGRID_OPERATOR_CONFIG``). Settings are checked
when built: a bad value is a :class:`SettingsError` naming it before anything starts (inside kopf a bad
endpoint would only fail a startup activity that kopf retries forever).
"""

from __future__ import annotations

import fnmatch
import math
import os
import urllib.parse
from collections.abc import Mapping
from typing import Annotated, Any, Final, Self

import pydantic
from pydantic_settings import SettingsConfigDict

from voltgrid.api import constants
from voltgrid.api.settings import LayeredSettings, Names, SettingsError

ENV_PREFIX: Final = "VOLTGRID_OPERATOR_"
DEFAULT_LIVENESS: Final = "http://0.0.0.0:8081/healthz"
DEFAULT_METRICS: Final = "http://0.0.0.0:8082/metrics"
DEFAULT_GATEWAY_SERVICE: Final = "voltgrid-gateway"
_FLOAT_FIELDS: Final = frozenset({"sweep_interval", "reap_grace", "sandbox_delete_grace", "prestop_timeout_cap"})
#: Characters that make a namespace setting a pattern (served by a cluster-wide watch, filtered).
PATTERN_CHARS: Final = frozenset("*?[!,")


def parse_http_endpoint(setting: str, url: str, default_path: str = "/") -> tuple[str, int, str]:
    """(host, port, path) of ``http://host:port/path``; :class:`SettingsError` names what is wrong."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.port is None:
        raise SettingsError(f"{setting} endpoint {url!r}: expected http://HOST:PORT/PATH (or empty to disable)")
    return parts.hostname, parts.port, parts.path or default_path


def is_pattern(namespace: str) -> bool:
    return bool(PATTERN_CHARS & set(namespace))


def matches_namespace(namespace: str, pattern: str) -> bool:
    """kopf's namespace pattern syntax, so that Voltgrid's own watches serve exactly what kopf's do:
    comma-separated globs; ``!glob`` excludes; a leading exclusion implies a ``*`` before it; a later
    inclusion re-admits only what the first glob matched."""
    globs = [glob.strip() for glob in pattern.split(",")]
    if not globs or globs[0].startswith("!"):
        globs.insert(0, "*")
    matches = first = fnmatch.fnmatch(namespace, globs[0])
    for glob in globs[1:]:
        if glob.startswith("!"):
            matches = matches and not fnmatch.fnmatch(namespace, glob.lstrip("!"))
        else:
            matches = matches or (first and fnmatch.fnmatch(namespace, glob))
    return matches


class OperatorSettings(LayeredSettings):
    """How the operator runs."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True)

    namespaces: Annotated[tuple[str, ...], Names(flag="--namespace", repeatable=True)] = ()
    """Namespaces to serve, or kopf-style patterns (``team-*``, ``!kube-*``); empty: all. The flag repeats;
    the environment variable is comma-separated."""
    peering: str | None = None
    """kopf peering object name for HA (none: standalone, one replica)."""
    liveness: str = DEFAULT_LIVENESS
    """kopf liveness endpoint URL (empty disables it)."""
    metrics: str = DEFAULT_METRICS
    """Prometheus endpoint URL of the operator's ``voltgrid_operator_*`` metrics (empty disables it)."""
    gateway_service: str = DEFAULT_GATEWAY_SERVICE
    """The gateway Service that Function URLs point at."""
    gateway_namespace: str = "voltgrid-system"
    """Namespace of the gateway Service."""
    url_base: str | None = None
    """Overrides the invoke-URL base (e.g. an Ingress host); the URL is ``<base>/fn/<namespace>/<function>/``."""
    sweep_interval: float = 10.0
    """Seconds between passes of the ONE shared sweep over existing pods."""
    reap_grace: float = 300.0
    """Seconds added to a pod's idle timeout before the safety net deletes it (covers the gateway's coarse
    ``last-active`` checkpoint interval)."""
    sandbox_delete_grace: float = 60.0
    """Seconds an expired Sandbox object stays (phase Expired) before it is deleted when ``deleteAfterExpiry``
    is set."""
    prestop_timeout_cap: float = 30.0
    """Upper bound in seconds on a preStop call made by a Session finalizer."""
    sandbox_claim_key_file: str | None = None
    """The gateway's sandbox claim key (Ed25519 PEM; the chart mounts it). Warm pool sandboxes get its
    public half, to accept the claims the gateway signs; the operator signs with it the claims of
    ``Sandbox`` objects with a ``templateRef``. Unset: SandboxTemplates are not Ready (``NoClaimKey``)
    and such Sandboxes are NotStarted."""

    @pydantic.model_validator(mode="after")
    def _check(self) -> Self:
        for name in ("liveness", "metrics"):
            if url := getattr(self, name):
                parse_http_endpoint(name, url)
        for name in sorted(_FLOAT_FIELDS):
            value = getattr(self, name)
            floor_ok = value > 0 if name == "sweep_interval" else value >= 0
            if not (math.isfinite(value) and floor_ok):
                bound = "above zero" if name == "sweep_interval" else "zero or more"
                raise SettingsError(f"{name} must be a number of seconds, {bound} (got {value!r})")
        if self.peering and self.namespaces and self.peering_namespace is None:
            raise SettingsError(
                f"peering {self.peering!r} with only namespace patterns {list(self.namespaces)}: kopf keeps one"
                " KopfPeering per served namespace, so name at least one namespace literally (it holds the"
                " replicas' shared peering object), or serve the whole cluster"
            )
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, flags: Mapping[str, Any] | None = None) -> Self:
        """Flags (field name -> value) over ``VOLTGRID_OPERATOR_<FIELD>`` variables (``os.environ`` by
        default) over the ``VOLTGRID_OPERATOR_CONFIG`` file; checked together, so a flag can mend the env."""
        return cls.load(env=os.environ if env is None else env, flags=flags)

    @property
    def watches_cluster(self) -> bool:
        """Whether the served namespaces need a cluster-wide watch (none given, or a pattern)."""
        return not self.namespaces or any(is_pattern(n) for n in self.namespaces)

    @property
    def peering_namespace(self) -> str | None:
        """Where the peering object the active replica is decided by lives: None for a cluster-wide
        operator (ClusterKopfPeering), else the first namespace named literally (kopf keeps one
        KopfPeering per served namespace; replicas serving the same ones agree in each)."""
        return next((n for n in self.namespaces if not is_pattern(n)), None)

    def serves(self, namespace: str) -> bool:
        """Whether objects in ``namespace`` are this operator's (see :func:`matches_namespace`)."""
        return not self.namespaces or any(matches_namespace(namespace, p) for p in self.namespaces)

    def invoke_url(self, namespace: str, function: str) -> str:
        base = self.url_base or f"http://{self.gateway_service}.{self.gateway_namespace}.svc"
        return f"{base.rstrip('/')}{constants.INVOKE_PATH_PREFIX}{namespace}/{function}/"
