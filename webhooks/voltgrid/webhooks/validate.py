"""The validating webhook: storage isolation between sessions, and who may speak for a session.

Why validate what the mutating webhook already builds: the mutating webhook only sees managed pods
(objectSelector) and only at CREATE, while anyone allowed to create pods in the namespace (a tenant
with ``edit``) could write a pod that mounts the shared claim at its root, another session's sub-path,
or the node's disk, or one that carries another session's labels and so gets its directory. This
webhook sees *every* pod in namespaces labelled ``voltgrid.dev/enabled=true`` (CREATE, UPDATE, the
``pods/ephemeralcontainers`` subresource ``kubectl debug`` uses, and CONNECT to ``pods/exec``,
``pods/attach`` and ``pods/portforward``), every claim there, and runs after all mutations.

The trust model is decided from the request's ``userInfo``, never from the pod: only *trusted users*
(Voltgrid's own service accounts: the operator and the gateway, which build session pods from the
API models) may create pods that carry Voltgrid's identity labels or mount a session claim. Everyone
else — a tenant, or the ReplicaSet controller acting for a tenant's Deployment — is refused with a
message, and may not relabel, debug, exec into, attach to or port-forward to a session pod, clone a
session claim, or take the session-storage label off one.

Rules for everyone (each violation names the container and volume; all are reported at once):

* no ``hostPath`` volume; no ``subPath``/``subPathExpr`` that is absolute or has a ``..`` component;
* a session id (``voltgrid.dev/session``) and function (``voltgrid.dev/function``) must be DNS labels;
* a *session volume* — one backed by a session claim (the pod's ``voltgrid.dev/storage-claim``, a
  claim given with ``--session-claim``, a claim a Function or Sandbox in the namespace names in its
  ``storage``, or one labelled ``voltgrid.dev/session-storage=true``) or named ``voltgrid-session`` — may
  be mounted only with the literal ``subPath`` ``<namespace>/<function>/<session-id>`` of the pod's own
  labels: not its root (every session), not ``subPathExpr`` (expands at runtime), not another session's,
  and not a path *below* its own (a session can plant a symlink in its own directory, and the kubelet
  follows it within the volume; the three components of the exact path are directories the kubelet
  creates and no session pod can write).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from voltgrid.api import constants
from voltgrid.webhooks import contract
from voltgrid.webhooks.review import AdmissionRequest, Verdict

_ALL_CONTAINER_LISTS: Final = ("containers", "initContainers", "ephemeralContainers")
#: Labels that make a pod speak for a Function or a session: the gateway adopts pods by them and the
#: mutating webhook mounts a session's directory by them.
IDENTITY_LABELS: Final = (
    constants.LABEL_MANAGED,
    constants.LABEL_FUNCTION,
    constants.LABEL_SESSION,
    constants.LABEL_ROLE,
    constants.LABEL_SANDBOX,
)
#: Pod subresources whose CONNECT reaches into a running pod (and so into its session's files).
CONNECT_SUBRESOURCES: Final = frozenset({"exec", "attach", "portforward"})
PODS: Final = "pods"
CLAIMS: Final = "persistentvolumeclaims"


@dataclass(frozen=True)
class ValidationPolicy:
    """What the validating webhook is configured with."""

    #: Claims that hold session directories in every namespace (the chart's session claim).
    session_claims: frozenset[str] = field(default_factory=frozenset)
    #: Usernames (``system:serviceaccount:<ns>:<name>``) allowed to create session pods.
    trusted_users: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class ClusterFacts:
    """What the server looked up in the cluster for one request (see :func:`lookups_needed`)."""

    #: Claims in the request's namespace that hold session directories (named by a Function's or
    #: Sandbox's ``storage``, or labelled ``voltgrid.dev/session-storage=true``).
    session_claims: frozenset[str] = frozenset()
    #: For CONNECT: the labels of the pod connected to (None: not looked up, or no such pod).
    target_labels: dict[str, str] | None = None


@dataclass(frozen=True)
class Lookups:
    """Which cluster reads a request needs before it can be judged (none for trusted users)."""

    session_claims: bool = False
    target_pod: bool = False


def lookups_needed(request: AdmissionRequest, policy: ValidationPolicy) -> Lookups:
    """Reads are needed only for untrusted users, so Voltgrid's own cold starts never wait on them."""
    if request.username in policy.trusted_users:
        return Lookups()
    if request.operation == "CONNECT":
        return Lookups(target_pod=request.sub_resource in CONNECT_SUBRESOURCES)
    return Lookups(session_claims=request.object is not None)


def _containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for key in _ALL_CONTAINER_LISTS:
        yield from spec.get(key) or []


def _path_problem(path: str) -> str | None:
    if path.startswith("/"):
        return "is an absolute path"
    if ".." in re.split(r"[/\\]", path):
        return "contains '..'"
    return None


def _identity_problems(labels: dict[str, str]) -> list[str]:
    problems = []
    session = labels.get(constants.LABEL_SESSION)
    if session is not None and not re.fullmatch(constants.SESSION_ID_PATTERN, session):
        problems.append(
            f"label {constants.LABEL_SESSION}={session!r} is not a valid session id: use a DNS label "
            "(lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63)"
        )
    function = labels.get(constants.LABEL_FUNCTION)
    if session is not None and function is None:
        problems.append(f"a pod with label {constants.LABEL_SESSION} needs label {constants.LABEL_FUNCTION} too")
    if function is not None and not re.fullmatch(contract.DNS_LABEL_PATTERN, function):
        problems.append(f"label {constants.LABEL_FUNCTION}={function!r} is not a DNS label")
    return problems


def _session_mount_problem(where: str, mount: dict[str, Any], labels: dict[str, str], namespace: str) -> str | None:
    session, function = labels.get(constants.LABEL_SESSION), labels.get(constants.LABEL_FUNCTION)
    if session is None or function is None:
        return f"{where} mounts session storage but the pod has no {constants.LABEL_SESSION} label"
    if mount.get("subPathExpr"):
        return f"{where} uses subPathExpr on session storage; use the literal subPath of its own session"
    own = constants.session_subpath(namespace, function, session)
    sub = str(mount.get("subPath") or "").strip("/")
    if not sub:
        return f"{where} mounts the root of session storage (every session's directory); use subPath {own!r}"
    if sub == own:
        return None
    if sub.startswith(own + "/"):
        return (
            f"{where} mounts {sub!r}, below its session's directory: only {own!r} itself may be mounted "
            "(a path inside it may pass through a link the session wrote)"
        )
    parts = sub.split("/")
    if len(parts) >= 3 and parts[2] != session:
        return (
            f"{where} mounts the directory of session {parts[2]!r} (subPath {sub!r}), "
            f"but the pod belongs to session {session!r}"
        )
    return f"{where} mounts subPath {sub!r} outside its session's directory {own!r}"


def _claim_sources(template_spec: dict[str, Any]) -> Iterator[str]:
    """Claims a claim spec copies from (``dataSource``/``dataSourceRef`` of kind PersistentVolumeClaim)."""
    for key in ("dataSource", "dataSourceRef"):
        source = template_spec.get(key) or {}
        if source.get("kind") == "PersistentVolumeClaim" and not source.get("apiGroup"):
            yield str(source.get("name", ""))


def _untrusted_pod_problems(pod: dict[str, Any], user: str, guarded: set[str], session_volumes: set[str]) -> list[str]:
    """What a pod written by someone other than Voltgrid may not do."""
    labels = dict((pod.get("metadata") or {}).get("labels") or {})
    problems = []
    carried = [f"{key}={labels[key]}" for key in IDENTITY_LABELS if key in labels]
    if carried:
        problems.append(
            f"only Voltgrid's own service accounts may create pods labelled {', '.join(carried)} "
            f"(they speak for a Function or a session); {user or 'this user'} is not one of them"
        )
    for name in sorted(session_volumes):
        problems.append(
            f"volume {name!r} is session storage: only Voltgrid's session pods may mount it, "
            f"{user or 'this user'} may not"
        )
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        template = ((volume.get("ephemeral") or {}).get("volumeClaimTemplate") or {}).get("spec") or {}
        for source in _claim_sources(template):
            if source in guarded:
                problems.append(f"volume {volume.get('name')!r} clones session storage claim {source!r}")
        if template.get("volumeName"):
            problems.append(
                f"volume {volume.get('name')!r} binds PersistentVolume {template['volumeName']!r} by name "
                "in an ephemeral claim; create a PersistentVolumeClaim instead"
            )
    return problems


def violations(
    pod: dict[str, Any],
    namespace: str,
    policy: ValidationPolicy,
    *,
    facts: ClusterFacts = ClusterFacts(),
    user: str | None = None,
) -> list[str]:
    """Every rule the pod breaks, as messages naming the container and volume; empty when allowed.

    ``user`` is the creator of a new pod when it is not a trusted user (None: trusted, or an update).
    """
    meta = pod.get("metadata") or {}
    labels: dict[str, str] = dict(meta.get("labels") or {})
    annotations: dict[str, str] = dict(meta.get("annotations") or {})
    spec = pod.get("spec") or {}
    identity_problems = _identity_problems(labels)
    problems = list(identity_problems)
    guarded = set(policy.session_claims) | set(facts.session_claims)
    if annotations.get(constants.ANNOTATION_STORAGE_CLAIM):
        guarded.add(annotations[constants.ANNOTATION_STORAGE_CLAIM])
    session_volumes: set[str] = set()
    for volume in spec.get("volumes") or []:
        name = volume.get("name", "")
        if "hostPath" in volume:
            path = (volume.get("hostPath") or {}).get("path", "")
            problems.append(f"volume {name!r} is a hostPath ({path}): hostPath volumes are not allowed")
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
        if name == constants.SESSION_VOLUME or (claim is not None and claim in guarded):
            session_volumes.add(name)
    if user is not None:
        problems.extend(_untrusted_pod_problems(pod, user, guarded, session_volumes))
    for container in _containers(spec):
        for mount in container.get("volumeMounts") or []:
            where = f"container {container.get('name')!r} (volume {mount.get('name')!r})"
            for key in ("subPath", "subPathExpr"):
                problem = _path_problem(str(mount.get(key) or ""))
                if problem:
                    problems.append(f"{where}: {key} {mount[key]!r} {problem}")
            if mount.get("name") in session_volumes and not identity_problems:
                problem = _session_mount_problem(where, mount, labels, namespace)
                if problem:
                    problems.append(problem)
    return problems


def _identity(obj: dict[str, Any] | None) -> dict[str, str]:
    labels = ((obj or {}).get("metadata") or {}).get("labels") or {}
    return {key: labels[key] for key in IDENTITY_LABELS if key in labels}


def _untrusted_update_problems(request: AdmissionRequest) -> list[str]:
    old, new = _identity(request.old_object), _identity(request.object)
    problems = []
    if old != new:
        problems.append(
            f"only Voltgrid's own service accounts may change a pod's Voltgrid labels ({old} -> {new}); "
            f"{request.username or 'this user'} is not one of them"
        )
    if request.sub_resource == "ephemeralcontainers" and constants.LABEL_SESSION in old:
        problems.append(
            f"{request.username or 'this user'} may not add containers to session pod {request.name!r} "
            "(they would see the session's files)"
        )
    return problems


def _claim_problems(request: AdmissionRequest, guarded: set[str]) -> list[str]:
    claim = request.object or {}
    problems = []
    for source in _claim_sources(claim.get("spec") or {}):
        if source in guarded:
            problems.append(f"claim {request.name or '?'} clones session storage claim {source!r}")
    old_labels = ((request.old_object or {}).get("metadata") or {}).get("labels") or {}
    new_labels = (claim.get("metadata") or {}).get("labels") or {}
    if (
        old_labels.get(constants.LABEL_SESSION_STORAGE) == "true"
        and new_labels.get(constants.LABEL_SESSION_STORAGE) != "true"
    ):
        problems.append(
            f"only Voltgrid's own service accounts may remove label {constants.LABEL_SESSION_STORAGE} from a "
            "claim that holds session directories"
        )
    return problems


def review(request: AdmissionRequest, policy: ValidationPolicy, facts: ClusterFacts = ClusterFacts()) -> Verdict:
    """The validating webhook's answer to one admission request (``facts`` as :func:`lookups_needed` asked)."""
    trusted = request.username in policy.trusted_users
    namespace = request.namespace or ((request.object or {}).get("metadata") or {}).get("namespace", "")
    problems: list[str] = []
    if request.operation == "CONNECT":
        if (
            not trusted
            and request.sub_resource in CONNECT_SUBRESOURCES
            and constants.LABEL_SESSION in (facts.target_labels or {})
        ):
            problems.append(
                f"{request.username or 'this user'} may not {request.sub_resource} into session pod "
                f"{request.name!r} (it would reach the session's files)"
            )
    elif request.object is None or request.operation not in ("CREATE", "UPDATE"):
        return Verdict(allowed=True)
    elif request.resource == CLAIMS:
        if not trusted:
            problems = _claim_problems(request, set(policy.session_claims) | set(facts.session_claims))
    else:
        creator = None if trusted or request.operation != "CREATE" else request.username
        problems = violations(request.object, namespace, policy, facts=facts, user=creator)
        if not trusted and request.operation == "UPDATE":
            problems.extend(_untrusted_update_problems(request))
    if problems:
        return Verdict(allowed=False, message="voltgrid: request rejected: " + "; ".join(problems))
    return Verdict(allowed=True)
