"""Table tests of the API models: defaults, and one clear error per kind of bad input."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from voltgrid.api import Function, Sandbox, Session
from voltgrid.api.common import parse_duration
from voltgrid.api.function import Affinity

#: A token's SHA-256 as a templateRef Sandbox carries it (``printf %s "$TOKEN" | sha256sum``).
DIGEST = hashlib.sha256(b"a token").hexdigest()


def fn(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "echo"}, "spec": {"image": "localhost/voltgrid/python:3.11", **spec}}


def test_function_defaults() -> None:
    f = Function.model_validate(fn())
    assert f.spec.port == 8080
    assert f.spec.sessions.affinity is Affinity.HEADER
    assert f.spec.sessions.idle_timeout == "15m"
    assert f.spec.sessions.max_lifetime == "6h"
    assert f.spec.scaling.min_instances == 0
    assert f.spec.isolation.policy == ["kata-fc", "kata-clh", "kata-qemu", "gvisor"]
    assert f.spec.isolation.allow_unsandboxed is False
    assert f.to_wire()["spec"]["sessions"]["sessionsPerInstance"] == 1


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("30s", 30), ("15m", 900), ("1h30m", 5400), ("1.5h", 5400), ("24h", 86400)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "15", "m", "1d", "-5m", "15 m", "1h 2m"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


BAD_FUNCTIONS = [
    ({"sessions": {"idleTimeout": "forever"}}, "idleTimeout"),
    ({"sessions": {"affinity": "Sticky"}}, "affinity"),
    ({"sessions": {"maxLifetime": "25h"}}, "maxLifetime must be at most 24h"),
    ({"sessions": {"idleTimeout": "2h", "maxLifetime": "1h"}}, "idleTimeout must not be longer"),
    ({"sessions": {"sessionsPerInstance": 0}}, "sessionsPerInstance"),
    ({"scaling": {"minInstances": -1}}, "minInstances"),
    ({"scaling": {"minInstances": 5, "maxInstances": 2}}, "minInstances must not exceed maxInstances"),
    ({"scaling": {"warmPool": 20, "maxInstances": 2}}, "warmPool must not exceed maxInstances"),
    ({"port": 70000}, "port"),
    ({"resources": {"gpu": 0.3}}, "gpu"),
    ({"resources": {"memory": "lots"}}, "memory"),
    ({"sessions": {"header": "bad header"}}, "header"),
    ({"sessions": {"preStop": {"path": "no-slash"}}}, "path"),
    ({"storage": {"claimName": "Bad_Name"}}, "claimName"),
    ({"unknownField": 1}, "unknownField"),
]


@pytest.mark.parametrize(("spec", "message"), BAD_FUNCTIONS)
def test_function_rejects(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Function.model_validate(fn(**spec))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"functionRef": "echo", "sessionId": "Not_A_Label"}, "sessionId"),
        ({"functionRef": "echo", "sessionId": "a" * 64}, "sessionId"),
        ({"functionRef": "echo", "idleTimeout": "1y"}, "idleTimeout"),
        ({}, "functionRef"),
    ],
)
def test_session_rejects(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Session.model_validate({"spec": spec})


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({}, "exactly one of image, functionRef and templateRef"),
        ({"image": "x", "functionRef": "echo"}, "exactly one of image, functionRef and templateRef"),
        ({"image": "x", "templateRef": "py", "tokenSha256": DIGEST}, "exactly one of image, functionRef and"),
        ({"functionRef": "f", "templateRef": "py", "tokenSha256": DIGEST}, "exactly one of image, functionRef and"),
        ({"templateRef": "py"}, "templateRef and tokenSha256 go together"),
        ({"image": "x", "tokenSha256": DIGEST}, "templateRef and tokenSha256 go together"),
        ({"templateRef": "py", "tokenSha256": DIGEST.upper()}, "tokenSha256"),
        ({"templateRef": "py", "tokenSha256": DIGEST[:63]}, "tokenSha256"),
        ({"templateRef": "Not_A_Name", "tokenSha256": DIGEST}, "templateRef"),
        ({"templateRef": "py", "tokenSha256": DIGEST, "command": ["sh"]}, "command must be unset"),
        ({"templateRef": "py", "tokenSha256": DIGEST, "args": ["-c"]}, "args must be unset"),
        ({"templateRef": "py", "tokenSha256": DIGEST, "port": 8080}, "port must be unset"),
        ({"templateRef": "py", "tokenSha256": DIGEST, "resources": {"cpu": "2"}}, "resources must be unset"),
        ({"templateRef": "py", "tokenSha256": DIGEST, "isolation": {"allowUnsandboxed": True}}, "isolation must"),
        ({"templateRef": "py", "tokenSha256": DIGEST, "network": {"allowDns": True}}, "network must be unset"),
        ({"templateRef": "py", "tokenSha256": DIGEST, "sessionRef": "s1"}, "sessionRef must be unset"),
        ({"templateRef": "py", "tokenSha256": DIGEST, "env": [{"name": "A.B", "value": "1"}]}, "env names must"),
        ({"image": "x", "ttl": "1h", "expiresAt": "2030-01-01T00:00:00Z"}, "at most one of ttl"),
        ({"image": "x", "storage": {"claimName": "c"}}, "storage needs sessionRef"),
        ({"image": "x", "network": {"egress": [{"cidr": "not-a-cidr"}]}}, "cidr"),
        # The pattern's shape, yet no CIDR: the apiserver would refuse the NetworkPolicy built from it.
        ({"image": "x", "network": {"egress": [{"cidr": "10.0.0.0/99"}]}}, "'10.0.0.0/99' is not a CIDR"),
        ({"image": "x", "network": {"egress": [{"cidr": "300.1.2.3/8"}]}}, "'300.1.2.3/8' is not a CIDR"),
        ({"image": "x", "network": {"egress": [{"cidr": "fd00::/129"}]}}, "'fd00::/129' is not a CIDR"),
    ],
)
def test_sandbox_rejects(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Sandbox.model_validate({"spec": spec})


@pytest.mark.parametrize(
    "spec",
    [
        {"templateRef": "py", "tokenSha256": DIGEST},
        {"templateRef": "py", "tokenSha256": DIGEST, "ttl": "1h", "env": [{"name": "API_KEY", "value": "k"}]},
        {"templateRef": "py", "tokenSha256": DIGEST, "expiresAt": "2030-01-01T00:00:00Z", "deleteAfterExpiry": True},
        # What a stored object holds: the CRD filled in the defaults of the fields refused when set.
        {
            "templateRef": "py",
            "tokenSha256": DIGEST,
            "resources": {"cpu": "100m", "memory": "128Mi", "gpu": 0},
            "isolation": {"policy": ["kata-fc", "kata-clh", "kata-qemu", "gvisor"], "allowUnsandboxed": False},
            "network": {"allowDns": False, "egress": []},
        },
    ],
)
def test_sandbox_from_a_template_accepts(spec: dict[str, Any]) -> None:
    s = Sandbox.model_validate({"spec": spec}).spec
    assert (s.template_ref, s.token_sha256, s.image) == ("py", DIGEST, None)


def test_sandbox_secure_by_default() -> None:
    s = Sandbox.model_validate({"spec": {"image": "localhost/voltgrid/python:3.11"}})
    assert s.spec.isolation.allow_unsandboxed is False
    assert s.spec.network.egress == []
    assert s.spec.network.allow_dns is False


@pytest.mark.parametrize("cidr", ["10.0.0.0/8", "1.1.1.1/32", "10.0.0.1/24", "fd00::/64", "::/0"])
def test_sandbox_accepts_cidrs(cidr: str) -> None:
    spec = Sandbox.model_validate({"spec": {"image": "x", "network": {"egress": [{"cidr": cidr}]}}}).spec
    assert spec.network.egress[0].cidr == cidr


def test_sandbox_crd_checks_cidrs_with_cel() -> None:
    """The CRD refuses what the model refuses: the apiserver evaluates ``isCIDR`` on apply."""
    schema = Sandbox.model_json_schema(by_alias=True, mode="validation")
    rule = schema["$defs"]["EgressRule"]["properties"]["cidr"]["x-kubernetes-validations"]
    assert [r["rule"] for r in rule] == ["isCIDR(self)"]
