"""The mutating webhook as a pure function: AdmissionReview in, JSONPatch out (table tests)."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable
from typing import Any

import jsonpatch
import pytest

from voltgrid.api import constants
from voltgrid.webhooks import contract, mutate
from voltgrid.webhooks.review import AdmissionRequest, json_patch, parse_review, review_response

NS = "team-a"


def make_pod(
    *,
    session: str | None = "s1",
    function: str | None = "fn",
    claim: str | None = "sessions",
    mount_path: str | None = None,
    containers: list[dict[str, Any]] | None = None,
    pod_security: dict[str, Any] | None = None,
    extra_annotations: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    labels = {"voltgrid.dev/managed": "true"}
    if session is not None:
        labels["voltgrid.dev/session"] = session
    if function is not None:
        labels["voltgrid.dev/function"] = function
    annotations = dict(extra_annotations or {})
    if claim is not None:
        annotations[constants.ANNOTATION_STORAGE_CLAIM] = claim
    if mount_path is not None:
        annotations[constants.ANNOTATION_STORAGE_MOUNT_PATH] = mount_path
    pod_spec: dict[str, Any] = {"containers": containers or [{"name": "app", "image": "img"}], **spec}
    if pod_security is not None:
        pod_spec["securityContext"] = pod_security
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "fn-", "labels": labels, "annotations": annotations},
        "spec": pod_spec,
    }


def review_body(pod: dict[str, Any], operation: str = "CREATE") -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {"uid": "u-1", "operation": operation, "namespace": NS, "object": pod},
    }


def admit(pod: dict[str, Any], operation: str = "CREATE") -> dict[str, Any]:
    """Run the webhook as the apiserver would and apply its patch with an independent library."""
    response = review_response("u-1", mutate.review(parse_review(review_body(pod, operation))))["response"]
    assert response["allowed"], response
    if "patch" not in response:
        return pod
    ops = json.loads(base64.b64decode(response["patch"]))
    result: dict[str, Any] = jsonpatch.apply_patch(pod, ops)
    return result


def app(pod: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = pod["spec"]["containers"][0]
    return container


def test_session_pod_gets_mount_env_and_hardening() -> None:
    out = admit(make_pod(mount_path="/work"))
    assert out["spec"]["volumes"] == [{"name": "voltgrid-session", "persistentVolumeClaim": {"claimName": "sessions"}}]
    assert app(out)["volumeMounts"] == [{"name": "voltgrid-session", "mountPath": "/work", "subPath": "team-a/fn/s1"}]
    assert app(out)["env"] == [
        {"name": "VOLTGRID_SESSION_ID", "value": "s1"},
        {"name": "VOLTGRID_FUNCTION", "value": "fn"},
        {"name": "VOLTGRID_STORAGE_DIR", "value": "/work"},
    ]
    assert app(out)["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    assert out["spec"]["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}, "runAsNonRoot": True}
    assert out["spec"]["automountServiceAccountToken"] is False


# One row per rule: (pod, JSON pointer-ish getter, expected value).
CASES: list[tuple[str, dict[str, Any], Any]] = [
    ("default mount path", make_pod(), ("mount_path", "/data")),
    ("no claim: no volume", make_pod(claim=None), ("volumes", None)),
    ("no claim: no storage env", make_pod(claim=None), ("env_names", ["VOLTGRID_SESSION_ID", "VOLTGRID_FUNCTION"])),
    ("no session: hardening only", make_pod(session=None, function=None), ("env_names", [])),
    ("no session: no volume", make_pod(session=None), ("volumes", None)),
    ("runAsUser 0 keeps root", make_pod(pod_security={"runAsUser": 0}), ("run_as_non_root", None)),
    (
        "container runAsUser 0 keeps root",
        make_pod(containers=[{"name": "app", "image": "i", "securityContext": {"runAsUser": 0}}]),
        ("run_as_non_root", None),
    ),
    ("runAsNonRoot false kept", make_pod(pod_security={"runAsNonRoot": False}), ("run_as_non_root", False)),
    (
        "annotation opts out of non-root",
        make_pod(extra_annotations={contract.ANNOTATION_RUN_AS_ROOT: "true"}),
        ("run_as_non_root", None),
    ),
    ("runAsUser 1000 is non-root", make_pod(pod_security={"runAsUser": 1000}), ("run_as_non_root", True)),
    (
        "Unconfined seccomp replaced",
        make_pod(pod_security={"seccompProfile": {"type": "Unconfined"}}),
        ("seccomp", {"type": "RuntimeDefault"}),
    ),
    (
        "Localhost seccomp kept",
        make_pod(pod_security={"seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}}),
        ("seccomp", {"type": "Localhost", "localhostProfile": "p.json"}),
    ),
    (
        "added capabilities trimmed",
        make_pod(
            containers=[
                {"name": "app", "securityContext": {"capabilities": {"add": ["SYS_ADMIN", "NET_BIND_SERVICE"]}}}
            ]
        ),
        ("caps", {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}),
    ),
    (
        "privileged switched off",
        make_pod(containers=[{"name": "app", "securityContext": {"privileged": True}}]),
        ("privileged", False),
    ),
    (
        "user env of the same name replaced",
        make_pod(
            containers=[{"name": "app", "env": [{"name": "VOLTGRID_SESSION_ID", "value": "forged"}, {"name": "A"}]}]
        ),
        ("env", [{"name": "A"}, {"name": "VOLTGRID_SESSION_ID", "value": "s1"}]),
    ),
    (
        "existing session volume replaced",
        make_pod(volumes=[{"name": "voltgrid-session", "hostPath": {"path": "/"}}]),
        ("volumes", [{"name": "voltgrid-session", "persistentVolumeClaim": {"claimName": "sessions"}}]),
    ),
    (
        "init containers mounted too",
        make_pod(initContainers=[{"name": "restore", "image": "i"}]),
        ("init_subpath", "team-a/fn/s1"),
    ),
]


def _pick(pod: dict[str, Any], what: str) -> Any:
    container = app(pod)
    spec = pod["spec"]
    getters: dict[str, Callable[[], Any]] = {
        "mount_path": lambda: container["volumeMounts"][-1]["mountPath"],
        "volumes": lambda: spec.get("volumes"),
        "env_names": lambda: [e["name"] for e in container.get("env", [])],
        "env": lambda: container["env"][:2],
        "run_as_non_root": lambda: spec["securityContext"].get("runAsNonRoot"),
        "seccomp": lambda: spec["securityContext"]["seccompProfile"],
        "caps": lambda: container["securityContext"]["capabilities"],
        "privileged": lambda: container["securityContext"]["privileged"],
        "init_subpath": lambda: spec["initContainers"][0]["volumeMounts"][0]["subPath"],
    }
    return getters[what]()


@pytest.mark.parametrize(("pod", "expected"), [(p, e) for _, p, e in CASES], ids=[case[0] for case in CASES])
def test_rules(pod: dict[str, Any], expected: tuple[str, Any]) -> None:
    what, value = expected
    assert _pick(admit(pod), what) == value


@pytest.mark.parametrize(("pod", "expected"), [(p, e) for _, p, e in CASES], ids=[case[0] for case in CASES])
def test_idempotent(pod: dict[str, Any], expected: tuple[str, Any]) -> None:
    once = admit(pod)
    assert mutate.mutate(once, NS) == once
    assert json_patch(once, mutate.mutate(once, NS)) == []
    twice = admit(once)  # what a reinvocation (reinvocationPolicy IfNeeded) would do
    assert twice == once


def test_patch_reproduces_mutate_and_leaves_input_alone() -> None:
    pod = make_pod(initContainers=[{"name": "init"}], volumes=[{"name": "cfg", "configMap": {"name": "c"}}])
    before = copy.deepcopy(pod)
    assert admit(pod) == mutate.mutate(pod, NS)
    assert pod == before


@pytest.mark.parametrize(
    ("pod", "message"),
    [
        (make_pod(session="Bad_Id"), "is not a valid session id"),
        (make_pod(session="-s"), "is not a valid session id"),
        (make_pod(function=None), "needs label voltgrid.dev/function"),
        (make_pod(function="Fn.x"), "is not a DNS label"),
        (make_pod(mount_path="/data/../etc"), "without '..'"),
        (make_pod(mount_path="relative"), "must be an absolute path"),
        (make_pod(mount_path="/"), "other than '/'"),
        (make_pod(claim="Not_A_Claim"), "is not a valid claim name"),
        (
            make_pod(containers=[{"name": "app", "volumeMounts": [{"name": "cache", "mountPath": "/data/"}]}]),
            "container 'app' already mounts volume 'cache' at /data",
        ),
    ],
)
def test_denied(pod: dict[str, Any], message: str) -> None:
    verdict = mutate.review(parse_review(review_body(pod)))
    assert not verdict.allowed
    assert message in verdict.message
    response = review_response("u-1", verdict)["response"]
    assert response["status"]["code"] == 403 and message in response["status"]["message"]


@pytest.mark.parametrize("operation", ["UPDATE", "DELETE", "CONNECT"])
def test_only_create_is_mutated(operation: str) -> None:
    verdict = mutate.review(parse_review(review_body(make_pod(), operation)))
    assert verdict.allowed and verdict.patch == ()


def test_namespace_from_request_when_pod_has_none() -> None:
    request = AdmissionRequest(uid="u", operation="CREATE", namespace="", object=make_pod() | {"metadata": {
        "namespace": "other", "labels": {"voltgrid.dev/session": "s", "voltgrid.dev/function": "f"},
        "annotations": {constants.ANNOTATION_STORAGE_CLAIM: "c"}}})  # fmt: skip
    ops = mutate.review(request).patch
    assert any(op.get("value") == [{"name": "voltgrid-session", "mountPath": "/data", "subPath": "other/f/s"}]
               for op in ops)  # fmt: skip


def _session_pod(volumes: list[dict[str, Any]], mounts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "metadata": {
            "labels": {"voltgrid.dev/managed": "true", "voltgrid.dev/function": "f", "voltgrid.dev/session": "s"},
            "annotations": {constants.ANNOTATION_STORAGE_CLAIM: "claim"},
        },
        "spec": {"containers": [{"name": "app", "image": "i", "volumeMounts": mounts}], "volumes": volumes},
    }


TOKEN_VOLUME = {
    "name": "kube-api-access-x7k2p",
    "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}, {"configMap": {"name": "kube-root-ca.crt"}}]},
}
TOKEN_MOUNT = {"name": "kube-api-access-x7k2p", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}


def test_the_injected_token_volume_and_its_mount_are_removed() -> None:
    out = mutate.mutate(_session_pod([TOKEN_VOLUME], [TOKEN_MOUNT]), "ns")
    assert [v["name"] for v in out["spec"]["volumes"]] == ["voltgrid-session"]
    assert [m["mountPath"] for m in out["spec"]["containers"][0]["volumeMounts"]] == ["/data"]
    assert out["spec"]["automountServiceAccountToken"] is False


def test_a_writers_own_volume_of_the_claim_is_merged_not_doubled() -> None:
    mine = [{"name": "mine", "persistentVolumeClaim": {"claimName": "claim"}}]
    out = mutate.mutate(_session_pod(mine, [{"name": "mine", "mountPath": "/data", "subPath": "ns/f/s"}]), "ns")
    assert out["spec"]["volumes"] == [{"name": "voltgrid-session", "persistentVolumeClaim": {"claimName": "claim"}}]
    assert out["spec"]["containers"][0]["volumeMounts"] == [
        {"name": "voltgrid-session", "mountPath": "/data", "subPath": "ns/f/s"}
    ]
    assert mutate.mutate(out, "ns") == out


def test_a_writers_mount_of_another_sessions_directory_is_kept_for_validation_to_refuse() -> None:
    from voltgrid.webhooks import validate  # noqa: PLC0415

    mine = [{"name": "mine", "persistentVolumeClaim": {"claimName": "claim"}}]
    out = mutate.mutate(_session_pod(mine, [{"name": "mine", "mountPath": "/x", "subPath": "ns/f/other"}]), "ns")
    assert len(out["spec"]["volumes"]) == 1
    problems = validate.violations(out, "ns", validate.ValidationPolicy())
    assert problems == [
        "container 'app' (volume 'voltgrid-session') mounts the directory of session 'other' "
        "(subPath 'ns/f/other'), but the pod belongs to session 's'"
    ]
