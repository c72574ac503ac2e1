"""The mutating webhook: per-session storage mount, session env and hardening for Voltgrid pods.

Why a webhook and not only the pod builder: the pod builder (controllers) already knows the claim and
the session, but a pod reaches the apiserver from more than one writer (the operator, a warm-pool
refill, a user's ``kubectl debug``, a GitOps tool re-creating a Sandbox), and other mutating webhooks
may add containers after ours. Putting the mount and the hardening at admission makes them hold for
every pod the apiserver stores, whoever wrote it; the webhook is registered with
``reinvocationPolicy: IfNeeded``, which is safe because :func:`mutate` is idempotent.

What the pod builder writes (see :mod:`voltgrid.webhooks.contract`): labels ``voltgrid.dev/managed``,
``voltgrid.dev/function``, ``voltgrid.dev/session``; annotations ``voltgrid.dev/storage-claim`` and
``voltgrid.dev/storage-mount-path``. What this module adds, for every container and init container:

* the volume ``voltgrid-session`` (the claim) mounted at the mount path with
  ``subPath: <namespace>/<function>/<session-id>`` — the pod sees its own session's directory only; a
  volume the writer already gave the same claim (under any name) is merged into it;
* no service-account token: the ``kube-api-access-*`` projected volume and its mounts are removed;
* env ``VOLTGRID_SESSION_ID``, ``VOLTGRID_FUNCTION`` and (with storage) ``VOLTGRID_STORAGE_DIR``;
* hardening: ``allowPrivilegeEscalation: false``, ``privileged: false``, capabilities ``drop: [ALL]``
  (only ``NET_BIND_SERVICE`` may stay added), seccomp ``RuntimeDefault`` (a ``Localhost`` profile is
  kept), ``automountServiceAccountToken: false``, and ``runAsNonRoot: true`` unless the pod asks for
  uid 0 (``runAsUser: 0`` or ``runAsNonRoot: false`` anywhere) or carries ``voltgrid.dev/run-as-root``.

Managed pods without a session label (session-less functions) get the hardening only. A pod whose
session or function label is not a DNS label, or whose storage annotations are unusable, is denied
with a message: building a path from it would be wrong either way.
"""

from __future__ import annotations

import copy
import posixpath
import re
from typing import Any, Final

from voltgrid.api import constants
from voltgrid.webhooks import contract
from voltgrid.webhooks.review import AdmissionRequest, Verdict, json_patch

#: The only capability a hardened container may keep adding (the restricted Pod Security Standard's rule).
ALLOWED_ADDED_CAPABILITIES: Final = frozenset({"NET_BIND_SERVICE"})
_CONTAINER_LISTS: Final = ("containers", "initContainers")


class MutationError(ValueError):
    """The pod cannot be mutated as written; the message is shown to whoever created the pod."""


def _labels(pod: dict[str, Any]) -> dict[str, str]:
    return dict(pod.get("metadata", {}).get("labels") or {})


def _annotations(pod: dict[str, Any]) -> dict[str, str]:
    return dict(pod.get("metadata", {}).get("annotations") or {})


def session_identity(pod: dict[str, Any]) -> tuple[str, str] | None:
    """``(function, session id)`` of a session pod, None for a pod without a session label.

    Raises MutationError when either label is missing or is not a DNS label.
    """
    labels = _labels(pod)
    session = labels.get(constants.LABEL_SESSION)
    if session is None:
        return None
    if not re.fullmatch(contract.DNS_LABEL_PATTERN, session):
        raise MutationError(
            f"label {constants.LABEL_SESSION}={session!r} is not a valid session id: use a DNS label "
            "(lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63)"
        )
    function = labels.get(constants.LABEL_FUNCTION)
    if function is None:
        raise MutationError(f"a pod with label {constants.LABEL_SESSION} needs label {constants.LABEL_FUNCTION} too")
    if not re.fullmatch(contract.DNS_LABEL_PATTERN, function):
        raise MutationError(f"label {constants.LABEL_FUNCTION}={function!r} is not a DNS label")
    return function, session


def storage_mount(pod: dict[str, Any]) -> tuple[str, str] | None:
    """``(claim, mount path)`` from the pod's annotations, None when it asks for no storage."""
    annotations = _annotations(pod)
    claim = annotations.get(constants.ANNOTATION_STORAGE_CLAIM)
    if not claim:
        return None
    if not re.fullmatch(r"[a-z0-9]([-.a-z0-9]*[a-z0-9])?", claim) or len(claim) > 253:
        raise MutationError(f"annotation {constants.ANNOTATION_STORAGE_CLAIM}={claim!r} is not a valid claim name")
    path = annotations.get(constants.ANNOTATION_STORAGE_MOUNT_PATH) or constants.DEFAULT_STORAGE_MOUNT_PATH
    if not path.startswith("/") or ".." in path.split("/") or posixpath.normpath(path) == "/":
        raise MutationError(
            f"annotation {constants.ANNOTATION_STORAGE_MOUNT_PATH}={path!r} must be an absolute path "
            "other than '/' without '..'"
        )
    return claim, path


def _wants_root(pod: dict[str, Any]) -> bool:
    if _annotations(pod).get(contract.ANNOTATION_RUN_AS_ROOT, "").lower() == "true":
        return True
    spec = pod.get("spec", {})
    contexts = [spec.get("securityContext") or {}]
    contexts += [ctr.get("securityContext") or {} for key in _CONTAINER_LISTS for ctr in spec.get(key) or []]
    return any(ctx.get("runAsUser") == 0 or ctx.get("runAsNonRoot") is False for ctx in contexts)


def _set_env(container: dict[str, Any], env: dict[str, str]) -> None:
    kept = [var for var in container.get("env") or [] if var.get("name") not in env]
    container["env"] = kept + [{"name": name, "value": value} for name, value in env.items()]


def _set_mount(container: dict[str, Any], mount: dict[str, str]) -> None:
    """The session's mount at the mount path, replacing one of the session volume there; the writer's
    mounts of that volume elsewhere stay for the validating webhook to judge (and name)."""
    target = posixpath.normpath(mount["mountPath"])
    mounts = [
        m
        for m in container.get("volumeMounts") or []
        if not (m.get("name") == constants.SESSION_VOLUME and posixpath.normpath(m.get("mountPath", "")) == target)
    ]
    for other in mounts:
        if other.get("name") == constants.SESSION_VOLUME:
            continue
        if posixpath.normpath(other.get("mountPath", "")) == posixpath.normpath(mount["mountPath"]):
            raise MutationError(
                f"container {container.get('name')!r} already mounts volume {other.get('name')!r} at "
                f"{mount['mountPath']}, where the session storage goes "
                f"(annotation {constants.ANNOTATION_STORAGE_MOUNT_PATH})"
            )
    container["volumeMounts"] = [*mounts, mount]


def _harden_container(container: dict[str, Any]) -> None:
    ctx = container.setdefault("securityContext", {})
    ctx["allowPrivilegeEscalation"] = False
    if ctx.get("privileged"):
        ctx["privileged"] = False
    caps = ctx.setdefault("capabilities", {})
    caps["drop"] = ["ALL"]
    if "add" in caps:
        caps["add"] = [cap for cap in caps["add"] if cap in ALLOWED_ADDED_CAPABILITIES]
        if not caps["add"]:
            del caps["add"]
    if (ctx.get("seccompProfile") or {}).get("type") == "Unconfined":
        ctx["seccompProfile"] = {"type": "RuntimeDefault"}


def _harden_pod(pod: dict[str, Any]) -> None:
    spec = pod.setdefault("spec", {})
    spec["automountServiceAccountToken"] = False
    ctx = spec.setdefault("securityContext", {})
    if (ctx.get("seccompProfile") or {}).get("type") in (None, "Unconfined"):
        ctx["seccompProfile"] = {"type": "RuntimeDefault"}
    if not _wants_root(pod):
        ctx["runAsNonRoot"] = True


def _is_token_volume(volume: dict[str, Any]) -> bool:
    """The service-account token volume the apiserver injects (``kube-api-access-*``): a projected
    volume with a ``serviceAccountToken`` source."""
    sources = (volume.get("projected") or {}).get("sources") or []
    return any("serviceAccountToken" in source for source in sources)


def _drop_volumes(spec: dict[str, Any], containers: list[dict[str, Any]], names: set[str]) -> None:
    if not names:
        return
    spec["volumes"] = [v for v in spec.get("volumes") or [] if v.get("name") not in names]
    for container in containers:
        if "volumeMounts" in container:
            container["volumeMounts"] = [m for m in container["volumeMounts"] if m.get("name") not in names]


def _rename_mounts(containers: list[dict[str, Any]], names: set[str]) -> None:
    for container in containers:
        for mount in container.get("volumeMounts") or []:
            if mount.get("name") in names:
                mount["name"] = constants.SESSION_VOLUME


def mutate(pod: dict[str, Any], namespace: str) -> dict[str, Any]:
    """The pod as it should be stored (a new object); idempotent: ``mutate(mutate(p)) == mutate(p)``.

    Raises MutationError when the pod's session labels or storage annotations are unusable.
    """
    out = copy.deepcopy(pod)
    identity = session_identity(out)
    storage = storage_mount(out) if identity else None
    spec = out.setdefault("spec", {})
    containers = [ctr for key in _CONTAINER_LISTS for ctr in spec.get(key) or []]
    # The apiserver's ServiceAccount admission injected the token volume before we run (setting
    # automountServiceAccountToken below comes too late for it): remove the volume and its mounts.
    _drop_volumes(spec, containers, {v.get("name", "") for v in spec.get("volumes") or [] if _is_token_volume(v)})
    if identity:
        function, session = identity
        env = {constants.ENV_SESSION_ID: session, constants.ENV_FUNCTION: function}
        if storage:
            claim, mount_path = storage
            # One volume for the claim: a writer's own volume of it (under any name) is merged into
            # ours and its mounts renamed (two volumes of one claim leave the pod in ContainerCreating).
            same_claim = {
                v.get("name", "")
                for v in spec.get("volumes") or []
                if v.get("name") == constants.SESSION_VOLUME
                or (v.get("persistentVolumeClaim") or {}).get("claimName") == claim
            }
            _rename_mounts(containers, same_claim)
            _drop_volumes(spec, [], same_claim)
            spec.setdefault("volumes", []).append(
                {"name": constants.SESSION_VOLUME, "persistentVolumeClaim": {"claimName": claim}}
            )
            subpath = constants.session_subpath(namespace, function, session)
            for container in containers:
                _set_mount(container, {"name": constants.SESSION_VOLUME, "mountPath": mount_path, "subPath": subpath})
            env[constants.ENV_STORAGE_DIR] = mount_path
        for container in containers:
            _set_env(container, env)
    for container in containers:
        _harden_container(container)
    _harden_pod(out)
    return out


def review(request: AdmissionRequest) -> Verdict:
    """The mutating webhook's answer to one admission request."""
    # CREATE only: a pod's volumes and containers are immutable afterwards, so a patch on UPDATE
    # could only fail the update; the validating webhook guards UPDATEs instead.
    if request.object is None or request.operation != "CREATE":
        return Verdict(allowed=True)
    namespace = request.namespace or request.object.get("metadata", {}).get("namespace", "")
    try:
        desired = mutate(request.object, namespace)
    except MutationError as exc:
        return Verdict(allowed=False, message=f"voltgrid: {exc}")
    return Verdict(allowed=True, patch=tuple(json_patch(request.object, desired)))
