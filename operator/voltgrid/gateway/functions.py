"""The functions the gateway serves, with their session policy parsed once into plain numbers.

A :class:`FunctionEntry` is what every request of a function consults (affinity, timeouts, auth),
so it is prepared when the function is loaded, not per request. The catalog is filled from YAML
files (``voltgrid dev``, tests) or kept in sync with the cluster's Function objects by the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from voltgrid.api.common import parse_duration
from voltgrid.api.function import Affinity, Function
from voltgrid.backends.base import function_key
from voltgrid.errors import SpecError
from voltgrid.gateway.auth import JwtVerifier
from voltgrid.gateway.settings import GatewaySettings

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class FunctionEntry:
    """One served function and its policy, ready for the hot path."""

    key: str
    model: Function
    affinity: Affinity
    header: str
    cookie: str
    sessions_per_instance: int
    idle_timeout: float
    max_lifetime: float
    prestop_path: str | None
    prestop_timeout: float
    max_instances: int
    warm_pool: int
    concurrency: int
    verifier: JwtVerifier | None

    @classmethod
    def of(cls, function: Function, settings: GatewaySettings) -> FunctionEntry:
        key = function_key(function)
        s = function.spec.sessions
        policy = settings.jwt.get(key) or settings.jwt.get("*")
        return cls(
            key=key,
            model=function,
            affinity=s.affinity,
            header=s.header,
            cookie=s.cookie,
            sessions_per_instance=s.sessions_per_instance,
            idle_timeout=parse_duration(s.idle_timeout).total_seconds(),
            max_lifetime=parse_duration(s.max_lifetime).total_seconds(),
            prestop_path=s.pre_stop.path if s.pre_stop else None,
            prestop_timeout=parse_duration(s.pre_stop.timeout).total_seconds() if s.pre_stop else 0.0,
            max_instances=function.spec.scaling.max_instances,
            warm_pool=function.spec.scaling.warm_pool,
            concurrency=function.spec.scaling.concurrency,
            verifier=JwtVerifier(policy) if policy else None,
        )


class FunctionCatalog:
    """Served functions by ``namespace/name``."""

    def __init__(self, settings: GatewaySettings, functions: Iterable[Function] = ()) -> None:
        self._settings = settings
        self._entries: dict[str, FunctionEntry] = {}
        for function in functions:
            self.put(function)

    def put(self, function: Function) -> FunctionEntry:
        entry = FunctionEntry.of(function, self._settings)
        self._entries[entry.key] = entry
        return entry

    def remove(self, key: str) -> None:
        self._entries.pop(key, None)

    def get(self, key: str) -> FunctionEntry | None:
        return self._entries.get(key)

    def __iter__(self) -> Iterator[FunctionEntry]:
        return iter(list(self._entries.values()))


def load_functions(paths: Iterable[Path]) -> list[Function]:
    """Function objects from YAML files (several documents per file allowed)."""
    functions = []
    for path in paths:
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except (OSError, yaml.YAMLError) as e:
            raise SpecError(f"{path}: cannot read: {e}") from e
        for doc in docs:
            if not doc:
                continue
            if not isinstance(doc, dict):
                raise SpecError(f"{path}: a document is not a Kubernetes object: {str(doc)[:80]!r}")
            if doc.get("kind") != "Function":
                meta = doc.get("metadata")
                name = meta.get("name", "?") if isinstance(meta, dict) else "?"
                logger.warning("%s: skipping %s %s: the gateway serves Functions only", path, doc.get("kind"), name)
                continue
            try:
                function = Function.model_validate(doc)
            except ValueError as e:
                raise SpecError(f"{path}: invalid Function: {e}") from e
            if not function.metadata.name:
                raise SpecError(f"{path}: a Function needs metadata.name")
            if not function.metadata.namespace:
                function.metadata.namespace = "default"
            functions.append(function)
    return functions
