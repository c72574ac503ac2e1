"""AdmissionReview (admission.k8s.io/v1) in, AdmissionReview out — and JSONPatch as a diff.

Why the patch is a diff: the mutating webhook is written as a pure function *pod → desired pod*, so
idempotence is a property of ordinary code (``mutate(mutate(p)) == mutate(p)``), and the JSONPatch the
apiserver needs is derived here by comparing the two objects. Lists are patched index by index while
their lengths agree and replaced whole otherwise, which keeps patches small and always applicable to
the exact object the apiserver sent.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Final, Literal, NotRequired, TypedDict

from voltgrid.errors import VoltgridError

ADMISSION_API_VERSION: Final = "admission.k8s.io/v1"


class ReviewError(VoltgridError):
    """The request body is not an AdmissionReview we can answer (HTTP 400)."""


class JsonPatchOp(TypedDict):
    op: Literal["add", "remove", "replace"]
    path: str
    value: NotRequired[Any]


@dataclass(frozen=True)
class AdmissionRequest:
    """The parts of ``AdmissionReview.request`` the webhooks read."""

    uid: str
    operation: str
    namespace: str
    object: dict[str, Any] | None
    sub_resource: str = ""
    #: ``request.resource.resource``: "pods", "persistentvolumeclaims".
    resource: str = ""
    #: The object's name (for CONNECT, the pod's: the object is then PodExecOptions or alike).
    name: str = ""
    #: ``request.oldObject`` on UPDATE.
    old_object: dict[str, Any] | None = None
    #: ``request.userInfo.username``: who asked (the trust model is decided from it).
    username: str = ""


@dataclass(frozen=True)
class Verdict:
    """A webhook's answer: allowed or not (with a message), and for mutations the patch."""

    allowed: bool
    message: str = ""
    patch: tuple[JsonPatchOp, ...] = ()


def parse_review(body: object) -> AdmissionRequest:
    """Read an AdmissionReview v1 body; ReviewError says what is wrong with it."""
    if not isinstance(body, dict):
        raise ReviewError("body must be a JSON object (an AdmissionReview)")
    if body.get("apiVersion") != ADMISSION_API_VERSION or body.get("kind") != "AdmissionReview":
        raise ReviewError(f"expected kind AdmissionReview, apiVersion {ADMISSION_API_VERSION}")
    request = body.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str) or not request["uid"]:
        raise ReviewError("AdmissionReview.request.uid is missing")
    obj, old = request.get("object"), request.get("oldObject")
    if obj is not None and not isinstance(obj, dict):
        raise ReviewError("AdmissionReview.request.object must be an object")
    if old is not None and not isinstance(old, dict):
        raise ReviewError("AdmissionReview.request.oldObject must be an object")
    resource, user = request.get("resource"), request.get("userInfo")
    return AdmissionRequest(
        uid=request["uid"],
        operation=str(request.get("operation", "")),
        namespace=str(request.get("namespace") or ""),
        object=obj,
        sub_resource=str(request.get("subResource") or ""),
        resource=str(resource.get("resource") or "") if isinstance(resource, dict) else "",
        name=str(request.get("name") or ""),
        old_object=old,
        username=str(user.get("username") or "") if isinstance(user, dict) else "",
    )


def review_response(uid: str, verdict: Verdict) -> dict[str, Any]:
    """The AdmissionReview the apiserver expects back (patch base64-encoded, JSONPatch type)."""
    response: dict[str, Any] = {"uid": uid, "allowed": verdict.allowed}
    if not verdict.allowed:
        response["status"] = {"code": 403, "reason": "Forbidden", "message": verdict.message}
    if verdict.patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(list(verdict.patch)).encode()).decode()
    return {"apiVersion": ADMISSION_API_VERSION, "kind": "AdmissionReview", "response": response}


def _pointer(path: str, key: str | int) -> str:
    return f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}"


def json_patch(old: Any, new: Any, path: str = "") -> list[JsonPatchOp]:
    """The JSONPatch (RFC 6902) that turns ``old`` into ``new``; empty when they are equal."""
    if old == new:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        ops: list[JsonPatchOp] = []
        for key in old:
            if key not in new:
                ops.append({"op": "remove", "path": _pointer(path, key)})
        for key, value in new.items():
            if key not in old:
                ops.append({"op": "add", "path": _pointer(path, key), "value": value})
            else:
                ops.extend(json_patch(old[key], value, _pointer(path, key)))
        return ops
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [op for i, (a, b) in enumerate(zip(old, new, strict=True)) for op in json_patch(a, b, _pointer(path, i))]
    return [{"op": "replace", "path": path, "value": new}]
