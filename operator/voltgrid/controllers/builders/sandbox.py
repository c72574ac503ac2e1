"""Sandbox builders: expiry, phase and endpoint from the pod, the egress NetworkPolicy, and the
records of a Sandbox bound from a template's pool.

Egress is denied by default: the policy selects the sandbox's pod and allows only the allow-list
(plus DNS to any resolver when ``allowDNS``). Ingress is left to the namespace's own policies.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, Final

from voltgrid.api import constants, podspec
from voltgrid.api.common import parse_duration
from voltgrid.api.pool import (
    ANNOTATION_CLAIMED_AT,
    ANNOTATION_EXPIRES,
    ANNOTATION_METADATA,
    ANNOTATION_TOKEN_SHA256,
    LABEL_CLAIMED,
    LABEL_TEMPLATE,
    LABEL_TEMPLATE_HASH,
    SANDBOX_API_PREFIX,
)
from voltgrid.api.sandbox import NetworkPolicySpec, Sandbox, SandboxPhase
from voltgrid.api.sandboxtemplate import SandboxTemplate, SandboxTemplateSpec
from voltgrid.controllers.builders.pods import PodInfo

Json = dict[str, Any]

DNS_PORT: Final = 53
_PHASES: Final = {
    "Pending": SandboxPhase.PENDING,
    "Running": SandboxPhase.RUNNING,
    "Succeeded": SandboxPhase.SUCCEEDED,
    "Failed": SandboxPhase.FAILED,
}


def network_policy_name(sandbox: str) -> str:
    return podspec.bounded_name(sandbox, "egress")


def expiry(sandbox: Sandbox, started: datetime | None) -> datetime | None:
    """When the sandbox expires: ``expiresAt``, or ``ttl`` after it started (else after creation)."""
    if sandbox.spec.expires_at is not None:
        return sandbox.spec.expires_at
    if sandbox.spec.ttl is None:
        return None
    origin = started or sandbox.metadata.creation_timestamp
    return None if origin is None else origin + parse_duration(sandbox.spec.ttl)


def delete_after(expired_at: datetime, grace: float) -> datetime:
    return expired_at + timedelta(seconds=grace)


def phase_of(pod: PodInfo | None) -> SandboxPhase:
    if pod is None:
        return SandboxPhase.PENDING
    if pod.phase == "Running" and not pod.ready:
        return SandboxPhase.PENDING
    return _PHASES.get(pod.phase, SandboxPhase.PENDING)


def endpoint(pod: PodInfo | None) -> str | None:
    """``podIP:port`` of the sandbox's served port, once the pod has an IP."""
    if pod is None or not pod.pod_ip or pod.port is None:
        return None
    host = f"[{pod.pod_ip}]" if ":" in pod.pod_ip else pod.pod_ip
    return f"{host}:{pod.port}"


def network_policy(sandbox: Sandbox) -> Json:
    """The NetworkPolicy that confines the sandbox's egress to its allow-list."""
    meta = sandbox.metadata
    assert meta.name and meta.namespace and meta.uid  # checked by build_sandbox_pod before
    egress = _egress(sandbox.spec.network)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": network_policy_name(meta.name),
            "namespace": meta.namespace,
            "labels": {constants.LABEL_MANAGED: podspec.MANAGED, constants.LABEL_SANDBOX: meta.name},
            "ownerReferences": [podspec.owner_reference("Sandbox", meta.name, meta.uid)],
        },
        "spec": {
            "podSelector": {
                "matchLabels": {constants.LABEL_SANDBOX: meta.name, constants.LABEL_ROLE: str(podspec.Role.SANDBOX)}
            },
            "policyTypes": ["Egress"],
            "egress": egress,
        },
    }


def _egress(net: NetworkPolicySpec) -> list[Json]:
    """Egress rules of an allow-list: nothing is allowed that it does not name."""
    egress: list[Json] = []
    for rule in net.egress:
        entry: Json = {"to": [{"ipBlock": {"cidr": rule.cidr}}]}
        if rule.ports:
            entry["ports"] = [{"protocol": proto, "port": port} for port in rule.ports for proto in ("TCP", "UDP")]
        egress.append(entry)
    if net.allow_dns:
        egress.append({"ports": [{"protocol": "UDP", "port": DNS_PORT}, {"protocol": "TCP", "port": DNS_PORT}]})
    return egress


def pool_network_policy(template: SandboxTemplate, revision: str) -> Json:
    """The NetworkPolicy of one revision of a template's pool pods, warm or claimed.

    One per revision (named after its hash), so a change of the allow-list applies to the new pods
    while claimed pods keep the policy they were claimed under; all go with the template.
    """
    meta = template.metadata
    assert meta.name and meta.namespace and meta.uid  # checked by build_pool_pod before
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": podspec.bounded_name(meta.name, "pool", revision),
            "namespace": meta.namespace,
            "labels": {constants.LABEL_MANAGED: podspec.MANAGED, LABEL_TEMPLATE: meta.name},
            "ownerReferences": [podspec.owner_reference("SandboxTemplate", meta.name, meta.uid)],
        },
        "spec": {
            "podSelector": {"matchLabels": {LABEL_TEMPLATE: meta.name, LABEL_TEMPLATE_HASH: revision}},
            "policyTypes": ["Egress"],
            "egress": _egress(template.spec.network),
        },
    }


# -- a Sandbox bound from a SandboxTemplate's pool (``templateRef``) ------------------------------


def bound_expiry(sandbox: Sandbox, template: SandboxTemplateSpec, bound_at: datetime) -> datetime:
    """When a sandbox bound from a pool at ``bound_at`` expires: its ``expiresAt``, or its ``ttl`` (the
    template's when it sets none) from the binding; never past the template's ``maxTtl``, as a claim
    through the gateway."""
    latest = bound_at + parse_duration(template.max_ttl)
    if sandbox.spec.expires_at is not None:
        return min(sandbox.spec.expires_at, latest)
    return min(bound_at + parse_duration(sandbox.spec.ttl or template.ttl), latest)


def sandbox_url(sandbox_id: str) -> str:
    """The bound sandbox's path on the gateway's Sandbox API (relative: the gateway's address is the
    cluster's business)."""
    return f"{SANDBOX_API_PREFIX}/{sandbox_id}"


def claimed_pod_patch(sandbox: Sandbox, *, expires: datetime, claimed_at: datetime) -> Json:
    """The merge patch that records a pool pod's claim by a ``Sandbox``, as the gateway records its own
    (so that every gateway replica serves it, the pool counts it claimed and burns it once expired)
    plus the Sandbox's label: the operator finds the pod of the Sandbox by it and burns it with it.

    No ownerReference to the Sandbox: the garbage collector deletes a pod only once ALL its owners
    are gone, and the template must stay one (its NetworkPolicy confines the pod's egress and goes
    with it), so the operator deletes the pod itself when the Sandbox goes."""
    meta = sandbox.metadata
    assert meta.name and sandbox.spec.token_sha256  # a validated templateRef Sandbox
    return {
        "metadata": {
            "labels": {LABEL_CLAIMED: "true", constants.LABEL_SANDBOX: meta.name},
            "annotations": {
                ANNOTATION_EXPIRES: f"{expires.timestamp():.3f}",
                ANNOTATION_TOKEN_SHA256: sandbox.spec.token_sha256,
                ANNOTATION_CLAIMED_AT: f"{claimed_at.timestamp():.3f}",
                ANNOTATION_METADATA: json.dumps({"sandbox": meta.name}, separators=(",", ":")),
            },
        }
    }
