"""The validating webhook as a pure function: every forbidden mount, with the message it gets."""

from __future__ import annotations

from typing import Any

import pytest

from voltgrid.webhooks import mutate, validate
from voltgrid.webhooks.review import AdmissionRequest

NS = "team-a"
POLICY = validate.ValidationPolicy(session_claims=frozenset({"shared-sessions"}))


def pod(
    mounts: list[dict[str, Any]] | None = None,
    volumes: list[dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    container_list: str = "containers",
) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": "i"}]}
    spec.setdefault(container_list, [{"name": "app", "image": "i"}])[0]["volumeMounts"] = mounts or []
    spec["volumes"] = volumes or []
    return {"metadata": {"labels": labels or {}, "annotations": annotations or {}}, "spec": spec}


SESSION = {"voltgrid.dev/managed": "true", "voltgrid.dev/function": "fn", "voltgrid.dev/session": "s1"}
CLAIM = [{"name": "store", "persistentVolumeClaim": {"claimName": "shared-sessions"}}]
ANNOTATED = {"voltgrid.dev/storage-claim": "my-claim"}
MY_CLAIM = [{"name": "store", "persistentVolumeClaim": {"claimName": "my-claim"}}]


def mount(**fields: Any) -> dict[str, Any]:
    return {"name": "store", "mountPath": "/data", **fields}


ALLOWED = [
    ("plain pod", pod()),
    ("own session dir", pod([mount(subPath="team-a/fn/s1")], CLAIM, SESSION)),
    ("below own session dir", pod([mount(subPath="team-a/fn/s1/cache")], CLAIM, SESSION)),
    ("annotated claim, own dir", pod([mount(subPath="team-a/fn/s1")], MY_CLAIM, SESSION, ANNOTATED)),
    ("other claim, any subPath", pod([mount(subPath="x/y")], [{"name": "store", "emptyDir": {}}], SESSION)),
    ("other claim at root", pod([mount()], [{"name": "store", "persistentVolumeClaim": {"claimName": "models"}}])),
    ("subPathExpr on other volume", pod([mount(subPathExpr="$(POD_NAME)")], [{"name": "store", "emptyDir": {}}])),
    ("dots inside a name", pod([mount(subPath="a..b/c")], [{"name": "store", "emptyDir": {}}])),
]

DENIED = [
    ("hostPath", pod(volumes=[{"name": "host", "hostPath": {"path": "/var/run"}}]),
     "volume 'host' is a hostPath (/var/run)"),
    ("dotdot", pod([mount(subPath="a/../b")], [{"name": "store", "emptyDir": {}}]),
     "container 'app' (volume 'store'): subPath 'a/../b' contains '..'"),
    ("absolute", pod([mount(subPath="/etc")], [{"name": "store", "emptyDir": {}}]),
     "subPath '/etc' is an absolute path"),
    ("dotdot in subPathExpr", pod([mount(subPathExpr="$(X)/..")], [{"name": "store", "emptyDir": {}}]),
     "subPathExpr '$(X)/..' contains '..'"),
    ("another session", pod([mount(subPath="team-a/fn/s2")], CLAIM, SESSION),
     "container 'app' (volume 'store') mounts the directory of session 's2'"),
    ("another session via annotation", pod([mount(subPath="team-a/fn/s2")], MY_CLAIM, SESSION, ANNOTATED),
     "but the pod belongs to session 's1'"),
    ("another namespace", pod([mount(subPath="team-b/fn/s1")], CLAIM, SESSION),
     "subPath 'team-b/fn/s1' outside its session's directory 'team-a/fn/s1'"),
    ("function dir", pod([mount(subPath="team-a/fn")], CLAIM, SESSION),
     "outside its session's directory"),
    ("claim root", pod([mount()], CLAIM, SESSION),
     "mounts the root of session storage"),
    ("subPathExpr on session storage", pod([mount(subPathExpr="team-a/fn/$(SID)")], CLAIM, SESSION),
     "uses subPathExpr on session storage"),
    ("session storage without a session", pod([mount(subPath="team-a/fn/s1")], CLAIM),
     "mounts session storage but the pod has no voltgrid.dev/session label"),
    ("reserved volume name", pod([mount(name="voltgrid-session", subPath="team-a/fn/s9")],
                                 [{"name": "voltgrid-session", "persistentVolumeClaim": {"claimName": "x"}}], SESSION),
     "(volume 'voltgrid-session') mounts the directory of session 's9'"),
    ("init container", pod([mount(subPath="team-a/fn/s2")], CLAIM, SESSION, container_list="initContainers"),
     "container 'app' (volume 'store') mounts the directory of session 's2'"),
    ("ephemeral container", pod([mount()], CLAIM, SESSION, container_list="ephemeralContainers"),
     "mounts the root of session storage"),
    ("bad session id", pod(labels=SESSION | {"voltgrid.dev/session": "UPPER"}),
     "label voltgrid.dev/session='UPPER' is not a valid session id"),
    ("session id too long", pod(labels=SESSION | {"voltgrid.dev/session": "a" * 64}), "is not a valid session id"),
    ("session without function", pod(labels={"voltgrid.dev/session": "s1"}), "needs label voltgrid.dev/function"),
    ("bad function", pod(labels=SESSION | {"voltgrid.dev/function": "a_b"}), "is not a DNS label"),
]  # fmt: skip


@pytest.mark.parametrize("case", ALLOWED, ids=[c[0] for c in ALLOWED])
def test_allowed(case: tuple[str, dict[str, Any]]) -> None:
    assert validate.violations(case[1], NS, POLICY) == []


@pytest.mark.parametrize("case", DENIED, ids=[c[0] for c in DENIED])
def test_denied(case: tuple[str, dict[str, Any], str]) -> None:
    _, obj, message = case
    problems = validate.violations(obj, NS, POLICY)
    assert len(problems) == 1, problems
    assert message in problems[0]
    verdict = validate.review(AdmissionRequest(uid="u", operation="CREATE", namespace=NS, object=obj), POLICY)
    assert not verdict.allowed and message in verdict.message


def test_all_problems_reported_at_once() -> None:
    obj = pod([mount(subPath="../x")], [*CLAIM, {"name": "h", "hostPath": {"path": "/"}}], SESSION)
    assert len(validate.violations(obj, NS, POLICY)) == 3  # hostPath, '..', outside own dir


def test_mutated_pods_pass_validation() -> None:
    obj = pod(labels=SESSION, annotations=ANNOTATED)
    assert validate.violations(mutate.mutate(obj, NS), NS, validate.ValidationPolicy()) == []


def test_relabelling_a_running_pod_to_another_session_is_denied() -> None:
    stored = mutate.mutate(pod(labels=SESSION, annotations=ANNOTATED), NS)
    stored["metadata"]["labels"]["voltgrid.dev/session"] = "s2"
    verdict = validate.review(AdmissionRequest(uid="u", operation="UPDATE", namespace=NS, object=stored), POLICY)
    assert not verdict.allowed and "mounts the directory of session 's1'" in verdict.message


def test_delete_is_allowed() -> None:
    assert validate.review(AdmissionRequest(uid="u", operation="DELETE", namespace=NS, object=None), POLICY).allowed
