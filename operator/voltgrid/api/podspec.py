"""The ONE builder of Voltgrid pod manifests: instance pods (gateway and operator) and sandbox pods.

Every pod Voltgrid runs is built here, from the API models, so the labels the gateway rebuilds its
registry from, the labels the storage webhook selects on, the owner references that let Kubernetes
garbage-collect pods, and the runtime class that isolates them can never drift between the gateway
(which creates a session's instance on a cold start or wake) and the operator (warm pools,
``minInstances``, keep-warm sessions, sandboxes). The functions are pure: model in, dict out.

Session storage: a pod of a Function (or Sandbox) with ``storage`` gets the claim as the volume
``voltgrid-session``, mounted in its container at ``storage.mountPath`` with the sub-path of its own
session (``<namespace>/<function>/<session-id>``), ``VOLTGRID_STORAGE_DIR`` naming it, and the two storage
annotations. The builder writes the mount itself, so a session's files follow it on every path that
starts a pod for it (a cold start, a warm pod claimed later, a wake after an idle release, a Session
object, a Sandbox) even before the mutating webhook runs; the webhook re-derives the same mount from
the annotations (idempotently) and the validating webhook refuses any other mount of the claim.

Pod names are deterministic (``<owner>-<session-id>``, shortened with a hash when too long), so a
create retried after a crash or by a second actor answers 409 instead of starting a duplicate.
"""

from __future__ import annotations

import hashlib
import secrets
from enum import StrEnum
from typing import Any, Final

from voltgrid.api import constants
from voltgrid.api import gpu as gpu_map
from voltgrid.api.common import EnvVar, Resources
from voltgrid.api.function import Function
from voltgrid.api.pool import LABEL_SANDBOX_ID, LABEL_TEMPLATE, LABEL_TEMPLATE_HASH
from voltgrid.api.sandbox import Sandbox
from voltgrid.api.sandboxtemplate import SandboxTemplate
from voltgrid.api.session import Session
from voltgrid.errors import RuntimeUnavailableError, SpecError

Manifest = dict[str, Any]

#: Annotation: seconds of inactivity after which an unbound instance may be reaped (copied from
#: the Function when the pod is created, so the operator's sweep needs only the pod).
ANNOTATION_IDLE_TIMEOUT: Final = f"{constants.LABEL_PREFIX}idle-timeout"
#: Annotation: RFC 3339 time of the last activity the gateway saw, patched coarsely (see
#: :mod:`voltgrid.controllers`). On a warm pod it also marks the pod as claimed by its session.
ANNOTATION_LAST_ACTIVE: Final = f"{constants.LABEL_PREFIX}last-active"
#: Annotation: the pod belongs to a keep-warm Session object and is never reaped for idleness.
ANNOTATION_KEEP_WARM: Final = f"{constants.LABEL_PREFIX}keep-warm"
#: Label value of ``voltgrid.dev/managed`` on every pod Voltgrid creates.
MANAGED: Final = "true"
#: Container name of the workload in every Voltgrid pod.
CONTAINER_NAME: Final = "main"
#: Suffix of the hash that shortens names beyond the 63-character DNS-label limit.
_HASH_LENGTH: Final = 8
_NAME_LIMIT: Final = 63
#: Prefix of session ids minted for warm pods ("w" keeps them valid DNS labels, easy to spot).
_WARM_ID_PREFIX: Final = "w"


class Role(StrEnum):
    """``voltgrid.dev/role``: what a pod is for."""

    INSTANCE = "instance"  # serves one or more sessions (created for a session by the gateway)
    WARM = "warm"  # pre-started, labelled with a pre-minted session id, unclaimed until touched
    SANDBOX = "sandbox"  # the one pod of a Sandbox
    POOL = "pool"  # a SandboxTemplate's warm sandbox, waiting for one claim (then burnt after use)


def new_session_id() -> str:
    """A fresh session id for a warm pod: a DNS label with 80 random bits."""
    return f"{_WARM_ID_PREFIX}{secrets.token_hex(10)}"


def bounded_name(*parts: str) -> str:
    """``a-b`` when it fits a DNS label, else a prefix of it plus a hash of the whole (stable)."""
    full = "-".join(parts)
    if len(full) <= _NAME_LIMIT:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:_HASH_LENGTH]
    return f"{full[: _NAME_LIMIT - _HASH_LENGTH - 1].rstrip('-')}-{digest}"


def instance_pod_name(function: str, session_id: str) -> str:
    return bounded_name(function, session_id)


def sandbox_pod_name(sandbox: str) -> str:
    return bounded_name(sandbox, "sbx")


def owner_reference(kind: str, name: str, uid: str, *, controller: bool = True) -> Manifest:
    """An ownerReference to a Voltgrid object: deleting the owner garbage-collects the pod."""
    return {
        "apiVersion": constants.API_VERSION,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def gpu_resources(gpu: float) -> dict[str, str]:
    """Extended resources for a GPU request: whole cards as ``nvidia.com/gpu``, fractions as the
    slicer's slice resource (the mapping lives in :mod:`voltgrid.api.gpu`)."""
    try:
        found = gpu_map.slice_resource_for(gpu)
    except ValueError as exc:
        raise SpecError(f"resources.gpu: {exc}") from exc
    return {} if found is None else {found[0]: str(found[1])}


def container_resources(resources: Resources) -> Manifest:
    requests = {"cpu": resources.cpu, "memory": resources.memory}
    limits: dict[str, str] = {"memory": resources.memory}
    extended = gpu_resources(resources.gpu)
    requests.update(extended)
    limits.update(extended)
    return {"requests": requests, "limits": limits}


def _env(env: list[EnvVar], extra: dict[str, str]) -> list[Manifest]:
    out = [{"name": e.name, "value": e.value} for e in env if e.name not in extra]
    out.extend({"name": k, "value": v} for k, v in extra.items())
    return out


def _container(
    image: str,
    command: list[str] | None,
    args: list[str] | None,
    env: list[Manifest],
    *,
    port: int | None,
    resources: Resources,
) -> Manifest:
    container: Manifest = {
        "name": CONTAINER_NAME,
        "image": image,
        "env": env,
        "resources": container_resources(resources),
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    if command:
        container["command"] = list(command)
    if args:
        container["args"] = list(args)
    if port is not None:
        container["ports"] = [{"name": "http", "containerPort": port, "protocol": "TCP"}]
        container["readinessProbe"] = {"tcpSocket": {"port": port}, "periodSeconds": 1, "failureThreshold": 3}
    return container


def _with_storage(pod: Manifest, claim: str, mount_path: str, *, function: str, session_id: str) -> Manifest:
    """``pod`` with the session's directory on ``claim`` mounted at ``mount_path`` in every container."""
    pod["metadata"].setdefault("annotations", {}).update(
        {constants.ANNOTATION_STORAGE_CLAIM: claim, constants.ANNOTATION_STORAGE_MOUNT_PATH: mount_path}
    )
    spec = pod["spec"]
    spec.setdefault("volumes", []).append(
        {"name": constants.SESSION_VOLUME, "persistentVolumeClaim": {"claimName": claim}}
    )
    mount = {
        "name": constants.SESSION_VOLUME,
        "mountPath": mount_path,
        "subPath": constants.session_subpath(pod["metadata"]["namespace"], function, session_id),
    }
    for container in spec["containers"]:
        container.setdefault("volumeMounts", []).append(dict(mount))
        container["env"].append({"name": constants.ENV_STORAGE_DIR, "value": mount_path})
    return pod


def runtime_for(function: Function) -> str | None:
    """The RuntimeClass instance pods of ``function`` run with, as the operator chose it.

    Raises RuntimeUnavailableError when the operator found no sandboxed runtime (or has not
    reconciled the Function yet) and the Function did not opt in to an unsandboxed runtime.
    """
    iso = function.spec.isolation
    chosen = function.status.runtime_class_name if function.status else None
    if chosen:
        return chosen
    if iso.runtime_class_name and function.status is None:
        return iso.runtime_class_name
    if iso.allow_unsandboxed:
        return None
    raise RuntimeUnavailableError(
        f"Function {function.metadata.name}: no sandboxed runtime of {iso.policy} is available"
        " (see its Ready condition); set isolation.allowUnsandboxed to run without one"
    )


def build_instance_pod(
    function: Function,
    session_id: str,
    *,
    role: Role = Role.INSTANCE,
    runtime_class_name: str | None,
    session_owner: Session | None = None,
) -> Manifest:
    """The pod of one instance of ``function``, labelled with ``session_id`` (pre-minted for warm
    pods). The Function is its controller owner; a keep-warm Session object co-owns it."""
    meta = function.metadata
    if not meta.name or not meta.namespace or not meta.uid:
        raise SpecError("the Function needs metadata.name, namespace and uid to own its pods")
    spec = function.spec
    owners = [owner_reference("Function", meta.name, meta.uid)]
    annotations = {ANNOTATION_IDLE_TIMEOUT: spec.sessions.idle_timeout}
    if session_owner is not None and session_owner.metadata.name and session_owner.metadata.uid:
        owners.append(
            owner_reference("Session", session_owner.metadata.name, session_owner.metadata.uid, controller=False)
        )
        if session_owner.spec.keep_warm:
            annotations[ANNOTATION_KEEP_WARM] = "true"
    env = _env(
        spec.env,
        {
            "VOLTGRID_FUNCTION": meta.name,
            "VOLTGRID_SESSION_ID": session_id,
            "PORT": str(spec.port),
        },
    )
    pod_spec: Manifest = {
        "containers": [_container(spec.image, spec.command, spec.args, env, port=spec.port, resources=spec.resources)],
        "restartPolicy": "Always",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
    }
    if runtime_class_name:
        pod_spec["runtimeClassName"] = runtime_class_name
    pod: Manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": instance_pod_name(meta.name, session_id),
            "namespace": meta.namespace,
            "labels": {
                constants.LABEL_MANAGED: MANAGED,
                constants.LABEL_FUNCTION: meta.name,
                constants.LABEL_SESSION: session_id,
                constants.LABEL_ROLE: str(role),
            },
            "annotations": annotations,
            "ownerReferences": owners,
        },
        "spec": pod_spec,
    }
    if spec.storage is not None:
        _with_storage(pod, spec.storage.claim_name, spec.storage.mount_path, function=meta.name, session_id=session_id)
    return pod


def build_sandbox_pod(
    sandbox: Sandbox, *, runtime_class_name: str | None, function: Function | None = None
) -> Manifest:
    """The one pod of a Sandbox; image, command, env and port come from ``functionRef`` when set."""
    meta = sandbox.metadata
    if not meta.name or not meta.namespace or not meta.uid:
        raise SpecError("the Sandbox needs metadata.name, namespace and uid to own its pod")
    spec = sandbox.spec
    if spec.function_ref is not None and function is None:
        raise SpecError(f"Sandbox {meta.name}: functionRef {spec.function_ref} was not resolved")
    base = function.spec if function is not None else None
    image = spec.image or (base.image if base else "")
    command = spec.command or (base.command if base else None)
    args = spec.args or (base.args if base else None)
    port = spec.port if spec.port is not None else (base.port if base else None)
    env_vars = [*(base.env if base else []), *spec.env]
    extra = {"VOLTGRID_SANDBOX": meta.name}
    if spec.session_ref:
        extra["VOLTGRID_SESSION_ID"] = spec.session_ref
    labels = {
        constants.LABEL_MANAGED: MANAGED,
        constants.LABEL_SANDBOX: meta.name,
        constants.LABEL_ROLE: str(Role.SANDBOX),
    }
    if spec.session_ref:
        labels[constants.LABEL_SESSION] = spec.session_ref
    if spec.function_ref:
        labels[constants.LABEL_FUNCTION] = spec.function_ref
    pod_spec: Manifest = {
        "containers": [_container(image, command, args, _env(env_vars, extra), port=port, resources=spec.resources)],
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
    }
    if runtime_class_name:
        pod_spec["runtimeClassName"] = runtime_class_name
    pod: Manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": sandbox_pod_name(meta.name),
            "namespace": meta.namespace,
            "labels": labels,
            "ownerReferences": [owner_reference("Sandbox", meta.name, meta.uid)],
        },
        "spec": pod_spec,
    }
    if spec.storage is not None and spec.session_ref and spec.function_ref:
        # The model requires both with storage: the directory is <namespace>/<functionRef>/<sessionRef>.
        storage = spec.storage
        _with_storage(
            pod, storage.claim_name, storage.mount_path, function=spec.function_ref, session_id=spec.session_ref
        )
    return pod


def build_pool_pod(
    template: SandboxTemplate,
    *,
    suffix: str,
    template_hash: str,
    runtime_class_name: str | None,
    sandbox_id: str,
    claim_key: str,
) -> Manifest:
    """A warm sandbox of ``template``'s pool: the agent, prewarmed, waiting for its one claim.

    The agent gets the gateway's public claim key and the id pre-minted for it (also a label, for the
    gateway to find it): it accepts one claim the gateway signed for that id. Both are public, so a
    literal in the pod spec is fine; the claimant's token reaches the agent only inside the claim.
    ``suffix`` tells the pool's pods apart (the caller draws it); ``template_hash`` is its revision.
    """
    meta = template.metadata
    if not meta.name or not meta.namespace or not meta.uid:
        raise SpecError("the SandboxTemplate needs metadata.name, namespace and uid to own its pods")
    spec = template.spec
    extra = {
        "VOLTGRID_SANDBOX_PORT": str(spec.agent_port),
        "VOLTGRID_SANDBOX_PREWARM": "python",
        "VOLTGRID_SANDBOX_ID": sandbox_id,
        "VOLTGRID_SANDBOX_CLAIM_KEY": claim_key,
    }
    env = _env(spec.env, extra)
    container = _container(spec.image, spec.command, None, env, port=spec.agent_port, resources=spec.resources)
    container["readinessProbe"] = {
        "httpGet": {"path": "/health", "port": spec.agent_port},
        "periodSeconds": 1,
        "failureThreshold": 3,
    }
    pod_spec: Manifest = {
        "containers": [container],
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
    }
    if runtime_class_name:
        pod_spec["runtimeClassName"] = runtime_class_name
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": bounded_name(meta.name, suffix),
            "namespace": meta.namespace,
            "labels": {
                constants.LABEL_MANAGED: MANAGED,
                constants.LABEL_ROLE: str(Role.POOL),
                LABEL_TEMPLATE: meta.name,
                LABEL_TEMPLATE_HASH: template_hash,
                LABEL_SANDBOX_ID: sandbox_id,
            },
            "ownerReferences": [owner_reference("SandboxTemplate", meta.name, meta.uid)],
        },
        "spec": pod_spec,
    }
