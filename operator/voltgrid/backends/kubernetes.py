"""Kubernetes backend: instances are pods, found and reached through the apiserver.

Interface (shared with the operator's controllers):

* ``KubernetesBackend(api, pod_builder=instance_pod, ready_timeout=...)`` with a
  ``kubernetes_asyncio.client.ApiClient``; implements :class:`voltgrid.backends.base.InstanceBackend`.
* ``create(function, session_id, warm=False)`` POSTs the pod that ``pod_builder(function, session_id,
  warm)`` returns (default :func:`instance_pod`), watches it until Ready and returns an ``Instance``
  whose ``url`` is ``http://<podIP>:<port>`` and whose ``id`` is the pod name.
* ``delete(instance)`` deletes the pod (absent is fine); ``list(function="ns/name", session=id)`` is
  ONE pod LIST by label selector and returns the Ready pods.

Pods carry the labels of :mod:`voltgrid.api.constants`, written once at creation and never updated:
``voltgrid.dev/managed=true``, ``voltgrid.dev/function=<name>``, ``voltgrid.dev/session=<id>`` and
``voltgrid.dev/role=warm|session``. These labels are how a gateway replica that just took over a
session finds its instance (a LIST, no per-session object) and how the storage webhook picks the
session's sub-path. A warm pod is one created with a pre-minted session id that no client has yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable
from typing import Any, Final

from kubernetes_asyncio import client, watch
from kubernetes_asyncio.client.exceptions import ApiException

from voltgrid.api import constants as c
from voltgrid.api.function import Function
from voltgrid.backends.base import BackendError, Instance, InstanceStartError, function_key

DEFAULT_READY_TIMEOUT: Final = 120.0
HTTP_NOT_FOUND: Final = 404
ROLE_WARM: Final = "warm"
ROLE_SESSION: Final = "session"

PodBuilder = Callable[[Function, str, bool], dict[str, Any]]


def instance_pod(function: Function, session_id: str, warm: bool) -> dict[str, Any]:
    """The pod manifest of one instance of ``function`` for ``session_id`` (pure: spec in, pod out)."""
    meta, spec = function.metadata, function.spec
    labels = {
        c.LABEL_MANAGED: "true",
        c.LABEL_FUNCTION: str(meta.name),
        c.LABEL_SESSION: session_id,
        c.LABEL_ROLE: ROLE_WARM if warm else ROLE_SESSION,
    }
    env = [{"name": e.name, "value": e.value} for e in spec.env]
    env += [{"name": "PORT", "value": str(spec.port)}, {"name": "VOLTGRID_SESSION_ID", "value": session_id}]
    container: dict[str, Any] = {
        "name": "function",
        "image": spec.image,
        "env": env,
        "ports": [{"name": "http", "containerPort": spec.port}],
        "readinessProbe": {"tcpSocket": {"port": spec.port}, "periodSeconds": 1},
        "resources": {
            "requests": {"cpu": spec.resources.cpu, "memory": spec.resources.memory},
            "limits": {"memory": spec.resources.memory},
        },
    }
    if spec.command:
        container["command"] = list(spec.command)
    if spec.args:
        container["args"] = list(spec.args)
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{meta.name}-{secrets.token_hex(4)}"[:63],
            "namespace": meta.namespace or "default",
            "labels": labels,
        },
        "spec": {"containers": [container], "restartPolicy": "Never", "automountServiceAccountToken": False},
    }
    if meta.uid:
        pod["metadata"]["ownerReferences"] = [
            {"apiVersion": c.API_VERSION, "kind": "Function", "name": meta.name, "uid": meta.uid,
             "controller": True, "blockOwnerDeletion": True}
        ]
    if spec.isolation.runtime_class_name:
        pod["spec"]["runtimeClassName"] = spec.isolation.runtime_class_name
    return pod


def _ready(pod: Any) -> bool:
    status = pod.status
    if status is None or not status.pod_ip:
        return False
    return any(cond.type == "Ready" and cond.status == "True" for cond in status.conditions or [])


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
        warm=labels.get(c.LABEL_ROLE) == ROLE_WARM,
        created=created.timestamp() if created else 0.0,
        labels=dict(labels),
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
        manifest = self._build(function, session_id, warm)
        namespace = manifest["metadata"]["namespace"]
        name = manifest["metadata"]["name"]
        try:
            await self._core.create_namespaced_pod(namespace, manifest)  # type: ignore[arg-type]
        except ApiException as e:
            raise InstanceStartError(f"cannot create pod for {function_key(function)}: {e.reason}") from e
        try:
            async with asyncio.timeout(self._ready_timeout):
                return await self._wait_ready(namespace, name, function.spec.port)
        except TimeoutError:
            with contextlib.suppress(ApiException):
                await self._core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
            raise InstanceStartError(f"pod {namespace}/{name} not ready after {self._ready_timeout}s") from None

    async def _wait_ready(self, namespace: str, name: str, port: int) -> Instance:
        selector = f"metadata.name={name}"
        while True:
            listing = await self._core.list_namespaced_pod(namespace, field_selector=selector)
            for pod in listing.items:
                if _ready(pod):
                    return _to_instance(pod, port)
                if pod.status and pod.status.phase in ("Failed", "Succeeded"):
                    raise InstanceStartError(f"pod {namespace}/{name} ended ({pod.status.phase}) before ready")
            async with watch.Watch() as w:
                async for event in w.stream(
                    self._core.list_namespaced_pod, namespace, field_selector=selector,
                    resource_version=listing.metadata.resource_version, timeout_seconds=30,
                ):
                    pod = event["object"]
                    if event["type"] == "DELETED":
                        raise InstanceStartError(f"pod {namespace}/{name} was deleted before it was ready")
                    if _ready(pod):
                        return _to_instance(pod, port)

    async def delete(self, instance: Instance) -> None:
        namespace = instance.function.split("/", 1)[0]
        try:
            await self._core.delete_namespaced_pod(instance.id, namespace)
        except ApiException as e:
            if e.status != HTTP_NOT_FOUND:
                raise BackendError(f"cannot delete pod {namespace}/{instance.id}: {e.reason}") from e

    async def list(self, function: str | None = None, session: str | None = None) -> list[Instance]:
        selector = [f"{c.LABEL_MANAGED}=true"]
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
        return [_to_instance(pod) for pod in listing.items if _ready(pod) and pod.metadata.deletion_timestamp is None]

    async def close(self) -> None:
        await self._api.close()
