"""Objects the operator creates for a resource: a Sandbox's NetworkPolicy and pod, a Function's warm
pods. When the apiserver refuses one (an invalid field the CRD schema let through, a quota, an
admission webhook), that is the resource's problem and must show on it: :func:`create` turns the
refusal into :class:`ChildRejected`, which each controller writes as the resource's ``Ready=False``
condition (reason ``<Kind>Rejected``, the apiserver's own message) plus a Warning Event, instead of
a traceback in the operator's log and a resource with no status.
"""

from __future__ import annotations

from typing import Any, Final

from voltgrid.controllers.kube import KubeApiError, KubeClient
from voltgrid.errors import VoltgridError

Json = dict[str, Any]

#: Refusals that may pass on their own (the apiserver or etcd overloaded): retried, unlike a 4xx,
#: which only a change of the resource's spec can cure.
TRANSIENT_STATUSES: Final = frozenset({429, 500, 502, 503, 504})


class ChildRejected(VoltgridError):
    """The apiserver refused to create an object the operator makes for a resource."""

    def __init__(self, kind: str, error: KubeApiError) -> None:
        # The apiserver's message names the object; ours does not (a warm pod's name is random, and
        # the condition must read the same on every retry so that it makes one Event, not one each).
        super().__init__(f"the apiserver refused the {kind}: {error}")
        self.kind = kind
        self.status = error.status

    @property
    def reason(self) -> str:
        """The condition's and the Event's reason: ``NetworkPolicyRejected``, ``PodRejected``."""
        return f"{self.kind}Rejected"

    @property
    def transient(self) -> bool:
        return self.status in TRANSIENT_STATUSES


async def create(client: KubeClient, kind: str, path: str, body: Json) -> Json | None:
    """:meth:`KubeClient.create` (None when it exists already); a refusal raises :class:`ChildRejected`."""
    try:
        return await client.create(path, body)
    except KubeApiError as exc:
        raise ChildRejected(kind, exc) from exc
