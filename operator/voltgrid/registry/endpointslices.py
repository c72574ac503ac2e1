"""Gateway membership in a cluster: the ready endpoints of the gateway Service's EndpointSlices.

The Service's EndpointSlices are the one list that Kubernetes already keeps of the live gateway
pods (readiness included), so ownership follows it: a replica that dies or turns unready drops
out, and rendezvous hashing moves only its sessions. This is a read-only watch; nothing is written.
It runs on the access layer's one LIST+WATCH loop (:class:`voltgrid.registry.kubeapi.Reflector`):
listed once, then watched with bookmarks from the last version; relisted only on 410 Gone, an error
or a silent connection, when slices deleted meanwhile drop out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from voltgrid.registry.kubeapi import KubeApi, Reflector
from voltgrid.registry.ownership import Membership

SERVICE_NAME_LABEL: Final = "kubernetes.io/service-name"


def members_from_slices(slices: Iterable[Mapping[str, Any]], port_name: str | None, scheme: str = "http") -> set[str]:
    """Base URLs (``scheme://ip:port``) of the ready endpoints of serialized EndpointSlices."""
    members: set[str] = set()
    for s in slices:
        ports = [p for p in s.get("ports") or [] if port_name is None or p.get("name") == port_name]
        if not ports or ports[0].get("port") is None:
            continue
        port = ports[0]["port"]
        for endpoint in s.get("endpoints") or []:
            ready = (endpoint.get("conditions") or {}).get("ready")
            if ready is False:
                continue
            for address in endpoint.get("addresses") or []:
                host = f"[{address}]" if ":" in address else address
                members.add(f"{scheme}://{host}:{port}")
    return members


class EndpointSliceWatcher:
    """Keeps a :class:`Membership` equal to the Service's ready endpoints (list, then watch)."""

    def __init__(
        self,
        membership: Membership,
        api: KubeApi,
        *,
        namespace: str,
        service: str,
        port_name: str | None = None,
        expand: Callable[[str], list[str]] | None = None,
    ) -> None:
        self._membership = membership
        self._port_name = port_name
        #: A replica's URL to its ring members (several when each replica runs several workers).
        self._expand = expand
        self._slices: dict[str, dict[str, Any]] = {}
        self._reflector = Reflector(
            api,
            f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
            self._handle,
            name="EndpointSlices",
            params={"labelSelector": f"{SERVICE_NAME_LABEL}={service}"},
            listed=self._apply,
        )

    def _apply(self) -> None:
        members = members_from_slices(self._slices.values(), self._port_name)
        if self._expand is not None:
            members = {member for url in members for member in self._expand(url)}
        if members:
            self._membership.set_members(members)

    async def _handle(self, event_type: str | None, obj: dict[str, Any]) -> None:
        name = str((obj.get("metadata") or {}).get("name") or "")
        if event_type == "DELETED":
            self._slices.pop(name, None)
        else:
            self._slices[name] = obj
        if event_type is not None:  # a listed slice: applied once the whole list is in
            self._apply()

    async def run(self) -> None:
        """Run until cancelled."""
        await self._reflector.run()
