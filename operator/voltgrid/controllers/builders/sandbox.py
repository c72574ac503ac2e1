"""Sandbox builders: expiry, phase and endpoint from the pod, and the egress NetworkPolicy.

Egress is denied by default: the policy selects the sandbox's pod and allows only the allow-list
(plus DNS to any resolver when ``allowDNS``). Ingress is left to the namespace's own policies.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Final

from voltgrid.api import constants, podspec
from voltgrid.api.common import parse_duration
from voltgrid.api.pool import LABEL_TEMPLATE, LABEL_TEMPLATE_HASH
from voltgrid.api.sandbox import NetworkPolicySpec, Sandbox, SandboxPhase
from voltgrid.api.sandboxtemplate import SandboxTemplate
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
