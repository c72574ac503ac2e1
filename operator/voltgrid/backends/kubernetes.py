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
  ONE paged pod LIST by label selector and returns the Ready, non-terminating instance pods.
* Reads go through the access layer (:mod:`voltgrid.registry.kubeapi`): the wait for a starting pod
  is its one LIST+WATCH loop narrowed to that pod's name (410, errors and a silent connection
  relist; a pod deleted meanwhile is noticed), and ``list`` its paged LIST. Writes use the
  ``ApiClient``.
* ``checkpoint(instance, when)`` patches the pod's ``voltgrid.dev/last-active`` annotation (one
  PATCH; the gateway calls it coarsely, never per request).
* Every method raises :class:`~voltgrid.backends.base.ControlPlaneUnavailableError` when the
  apiserver cannot be reached (connection refused or reset, no answer) or answers "try later"
  (:data:`RETRY_LATER_STATUSES`): the caller may retry, nothing half-done is left behind that a
  retry does not find (pod names are deterministic).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from voltgrid.api import constants, podspec
from voltgrid.api.function import Function
from voltgrid.backends.base import (
    BackendError,
    ControlPlaneUnavailableError,
    Instance,
    InstanceStartError,
    function_key,
)
from voltgrid.errors import SpecError
from voltgrid.registry.kubeapi import ConfigurationCredentials, KubeApi, KubeApiError, Reflector

logger = logging.getLogger(__name__)

DEFAULT_READY_TIMEOUT: Final = 120.0
USER_AGENT: Final = "voltgrid-gateway"
HTTP_NOT_FOUND: Final = 404
HTTP_CONFLICT: Final = 409
TERMINAL_PHASES: Final = ("Failed", "Succeeded")
#: Every pod of an instance (sandbox and sandbox-pool pods are Voltgrid pods too, but never instances):
#: named by the roles it has, so a new kind of Voltgrid pod is never taken for an instance.
_INSTANCE_ROLES: Final = f"{podspec.Role.INSTANCE},{podspec.Role.WARM}"
INSTANCE_SELECTOR: Final = f"{constants.LABEL_MANAGED}={podspec.MANAGED},{constants.LABEL_ROLE} in ({_INSTANCE_ROLES})"

#: Apiserver answers that mean "try again later": throttled, overloaded, or a proxy in front of it
#: that lost it (a restarting apiserver behind a load balancer).
RETRY_LATER_STATUSES: Final = frozenset({429, 500, 502, 503, 504})

PodBuilder = Callable[[Function, str, bool], dict[str, Any]]
Json = dict[str, Any]


@contextlib.contextmanager
def control_plane(action: str) -> Iterator[None]:
    """Turn "the apiserver is unreachable or asks to retry" raised inside into :class:`ControlPlaneUnavailableError`."""
    try:
        yield
    except (ApiException, KubeApiError) as e:
        if e.status in RETRY_LATER_STATUSES:
            raise ControlPlaneUnavailableError(f"the apiserver answered {e.status} {e.reason} to {action}") from e
        raise
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError) as e:
        raise ControlPlaneUnavailableError(f"cannot reach the apiserver to {action}: {type(e).__name__}") from e


def instance_pod(function: Function, session_id: str, warm: bool) -> dict[str, Any]:
    """The pod of an instance as the operator builds it, with the runtime the operator chose."""
    role = podspec.Role.WARM if warm else podspec.Role.INSTANCE
    return podspec.build_instance_pod(function, session_id, role=role, runtime_class_name=podspec.runtime_for(function))


def rfc3339(when: float) -> str:
    """Wall-clock seconds as the RFC 3339 UTC text of the ``last-active`` annotation."""
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ready(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    if not status.get("podIP") or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return any(cond.get("type") == "Ready" and cond.get("status") == "True" for cond in status.get("conditions") or [])


def _terminal(pod: Mapping[str, Any]) -> str | None:
    """The phase of a pod that ended on its own (not one being deleted), else None."""
    phase = (pod.get("status") or {}).get("phase")
    deleting = (pod.get("metadata") or {}).get("deletionTimestamp")
    return str(phase) if phase in TERMINAL_PHASES and not deleting else None


def _timestamp(text: Any) -> float | None:
    """RFC 3339 text (the apiserver's, or the ``last-active`` annotation) as epoch seconds."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _to_instance(pod: Mapping[str, Any], port: int | None = None) -> Instance:
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    if port is None:
        containers = (pod.get("spec") or {}).get("containers") or []
        ports = [p["containerPort"] for ctr in containers for p in ctr.get("ports") or [] if "containerPort" in p]
        port = ports[0] if ports else constants.DEFAULT_PORT
    return Instance(
        id=meta.get("name", ""),
        function=f"{meta.get('namespace', '')}/{labels.get(constants.LABEL_FUNCTION, '')}",
        url=f"http://{(pod.get('status') or {}).get('podIP')}:{port}",
        session=labels.get(constants.LABEL_SESSION, ""),
        warm=labels.get(constants.LABEL_ROLE) == podspec.Role.WARM,
        created=_timestamp(meta.get("creationTimestamp")) or 0.0,
        labels=dict(labels),
        last_active=_timestamp((meta.get("annotations") or {}).get(podspec.ANNOTATION_LAST_ACTIVE)),
    )


class _PodWait:
    """What the wait for one starting pod has seen: the Instance once Ready, None once the pod is gone
    (create it again), :class:`InstanceStartError` once it ended; and whether the apiserver failed."""

    def __init__(self, backend: KubernetesBackend, namespace: str, name: str, port: int) -> None:
        self._backend, self.namespace, self.name, self._port = backend, namespace, name, port
        self.outcome: asyncio.Future[Instance | None] = asyncio.get_running_loop().create_future()
        self.failures = 0
        self._listed_pod = False

    async def handle(self, event_type: str | None, pod: Json) -> None:
        if self.outcome.done():
            return
        if event_type is None:
            self._listed_pod = True
        if event_type == "DELETED":
            self.outcome.set_result(None)
        elif _ready(pod):
            self.outcome.set_result(_to_instance(pod, self._port))
        elif phase := _terminal(pod):
            await self._backend.delete_pod(self.namespace, self.name)
            where = f"{self.namespace}/{self.name}"
            self.outcome.set_exception(InstanceStartError(f"pod {where} ended ({phase}) before ready"))

    def listed(self) -> None:
        if not self._listed_pod and not self.outcome.done():
            self.outcome.set_result(None)  # not there (any more): create it again
        self._listed_pod = False

    def relisting(self, reason: str) -> None:
        if reason in ("error", "silence"):
            self.failures += 1


class KubernetesBackend:
    """Instances as pods (see the module docstring for the interface and the labels)."""

    def __init__(
        self,
        api: client.ApiClient,
        *,
        kube: KubeApi | None = None,
        namespace: str | None = None,
        pod_builder: PodBuilder = instance_pod,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
    ) -> None:
        self._api = api
        self._core = client.CoreV1Api(api)
        #: The access layer's client for reads (the caller's, shared with its watchers, or our own).
        self._kube = kube or KubeApi(ConfigurationCredentials(api.configuration), user_agent=USER_AGENT)
        self._owns_kube = kube is None
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
        wait: _PodWait | None = None
        try:
            async with asyncio.timeout(self._ready_timeout):
                while True:
                    with control_plane(f"create pod {namespace}/{name}"):
                        created = await self._post(namespace, manifest) or created
                    wait = _PodWait(self, namespace, name, function.spec.port)
                    instance = await self._wait_ready(wait)
                    if instance is not None:
                        return instance
        except TimeoutError:
            if created:
                await self.delete_pod(namespace, name)
            if wait is not None and wait.failures:  # not the pod's fault: the apiserver could not be followed
                raise ControlPlaneUnavailableError(
                    f"lost the apiserver while waiting for pod {namespace}/{name}"
                ) from None
            raise InstanceStartError(f"pod {namespace}/{name} not ready after {self._ready_timeout}s") from None

    async def _post(self, namespace: str, manifest: dict[str, Any]) -> bool:
        """Create the pod; False when it exists already (409: wait for that one)."""
        try:
            await self._core.create_namespaced_pod(namespace, manifest)  # type: ignore[arg-type]
        except ApiException as e:
            if e.status == HTTP_CONFLICT:
                logger.info("pod %s/%s exists already: waiting for it", namespace, manifest["metadata"]["name"])
                return False
            if e.status in RETRY_LATER_STATUSES:
                raise
            name = manifest["metadata"]["name"]
            raise InstanceStartError(f"cannot create pod {namespace}/{name}: {e.status} {e.reason}") from e
        return True

    async def _wait_ready(self, wait: _PodWait) -> Instance | None:
        """The pod once Ready; None once it is gone (it was terminating, or got deleted): create again."""
        namespace, name = wait.namespace, wait.name
        reflector = Reflector(
            self._kube,
            f"/api/v1/namespaces/{namespace}/pods",
            wait.handle,
            name=f"pod {namespace}/{name}",
            params={"fieldSelector": f"metadata.name={name}"},
            listed=wait.listed,
            relisting=wait.relisting,
        )
        following = asyncio.create_task(reflector.run(), name=f"voltgrid-wait {namespace}/{name}")
        try:
            return await wait.outcome
        finally:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following

    async def delete_pod(self, namespace: str, name: str) -> None:
        """Delete a pod at once (one that ended before Ready, or a start that timed out); gone is fine."""
        with contextlib.suppress(ApiException):
            await self._core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)

    async def delete(self, instance: Instance) -> None:
        namespace = instance.function.split("/", 1)[0]
        try:
            with control_plane(f"delete pod {namespace}/{instance.id}"):
                await self._core.delete_namespaced_pod(instance.id, namespace)
        except ApiException as e:
            if e.status != HTTP_NOT_FOUND:
                raise BackendError(f"cannot delete pod {namespace}/{instance.id}: {e.reason}") from e

    async def list(self, function: str | None = None, session: str | None = None) -> list[Instance]:
        selector = [INSTANCE_SELECTOR]
        if function:
            selector.append(f"{constants.LABEL_FUNCTION}={function.split('/', 1)[1]}")
        if session:
            selector.append(f"{constants.LABEL_SESSION}={session}")
        namespace = function.split("/", 1)[0] if function else self._namespace
        path = f"/api/v1/namespaces/{namespace}/pods" if namespace else "/api/v1/pods"
        try:
            with control_plane("list instance pods"):
                pods = await self._kube.list(path, {"labelSelector": ",".join(selector)})
        except KubeApiError as e:
            raise BackendError(f"cannot list instance pods: {e.reason}") from e
        return [_to_instance(pod) for pod in pods if _ready(pod)]

    async def checkpoint(self, instance: Instance, when: float) -> None:
        namespace = instance.function.split("/", 1)[0]
        patch = {"metadata": {"annotations": {podspec.ANNOTATION_LAST_ACTIVE: rfc3339(when)}}}
        try:
            with control_plane(f"checkpoint pod {namespace}/{instance.id}"):
                await self._core.patch_namespaced_pod(instance.id, namespace, patch)
        except ApiException as e:
            if e.status != HTTP_NOT_FOUND:
                raise BackendError(f"cannot checkpoint pod {namespace}/{instance.id}: {e.reason}") from e
        instance.last_active = when

    async def close(self) -> None:
        if self._owns_kube:
            await self._kube.close()
        await self._api.close()
