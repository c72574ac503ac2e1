"""The validating webhook: storage isolation between sessions in Voltgrid-managed namespaces.

Why validate what the mutating webhook already builds: the mutating webhook only sees managed pods
(objectSelector) and only at CREATE, while anyone allowed to create pods in the namespace could write
a pod that mounts the shared claim at its root, another session's sub-path, or the node's disk. This
webhook sees *every* pod in namespaces labelled ``voltgrid.dev/enabled=true`` (CREATE, UPDATE and the
``pods/ephemeralcontainers`` subresource, which ``kubectl debug`` uses to add a container) and runs
after all mutations, so it judges the pod as it will be stored.

Rules (each violation names the container and volume; all are reported at once):

* no ``hostPath`` volume;
* no ``subPath``/``subPathExpr`` that is absolute or has a ``..`` component, on any volume;
* a session id (``voltgrid.dev/session``) and function (``voltgrid.dev/function``) must be DNS labels;
* a *session volume* — one backed by the pod's ``voltgrid.dev/storage-claim``, by a claim the server
  was told holds session directories (``--session-claim``), or named ``voltgrid-session`` — may be
  mounted only by a pod with a session label, only with a literal ``subPath`` (``subPathExpr`` expands
  at runtime and cannot be judged), and only at or below ``<namespace>/<function>/<session-id>`` of
  that pod's own labels. Mounting it at its root would expose every session.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from voltgrid.api import constants as c
from voltgrid.webhooks import contract as k
from voltgrid.webhooks.review import AdmissionRequest, Verdict

_ALL_CONTAINER_LISTS: Final = ("containers", "initContainers", "ephemeralContainers")


@dataclass(frozen=True)
class ValidationPolicy:
    """What the validating webhook knows beyond the pod itself."""

    #: Claims that hold session directories in every namespace (the chart's session claim).
    session_claims: frozenset[str] = field(default_factory=frozenset)


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
    session = labels.get(c.LABEL_SESSION)
    if session is not None and not re.fullmatch(c.SESSION_ID_PATTERN, session):
        problems.append(
            f"label {c.LABEL_SESSION}={session!r} is not a valid session id: use a DNS label "
            "(lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63)"
        )
    function = labels.get(c.LABEL_FUNCTION)
    if session is not None and function is None:
        problems.append(f"a pod with label {c.LABEL_SESSION} needs label {c.LABEL_FUNCTION} too")
    if function is not None and not re.fullmatch(k.DNS_LABEL_PATTERN, function):
        problems.append(f"label {c.LABEL_FUNCTION}={function!r} is not a DNS label")
    return problems


def _session_mount_problem(where: str, mount: dict[str, Any], labels: dict[str, str], namespace: str) -> str | None:
    session, function = labels.get(c.LABEL_SESSION), labels.get(c.LABEL_FUNCTION)
    if session is None or function is None:
        return f"{where} mounts session storage but the pod has no {c.LABEL_SESSION} label"
    if mount.get("subPathExpr"):
        return f"{where} uses subPathExpr on session storage; use the literal subPath of its own session"
    own = k.session_subpath(namespace, function, session)
    sub = str(mount.get("subPath") or "").strip("/")
    if not sub:
        return f"{where} mounts the root of session storage (every session's directory); use subPath {own!r}"
    if sub == own or sub.startswith(own + "/"):
        return None
    parts = sub.split("/")
    if len(parts) >= 3 and parts[2] != session:
        return (
            f"{where} mounts the directory of session {parts[2]!r} (subPath {sub!r}), "
            f"but the pod belongs to session {session!r}"
        )
    return f"{where} mounts subPath {sub!r} outside its session's directory {own!r}"


def violations(pod: dict[str, Any], namespace: str, policy: ValidationPolicy) -> list[str]:
    """Every rule the pod breaks, as messages naming the container and volume; empty when allowed."""
    meta = pod.get("metadata") or {}
    labels: dict[str, str] = dict(meta.get("labels") or {})
    annotations: dict[str, str] = dict(meta.get("annotations") or {})
    spec = pod.get("spec") or {}
    identity_problems = _identity_problems(labels)
    problems = list(identity_problems)
    session_claims = set(policy.session_claims)
    if annotations.get(k.ANNOTATION_STORAGE_CLAIM):
        session_claims.add(annotations[k.ANNOTATION_STORAGE_CLAIM])
    session_volumes: set[str] = set()
    for volume in spec.get("volumes") or []:
        name = volume.get("name", "")
        if "hostPath" in volume:
            path = (volume.get("hostPath") or {}).get("path", "")
            problems.append(f"volume {name!r} is a hostPath ({path}): hostPath volumes are not allowed")
        claim = (volume.get("persistentVolumeClaim") or {}).get("claimName")
        if name == k.SESSION_VOLUME or (claim is not None and claim in session_claims):
            session_volumes.add(name)
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


def review(request: AdmissionRequest, policy: ValidationPolicy) -> Verdict:
    """The validating webhook's answer to one admission request."""
    if request.object is None or request.operation not in ("CREATE", "UPDATE"):
        return Verdict(allowed=True)
    namespace = request.namespace or request.object.get("metadata", {}).get("namespace", "")
    problems = violations(request.object, namespace, policy)
    if problems:
        return Verdict(allowed=False, message="voltgrid: pod rejected: " + "; ".join(problems))
    return Verdict(allowed=True)
