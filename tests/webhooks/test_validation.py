"""The validating webhook as a pure function: every forbidden mount, with the message it gets."""

from __future__ import annotations

from typing import Any

import pytest

from voltgrid.webhooks import mutate, validate
from voltgrid.webhooks.review import AdmissionRequest

NS = "team-a"
VOLTGRID = "system:serviceaccount:voltgrid-system:voltgrid-gateway"
TENANT = "system:serviceaccount:team-a:tenant"
POLICY = validate.ValidationPolicy(session_claims=frozenset({"shared-sessions"}), trusted_users=frozenset({VOLTGRID}))


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
    ("below own session dir (a link the session planted)", pod([mount(subPath="team-a/fn/s1/to-b")], CLAIM, SESSION),
     "mounts 'team-a/fn/s1/to-b', below its session's directory: only 'team-a/fn/s1' itself may be mounted"),
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


def request(obj: dict[str, Any] | None, user: str, operation: str = "CREATE", **fields: Any) -> AdmissionRequest:
    return AdmissionRequest(uid="u", operation=operation, namespace=NS, object=obj, username=user, **fields)


#: Claims the server found in the namespace (a Function's storage.claimName, a labelled claim).
FOUND = validate.ClusterFacts(session_claims=frozenset({"fn-sessions"}))
FN_CLAIM = [{"name": "store", "persistentVolumeClaim": {"claimName": "fn-sessions"}}]
EPHEMERAL_CLONE = [
    {
        "name": "copy",
        "ephemeral": {
            "volumeClaimTemplate": {
                "spec": {
                    "dataSource": {"kind": "PersistentVolumeClaim", "name": "fn-sessions"},
                    "accessModes": ["ReadWriteOnce"],
                }
            }
        },
    }
]
EPHEMERAL_BIND = [{"name": "pv", "ephemeral": {"volumeClaimTemplate": {"spec": {"volumeName": "sessions-pv"}}}}]

FUNCTION_ONLY = {"voltgrid.dev/managed": "true", "voltgrid.dev/function": "fn"}
UNTRUSTED_DENIED = [
    ("labels of a session (impersonation)", pod(labels=SESSION),
     "only Voltgrid's own service accounts may create pods labelled"),
    ("a Function's labels (the gateway would adopt it)", pod(labels=FUNCTION_ONLY),
     "voltgrid.dev/managed=true, voltgrid.dev/function=fn"),
    ("a claim a Function names, at its root, no labels", pod([mount()], FN_CLAIM),
     "volume 'store' is session storage: only Voltgrid's session pods may mount it"),
    ("a claim a Function names, another session's sub-path", pod([mount(subPath="team-a/fn/s2")], FN_CLAIM),
     "is session storage"),
    ("subPathExpr on a configured claim", pod([mount(subPathExpr="team-a/fn/$(S)")], CLAIM), "is session storage"),
    ("clone of a session claim in an ephemeral volume", pod(volumes=EPHEMERAL_CLONE),
     "volume 'copy' clones session storage claim 'fn-sessions'"),
    ("binding a volume by name in an ephemeral claim", pod(volumes=EPHEMERAL_BIND),
     "binds PersistentVolume 'sessions-pv' by name"),
]  # fmt: skip


@pytest.mark.parametrize("case", UNTRUSTED_DENIED, ids=[c[0] for c in UNTRUSTED_DENIED])
def test_a_tenant_cannot_create_session_pods(case: tuple[str, dict[str, Any], str]) -> None:
    _, obj, message = case
    verdict = validate.review(request(obj, TENANT), POLICY, FOUND)
    assert not verdict.allowed and message in verdict.message, verdict.message
    assert TENANT in verdict.message or "clones" in verdict.message or "binds" in verdict.message
    # The same pod written by Voltgrid is judged by the mount rules alone.
    if obj["metadata"]["labels"] == SESSION and not obj["spec"]["volumes"]:
        assert validate.review(request(obj, VOLTGRID), POLICY, FOUND).allowed


def test_a_tenant_may_run_ordinary_pods_and_claims() -> None:
    models = [{"name": "store", "persistentVolumeClaim": {"claimName": "models"}}]
    assert validate.review(request(pod([mount()], models), TENANT), POLICY, FOUND).allowed
    assert validate.review(request(pod(), TENANT), POLICY, FOUND).allowed


def test_voltgrid_creates_session_pods() -> None:
    obj = mutate.mutate(pod(labels=SESSION, annotations={"voltgrid.dev/storage-claim": "fn-sessions"}), NS)
    assert validate.review(request(obj, VOLTGRID), POLICY, FOUND).allowed


def test_reads_are_asked_only_for_untrusted_users() -> None:
    assert validate.lookups_needed(request(pod(), VOLTGRID), POLICY) == validate.Lookups()
    assert validate.lookups_needed(request(pod(), TENANT), POLICY) == validate.Lookups(session_claims=True)
    connect = request({"kind": "PodExecOptions"}, TENANT, "CONNECT", sub_resource="exec", name="p")
    assert validate.lookups_needed(connect, POLICY) == validate.Lookups(target_pod=True)


def test_a_tenant_cannot_relabel_a_session_pod_or_its_own_pod() -> None:
    stored = mutate.mutate(pod(labels=SESSION, annotations=ANNOTATED), NS)
    annotated = {**stored, "metadata": {**stored["metadata"], "annotations": {"note": "x"}}}
    assert validate.review(request(annotated, TENANT, "UPDATE", old_object=stored), POLICY).allowed
    own = pod()
    relabelled = pod(labels=SESSION)
    verdict = validate.review(request(relabelled, TENANT, "UPDATE", old_object=own), POLICY)
    assert not verdict.allowed and "may change a pod's Voltgrid labels" in verdict.message


def test_a_tenant_cannot_debug_exec_attach_or_forward_into_a_session_pod() -> None:
    stored = mutate.mutate(pod(labels=SESSION, annotations=ANNOTATED), NS)
    debug = request(stored, TENANT, "UPDATE", old_object=stored, sub_resource="ephemeralcontainers", name="p")
    verdict = validate.review(debug, POLICY)
    assert not verdict.allowed and "may not add containers to session pod 'p'" in verdict.message
    session_pod = validate.ClusterFacts(target_labels=SESSION)
    for kind in ("exec", "attach", "portforward"):
        connect = request({"kind": "PodExecOptions"}, TENANT, "CONNECT", sub_resource=kind, name="p")
        verdict = validate.review(connect, POLICY, session_pod)
        assert not verdict.allowed and f"may not {kind} into session pod 'p'" in verdict.message
        assert validate.review(connect, POLICY, validate.ClusterFacts(target_labels={})).allowed
        trusted = request({"kind": "PodExecOptions"}, VOLTGRID, "CONNECT", sub_resource=kind, name="p")
        assert validate.review(trusted, POLICY, session_pod).allowed


def claim(labels: dict[str, str] | None = None, source: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"]}
    if source:
        spec["dataSourceRef"] = {"kind": "PersistentVolumeClaim", "name": source}
    return {"metadata": {"name": "c", "labels": labels or {}}, "spec": spec}


def test_a_tenant_cannot_clone_a_session_claim_or_unlabel_one() -> None:
    clone = request(claim(source="fn-sessions"), TENANT, resource="persistentvolumeclaims", name="c")
    verdict = validate.review(clone, POLICY, FOUND)
    assert not verdict.allowed and "clones session storage claim 'fn-sessions'" in verdict.message
    labelled = claim({"voltgrid.dev/session-storage": "true"})
    unlabel = request(claim(), TENANT, "UPDATE", resource="persistentvolumeclaims", old_object=labelled, name="c")
    verdict = validate.review(unlabel, POLICY, FOUND)
    assert not verdict.allowed and "may remove label voltgrid.dev/session-storage" in verdict.message
    assert validate.review(request(claim(source="models"), TENANT, resource="persistentvolumeclaims"), POLICY).allowed
