"""The instance backend interface, and what an instance is to the gateway.

An instance is created *for a session id* (the id is written on it when it is created: a pod label,
or the local backend's state file), so that its storage directory is known before any request and so
that any gateway replica can rebuild "which instance serves session X" with one LIST. Warm
instances are created the same way with a pre-minted id that no client holds yet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from voltgrid.api.function import Function
from voltgrid.errors import VoltgridError


class BackendError(VoltgridError):
    """An instance could not be started, reached or deleted."""


class InstanceStartError(BackendError):
    """An instance failed to start or did not become ready in time."""


class ControlPlaneUnavailableError(BackendError):
    """The control plane (the Kubernetes apiserver) could not be reached or asked to retry later.

    Nothing was changed (or the change is safe to repeat: pod names are deterministic), so the
    caller may retry; the gateway holds a cold start while it lasts, then answers 503.
    """


def function_key(function: Function) -> str:
    """``namespace/name`` of a Function: how the data plane names it everywhere."""
    meta = function.metadata
    return f"{meta.namespace or 'default'}/{meta.name}"


@dataclass(slots=True)
class Instance:
    """One running instance of a Function, as the gateway routes to it."""

    id: str
    function: str
    url: str
    session: str
    warm: bool = False
    created: float = 0.0
    labels: dict[str, str] = field(default_factory=dict)
    #: Wall-clock time of the last activity checkpoint written on the instance (None: never, so a
    #: warm instance without one is unclaimed).
    last_active: float | None = None


@runtime_checkable
class InstanceBackend(Protocol):
    """What the gateway needs from a place that runs instances."""

    async def create(self, function: Function, session_id: str, *, warm: bool = False) -> Instance:
        """Start an instance labelled with ``session_id`` and return it once it is ready.

        Raises :class:`InstanceStartError` when it cannot start or is not ready in time.
        """
        ...

    async def delete(self, instance: Instance) -> None:
        """Stop and remove the instance; deleting one that is already gone is not an error."""
        ...

    async def list(self, function: str | None = None, session: str | None = None) -> list[Instance]:
        """Live, ready instances, optionally only of one function (``ns/name``) and/or one session."""
        ...

    async def checkpoint(self, instance: Instance, when: float) -> None:
        """Record, coarsely, that ``instance`` was active at wall-clock time ``when``.

        The gateway calls it at most once per checkpoint interval per instance, and once when it
        claims a warm instance, never per request. The Kubernetes backend writes the pod's
        ``voltgrid.dev/last-active`` annotation, which the operator reads (pool accounting and its
        scale-to-zero safety net); a backend nobody else watches makes it a no-op.
        """
        ...

    async def close(self) -> None:
        """Release the backend's own resources (clients); running instances are left alone."""
        ...
