"""Operator settings: one documented dataclass, defaults < environment < flags.

The CLI builds it from its flags with :meth:`OperatorSettings.from_env` as the base, so an
environment variable (``VOLTGRID_OPERATOR_*``, handy in the chart) is overridden by an explicit flag.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from voltgrid.api import constants as c

ENV_PREFIX: Final = "VOLTGRID_OPERATOR_"
DEFAULT_LIVENESS: Final = "http://0.0.0.0:8081/healthz"
DEFAULT_METRICS: Final = "http://0.0.0.0:8082/metrics"
DEFAULT_GATEWAY_SERVICE: Final = "voltgrid-gateway"
_FLOAT_FIELDS: Final = frozenset({"sweep_interval", "reap_grace", "sandbox_delete_grace", "prestop_timeout_cap"})
_OPTIONAL_FIELDS: Final = frozenset({"peering", "url_base"})
#: Characters that make a namespace setting a pattern (served by a cluster-wide watch, filtered).
PATTERN_CHARS: Final = frozenset("*?[!,")


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


@dataclass(frozen=True)
class OperatorSettings:
    """How the operator runs.

    namespaces: namespaces to serve, or kopf-style patterns (``team-*``, ``!kube-*``); empty: all.
    peering: kopf peering object name for HA (None: standalone, one replica).
    liveness: kopf liveness endpoint URL ("" disables it).
    metrics: Prometheus endpoint URL of the operator's ``voltgrid_operator_*`` metrics ("" disables it).
    gateway_service / gateway_namespace: the gateway Service that Function URLs point at.
    url_base: overrides the invoke-URL base (e.g. an Ingress host); the URL is
        ``<base>/fn/<namespace>/<function>/``.
    sweep_interval: seconds between passes of the ONE shared sweep over existing pods.
    reap_grace: seconds added to a pod's idle timeout before the safety net deletes it (covers
        the gateway's coarse ``last-active`` checkpoint interval).
    sandbox_delete_grace: seconds an expired Sandbox object stays (phase Expired) before it is
        deleted when ``deleteAfterExpiry`` is set.
    prestop_timeout_cap: upper bound in seconds on a preStop call made by a Session finalizer.
    """

    namespaces: tuple[str, ...] = ()
    peering: str | None = None
    liveness: str = DEFAULT_LIVENESS
    metrics: str = DEFAULT_METRICS
    gateway_service: str = DEFAULT_GATEWAY_SERVICE
    gateway_namespace: str = "voltgrid-system"
    url_base: str | None = None
    sweep_interval: float = 10.0
    reap_grace: float = 300.0
    sandbox_delete_grace: float = 60.0
    prestop_timeout_cap: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorSettings:
        """Defaults overridden by ``VOLTGRID_OPERATOR_<FIELD>`` variables (namespaces comma-separated)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None:
                continue
            if f.name == "namespaces":
                values[f.name] = tuple(n.strip() for n in raw.split(",") if n.strip())
            elif f.name in _FLOAT_FIELDS:
                values[f.name] = float(raw)
            elif f.name in _OPTIONAL_FIELDS:
                values[f.name] = raw or None
            else:
                values[f.name] = raw
        return dataclasses.replace(cls(), **values)

    @property
    def watches_cluster(self) -> bool:
        """Whether the served namespaces need a cluster-wide watch (none given, or a pattern)."""
        return not self.namespaces or any(PATTERN_CHARS & set(n) for n in self.namespaces)

    def serves(self, namespace: str) -> bool:
        """Whether objects in ``namespace`` are this operator's (see :func:`matches_namespace`)."""
        return not self.namespaces or any(matches_namespace(namespace, p) for p in self.namespaces)

    def invoke_url(self, namespace: str, function: str) -> str:
        base = self.url_base or f"http://{self.gateway_service}.{self.gateway_namespace}.svc"
        return f"{base.rstrip('/')}{c.INVOKE_PATH_PREFIX}{namespace}/{function}/"
