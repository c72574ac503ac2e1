"""Kubernetes backend: instances are pods, found and reached through the apiserver.

Interface (the pod contract is in :mod:`voltgrid.controllers`' docstring):

* ``KubernetesBackend(api, pod_builder=instance_pod, ready_timeout=...)`` with a
  ``kubernetes_asyncio.client.ApiClient``; implements :class:`voltgrid.backends.base.InstanceBackend`.
* ``create(function, session_id, warm=False)`` POSTs the pod that ``pod_builder(function, session_id,
  warm)`` returns, waits until it is Ready and returns an ``Instance`` whose ``url`` is
  ``http://<podIP>:<port>`` and whose ``id`` is the pod name. The default builder is the operator's
  own, :func:`voltgrid.api.podspec.build_instance_pod`, so labels, owner references and the runtime
  class cannot drift between the gateway and the operator. Pod names are deterministic
  (``<function>-<session-id>``): a create that answers 409 means another actor (a second gateway
  replica, a retry) already started this session's pod, and it is waited for instead; one still
  terminating (a release just before a wake) is waited out and created anew.
* ``delete(instance)`` deletes the pod (absent is fine); ``list(function="ns/name", session=id)`` is
  ONE pod LIST by label selector and returns the Ready, non-terminating instance pods.
* ``checkpoint(instance, when)`` patches the pod's ``voltgrid.dev/last-active`` annotation (one
  PATCH; the gateway calls it coarsely, never per request).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from voltgrid.api import constants as c
from voltgrid.api import podspec
from voltgrid.api.function import Function
from voltgrid.backends.base import BackendError, Instance, InstanceStartError, function_key
from voltgrid.errors import SpecError

logger = logging.getLogger(__name__)

DEFAULT_READY_TIMEOUT: Final = 120.0
#: Seconds one watch of a starting pod runs before it is re-listed.
WATCH_TIMEOUT_S: Final = 30
HTTP_NOT_FOUND: Final = 404
HTTP_CONFLICT: Final = 409
TERMINAL_PHASES: Final = ("Failed", "Succeeded")
#: Every pod of an instance (sandbox and sandbox-pool pods are Voltgrid pods too, but never instances):
#: named by the roles it has, so a new kind of Voltgrid pod is never taken for an instance.
INSTANCE_SELECTOR: Final = (
    f"{c.LABEL_MANAGED}={podspec.MANAGED},{c.LABEL_ROLE} in ({podspec.Role.INSTANCE},{podspec.Role.WARM})"
)

PodBuilder = Callable[[Function, str, bool], dict[str, Any]]


def instance_pod(function: Function, session_id: str, warm: bool) -> dict[str, Any]:
    """The pod of an instance as the operator builds it, with the runtime the operator chose."""
    role = podspec.Role.WARM if warm else podspec.Role.INSTANCE
    return podspec.build_instance_pod(function, session_id, role=role, runtime_class_name=podspec.runtime_for(function))


def rfc3339(when: float) -> str:
    """Wall-clock seconds as the RFC 3339 UTC text of the ``last-active`` annotation."""
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ready(pod: Any) -> bool:
    status = pod.status
    if status is None or not status.pod_ip or pod.metadata.deletion_timestamp is not None:
        return False
    return any(cond.type == "Ready" and cond.status == "True" for cond in status.conditions or [])


def _last_active(pod: Any) -> float | None:
    text = (pod.metadata.annotations or {}).get(podspec.ANNOTATION_LAST_ACTIVE)
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _to_instance(pod: Any, port: int | None = None) -> Instance:
    labels = pod.metadata.labels or {}
    if port is None:
        ports = [p.container_port for ctr in pod.spec.containers for p in ctr.ports or []]
        port = ports[0] if ports else c.DEFAULT_PORT
    created = pod.metadata.creation_timestamp
    return Instance(
        id=pod.metadata.name,
        function=f"{pod.metadata.namespace}/{labels.get(c.LABEL_FUNCTION, '')}",
        url=f"http://{pod.status.pod_ip}:{port}",
        session=labels.get(c.LABEL_SESSION, ""),
        warm=labels.get(c.LABEL_ROLE) == podspec.Role.WARM,
        created=created.timestamp() if created else 0.0,
        labels=dict(labels),
        last_active=_last_active(pod),
    )


class KubernetesBackend:
    """Instances as pods (see the module docstring for the interface and the labels)."""

    def __init__(
        self,
        api: client.ApiClient,
        *,
        namespace: str | None = None,
        pod_builder: PodBuilder = instance_pod,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
    ) -> None:
        self._api = api
        self._core = client.CoreV1Api(api)
        self._namespace = namespace
        self._build = pod_builder
        self._ready_timeout = ready_timeout

    async def create(self, function: Function, session_id: str, *, warm: bool = False) -> Instance:
        try:
            manifest = self._build(function, session_id, warm)
        except SpecError as e:
            raise InstanceStartError(f"cannot start {function_key(function)}: {e}") from e
        namespace = manifest["metadata"]["namespace"]
        name = manifest["metadata"]["name"]
        created = False
        try:
            async with asyncio.timeout(self._ready_timeout):
                while True:
                    created = await self._post(namespace, manifest) or created
                    instance = await self._wait_ready(namespace, name, function.spec.port)
                    if instance is not None:
                        return instance
        except TimeoutError:
            if created:
                with contextlib.suppress(ApiException):
                    await self._core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
            raise InstanceStartError(f"pod {namespace}/{name} not ready after {self._ready_timeout}s") from None

    async def _post(self, namespace: str, manifest: dict[str, Any]) -> bool:
        """Create the pod; False when it exists already (409: wait for that one)."""
        try:
            await self._core.create_namespaced_pod(namespace, manifest)  # type: ignore[arg-type]
        except ApiException as e:
            if e.status == HTTP_CONFLICT:
                logger.info("pod %s/%s exists already: waiting for it", namespace, manifest["metadata"]["name"])
                return False
            name = manifest["metadata"]["name"]
            raise InstanceStartError(f"cannot create pod {namespace}/{name}: {e.status} {e.reason}") from e
        return True

    async def _wait_ready(self, namespace: str, name: str, port: int) -> Instance | None:
        """The pod once Ready; None once it is gone (it was terminating, or got deleted): create again."""
        selector = f"metadata.name={name}"
        while True:
            listing = await self._core.list_namespaced_pod(namespace, field_selector=selector)
            if not listing.items:
                return None
            pod = listing.items[0]
            if pod.metadata.deletion_timestamp is None:
                if _ready(pod):
                    return _to_instance(pod, port)
                if pod.status and pod.status.phase in TERMINAL_PHASES:
                    with contextlib.suppress(ApiException):
                        await self._core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
                    raise InstanceStartError(f"pod {namespace}/{name} ended ({pod.status.phase}) before ready")
            async with watch.Watch() as w:
                async for event in w.stream(
                    self._core.list_namespaced_pod,
                    namespace,
                    field_selector=selector,
                    resource_version=listing.metadata.resource_version,
                    timeout_seconds=WATCH_TIMEOUT_S,
                ):
                    pod = event["object"]
                    if event["type"] == "DELETED":
                        return None
                    if _ready(pod):
                        return _to_instance(pod, port)
                    if pod.metadata.deletion_timestamp is None and pod.status and pod.status.phase in TERMINAL_PHASES:
                        break  # re-listed above: deleted and reported

    async def delete(self, instance: Instance) -> None:
        namespace = instance.function.split("/", 1)[0]
        try:
            await self._core.delete_namespaced_pod(instance.id, namespace)
        except ApiException as e:
            if e.status != HTTP_NOT_FOUND:
                raise BackendError(f"cannot delete pod {namespace}/{instance.id}: {e.reason}") from e

    async def list(self, function: str | None = None, session: str | None = None) -> list[Instance]:
        selector = [INSTANCE_SELECTOR]
        if function:
            selector.append(f"{c.LABEL_FUNCTION}={function.split('/', 1)[1]}")
        if session:
            selector.append(f"{c.LABEL_SESSION}={session}")
        namespace = function.split("/", 1)[0] if function else self._namespace
        try:
            if namespace:
                listing = await self._core.list_namespaced_pod(namespace, label_selector=",".join(selector))
            else:
                listing = await self._core.list_pod_for_all_namespaces(label_selector=",".join(selector))
        except ApiException as e:
            raise BackendError(f"cannot list instance pods: {e.reason}") from e
        return [_to_instance(pod) for pod in listing.items if _ready(pod)]

    async def checkpoint(self, instance: Instance, when: float) -> None:
        namespace = instance.function.split("/", 1)[0]
        patch = {"metadata": {"annotations": {podspec.ANNOTATION_LAST_ACTIVE: rfc3339(when)}}}
        try:
            await self._core.patch_namespaced_pod(instance.id, namespace, patch)
        except ApiException as e:
            if e.status != HTTP_NOT_FOUND:
                raise BackendError(f"cannot checkpoint pod {namespace}/{instance.id}: {e.reason}") from e
        instance.last_active = when

    async def close(self) -> None:
        await self._api.close()
