"""Gateway membership in a cluster: the ready endpoints of the gateway Service's EndpointSlices.

The Service's EndpointSlices are the one list that Kubernetes already keeps of the live gateway
pods (readiness included), so ownership follows it: a replica that dies or turns unready drops
out, and rendezvous hashing moves only its sessions. This is a read-only watch; nothing is written.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Final

from kubernetes_asyncio import client, watch

from voltgrid.registry.kubewatch import REQUEST_TIMEOUT_S, WATCH_TIMEOUT_S, WATCH_TIMEOUTS
from voltgrid.registry.ownership import Membership

logger = logging.getLogger(__name__)

#: Seconds between re-lists after a watch ends or fails.
RELIST_BACKOFF: Final = 2.0
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
        api: client.ApiClient,
        *,
        namespace: str,
        service: str,
        port_name: str | None = None,
    ) -> None:
        self._membership = membership
        self._api = api
        self._namespace = namespace
        self._selector = f"{SERVICE_NAME_LABEL}={service}"
        self._port_name = port_name
        self._slices: dict[str, dict[str, Any]] = {}

    def _apply(self) -> None:
        members = members_from_slices(self._slices.values(), self._port_name)
        if members:
            self._membership.set_members(members)

    async def run(self) -> None:
        """Run until cancelled."""
        discovery = client.DiscoveryV1Api(self._api)
        while True:
            try:
                listing = await discovery.list_namespaced_endpoint_slice(
                    self._namespace, label_selector=self._selector, _request_timeout=REQUEST_TIMEOUT_S
                )
                self._slices = {s.metadata.name: self._api.sanitize_for_serialization(s) for s in listing.items}
                self._apply()
                async with watch.Watch() as w:
                    async for event in w.stream(
                        discovery.list_namespaced_endpoint_slice,
                        self._namespace,
                        label_selector=self._selector,
                        resource_version=listing.metadata.resource_version,
                        timeout_seconds=WATCH_TIMEOUT_S,
                        _request_timeout=WATCH_TIMEOUTS,
                    ):
                        obj = event["object"]
                        name = obj.metadata.name
                        if event["type"] == "DELETED":
                            self._slices.pop(name, None)
                        else:
                            self._slices[name] = self._api.sanitize_for_serialization(obj)
                        self._apply()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("EndpointSlice watch failed; re-listing")
            await asyncio.sleep(RELIST_BACKOFF)
