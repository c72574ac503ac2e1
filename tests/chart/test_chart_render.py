"""Chart render tests: every values case renders, validates strictly against Kubernetes 1.34's schemas,
and keeps the invariants the product promises (non-root, GitOps-clean, least privilege)."""

from __future__ import annotations

import base64
from typing import Any

import kubernetes_validate
import pytest
from chart_render import NAMESPACE, Render

from voltgrid.sandbox_claims import load_signing_key

#: Kinds served by CRDs (ours, kopf's, cert-manager's, the Prometheus Operator's): no built-in schema.
CUSTOM_KINDS = {"ClusterKopfPeering", "KopfPeering", "Issuer", "Certificate", "ServiceMonitor"}
CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration", "RuntimeClass", "ClusterKopfPeering", "CustomResourceDefinition",
}  # fmt: skip
CERT_MANAGER = ["cert-manager.io/v1"]
METRICS = "voltgrid.dev/metrics"

CASES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("defaults", {}, []),
    ("ha", {"operator": {"replicas": 3}, "gateway": {"replicas": 3}, "webhook": {"replicas": 2}}, []),
    ("namespaced-operator-ha", {"operator": {"replicas": 2, "namespaces": ["team-a", "team-b"]}}, []),
    ("operator-namespace-pattern", {"operator": {"namespaces": ["team-*,!team-x"]}}, []),
    ("cert-manager", {"webhook": {"tls": {"mode": "certManager"}}}, CERT_MANAGER),
    (
        "cert-manager-cluster-issuer",
        {
            "webhook": {
                "tls": {"mode": "certManager", "certManager": {"issuerRef": {"name": "ca", "kind": "ClusterIssuer"}}}
            }
        },
        CERT_MANAGER,
    ),
    ("ingress", {"gateway": {"ingress": {"enabled": True, "host": "fn.example.com", "className": "nginx"}}}, []),
    (
        "ingress-tls",
        {
            "gateway": {
                "ingress": {"enabled": True, "host": "fn.example.com", "tls": {"enabled": True, "secretName": "t"}}
            }
        },
        [],
    ),
    ("gpu-slicer", {"gpuSlicer": {"enabled": True, "profiles": ["quarter", "half"]}}, []),
    ("runtime-classes-all", {"runtimeClasses": {"enabled": True}}, []),
    ("runtime-classes-some", {"runtimeClasses": {"enabled": True, "names": ["gvisor"]}}, []),
    ("service-monitor", {"serviceMonitor": {"enabled": True}}, ["monitoring.coreos.com/v1"]),
    ("existing-claim", {"storage": {"existingClaim": "shared-sessions"}}, []),
    ("no-storage", {"storage": {"enabled": False}, "janitor": {"enabled": False}}, []),
    ("no-webhook", {"webhook": {"enabled": False}, "storage": {"enabled": False}, "janitor": {"enabled": False}}, []),
    ("tracing", {"tracing": {"enabled": True, "otlpEndpoint": "http://otel:4317"}}, []),
    (
        "token-secret",
        {"gateway": {"internalToken": {"existingSecret": "mine"}}, "sandboxClaims": {"existingSecret": "keys"}},
        [],
    ),
    ("api-token", {"gateway": {"apiToken": {"existingSecret": "operators"}}}, []),
    ("namespace", {"namespace": {"create": True}}, []),
    ("triggers", {"triggers": {"enabled": True, "secretNamespaces": ["shop", "bank"]}}, []),
]
IDS = [c[0] for c in CASES]


@pytest.fixture(scope="module", params=CASES, ids=IDS)
def rendered(request: pytest.FixtureRequest, render: Render) -> tuple[str, list[dict[str, Any]]]:
    name, values, apis = request.param
    return name, render(values, apis)


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    specs = []
    for d in docs:
        if d["kind"] in ("Deployment", "DaemonSet"):
            specs.append((d["metadata"]["name"], d["spec"]["template"]["spec"]))
        elif d["kind"] == "CronJob":
            specs.append((d["metadata"]["name"], d["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
    return specs


def test_builtin_kinds_validate_strictly(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(doc, "1.34", strict=True)


def test_gitops_clean(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    """No field the apiserver writes or rewrites: status, creationTimestamp, caBundle; namespaces explicit."""
    _, docs = rendered
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        assert "status" not in doc, where
        assert "creationTimestamp" not in doc["metadata"], where
        if doc["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in doc["metadata"], where
        else:
            assert doc["metadata"].get("namespace"), where
        for hook in doc.get("webhooks") or []:
            assert "caBundle" not in hook["clientConfig"], where
        assert "helm.sh/chart" not in (doc["metadata"].get("labels") or {}), where
    # The apiserver drops `value: ""` and `readOnly: false` (omitempty): a client-side apply would then
    # "configure" the object on every run.
    for name, spec in pod_specs(docs):
        for ctr in spec["containers"]:
            assert all(e.get("value", None) != "" for e in ctr.get("env") or []), f'{name}: env value ""'
            assert all(m.get("readOnly", True) for m in ctr.get("volumeMounts") or []), f"{name}: readOnly false"


def test_pods_are_hardened(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    for name, spec in pod_specs(docs):
        pod_sc = spec["securityContext"]
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        # Root only where documented: the device plugin writes the kubelet's root-owned directory, the
        # janitor removes directories owned by any instance's uid (and only with the two file capabilities).
        root_ok = {"gpu-slicer": {"drop": ["ALL"]}, "janitor": {"drop": ["ALL"], "add": ["DAC_OVERRIDE", "FOWNER"]}}
        component = next((c for c in root_ok if c in name), None)
        if component is None:
            assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] != 0, name
        for container in spec["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"] == (root_ok[component] if component else {"drop": ["ALL"]}), name
            assert "privileged" not in sc, name
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"], name
            assert container["image"] == "voltgrid/voltgrid:0.1.0", name
            assert container["args"][0] in {"operator", "gateway", "webhook", "janitor", "gpu-slicer", "triggers"}, name


def test_every_rbac_rule_is_bounded(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    """No wildcards, no escalation verbs; secrets only in the webhook's own namespace, and `get` for the
    trigger dispatcher in the namespaces the values list (broker URLs)."""
    _, docs = rendered
    for doc in by_kind(docs, "ClusterRole") + by_kind(docs, "Role"):
        for rule in doc["rules"]:
            where = f"{doc['kind']}/{doc['metadata']['name']}: {rule}"
            assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"], where
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), where
            if "secrets" in rule["resources"] and doc["metadata"]["name"].endswith("-triggers"):
                assert doc["kind"] == "Role" and rule["verbs"] == ["get"], where
            elif "secrets" in rule["resources"]:
                assert doc["kind"] == "Role" and doc["metadata"]["name"].endswith("-webhook"), where
                assert set(rule["verbs"]) <= {"get", "update", "create"}, where


def env_of(deployment: dict[str, Any]) -> dict[str, str | None]:
    """Each variable's value; one with neither value nor valueFrom is the empty string (Kubernetes' reading)."""
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    return {e["name"]: e.get("value", None if "valueFrom" in e else "") for e in env}


def check_storage_is_guarded(docs: list[dict[str, Any]], pvc: dict[str, Any], webhook: dict[str, Any]) -> None:
    """The claim is guarded by its label, and only this release's operator and gateway are trusted."""
    assert pvc["metadata"]["labels"]["voltgrid.dev/session-storage"] == "true"
    trusted = env_of(webhook)["VOLTGRID_WEBHOOK_TRUSTED_USERS"]
    assert trusted == (
        f"system:serviceaccount:{NAMESPACE}:voltgrid-operator,system:serviceaccount:{NAMESPACE}:voltgrid-gateway"
    )
    sa_names = {d["metadata"]["name"] for d in by_kind(docs, "ServiceAccount")}
    assert {"voltgrid-operator", "voltgrid-gateway"} <= sa_names


def check_control_plane(name: str, docs: list[dict[str, Any]]) -> None:
    kinds = {d["kind"] for d in docs}
    deployments = {d["metadata"]["name"]: d for d in by_kind(docs, "Deployment")}
    operator_env = env_of(deployments["voltgrid-operator"])
    if name == "defaults":
        assert set(deployments) == {"voltgrid-operator", "voltgrid-gateway", "voltgrid-webhook"}
        assert operator_env["VOLTGRID_OPERATOR_PEERING"] == ""
        assert deployments["voltgrid-operator"]["spec"]["strategy"]["type"] == "Recreate"
        assert {"CronJob", "PersistentVolumeClaim", "Secret"} <= kinds
        assert not kinds & {"DaemonSet", "RuntimeClass", "Ingress", "ClusterKopfPeering", "Namespace", "Certificate"}
        pvc = one(docs, "PersistentVolumeClaim", "voltgrid-sessions")
        assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        check_storage_is_guarded(docs, pvc, deployments["voltgrid-webhook"])
    elif name == "ha":
        assert operator_env["VOLTGRID_OPERATOR_PEERING"] == "voltgrid"
        assert one(docs, "ClusterKopfPeering", "voltgrid")
        pdbs = {p["metadata"]["name"] for p in by_kind(docs, "PodDisruptionBudget")}
        assert pdbs == {"voltgrid-gateway", "voltgrid-webhook"}
    elif name == "namespaced-operator-ha":
        peerings = by_kind(docs, "KopfPeering")
        assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
        (container,) = deployments["voltgrid-operator"]["spec"]["template"]["spec"]["containers"]
        assert container["args"] == ["operator", "--namespace", "team-a", "--namespace", "team-b"]
        assert "VOLTGRID_OPERATOR_NAMESPACES" not in operator_env
    elif name == "operator-namespace-pattern":  # one kopf pattern with a comma stays one flag
        (container,) = deployments["voltgrid-operator"]["spec"]["template"]["spec"]["containers"]
        assert container["args"] == ["operator", "--namespace", "team-*,!team-x"]
    elif name.startswith("cert-manager"):
        cert = one(docs, "Certificate", "voltgrid-webhook")
        assert cert["spec"]["secretName"] == "voltgrid-webhook-tls"
        assert "voltgrid-webhook.voltgrid-system.svc" in cert["spec"]["dnsNames"]
        for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
            (conf,) = by_kind(docs, kind)
            assert conf["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == f"{NAMESPACE}/voltgrid-webhook"
        assert not [r for r in by_kind(docs, "Role") if r["metadata"]["name"] == "voltgrid-webhook"]
        assert ("Issuer" in kinds) == (name == "cert-manager")
    elif name == "no-webhook":
        assert not kinds & {"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration", "PersistentVolumeClaim"}
        assert "voltgrid-webhook" not in deployments
    elif name == "tracing":
        env = env_of(deployments["voltgrid-gateway"])
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel:4317"
    elif name == "token-secret":
        assert "Secret" not in kinds
        token = deployments["voltgrid-gateway"]["spec"]["template"]["spec"]["containers"][0]["env"]
        ref = next(e for e in token if e["name"] == "VOLTGRID_GATEWAY_INTERNAL_TOKEN")["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "mine", "key": "token"}
    elif name == "api-token":
        env = deployments["voltgrid-gateway"]["spec"]["template"]["spec"]["containers"][0]["env"]
        ref = next(e for e in env if e["name"] == "VOLTGRID_GATEWAY_API_TOKENS")["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "operators", "key": "token"}


def check_options(name: str, docs: list[dict[str, Any]]) -> None:
    kinds = {d["kind"] for d in docs}
    if name.startswith("ingress"):
        (ingress,) = by_kind(docs, "Ingress")
        assert ingress["spec"]["rules"][0]["host"] == "fn.example.com"
        assert ("tls" in ingress["spec"]) == (name == "ingress-tls")
    elif name == "gpu-slicer":
        daemonsets = {d["metadata"]["name"]: d for d in by_kind(docs, "DaemonSet")}
        assert set(daemonsets) == {"voltgrid-gpu-slicer-quarter", "voltgrid-gpu-slicer-half"}
        spec = daemonsets["voltgrid-gpu-slicer-half"]["spec"]["template"]["spec"]
        assert spec["nodeSelector"]["voltgrid.dev/gpu-slice-profile"] == "half"
        assert spec["automountServiceAccountToken"] is False
    elif name.startswith("runtime-classes"):
        names = {r["metadata"]["name"] for r in by_kind(docs, "RuntimeClass")}
        assert names == ({"gvisor"} if name.endswith("some") else {"gvisor", "kata-fc", "kata-clh", "kata-qemu"})
    elif name == "service-monitor":
        (monitor,) = by_kind(docs, "ServiceMonitor")
        assert monitor["spec"]["endpoints"] == [
            {"port": "http", "path": "/_voltgrid/metrics", "interval": "30s"},
            {"port": "metrics", "path": "/metrics", "interval": "30s"},
        ]
        scraped = {s["metadata"]["name"] for s in by_kind(docs, "Service") if s["metadata"]["labels"].get(METRICS)}
        assert scraped == {"voltgrid-gateway", "voltgrid-operator-metrics"}
    elif name == "existing-claim":
        assert "PersistentVolumeClaim" not in kinds
        (cron,) = by_kind(docs, "CronJob")
        volumes = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"]
        assert {"name": "sessions", "persistentVolumeClaim": {"claimName": "shared-sessions"}} in volumes
    elif name == "no-storage":
        assert not kinds & {"PersistentVolumeClaim", "CronJob"}
    elif name == "namespace":
        assert one(docs, "Namespace", NAMESPACE)
    elif name == "triggers":
        check_triggers(docs)
    if name != "triggers":
        assert not [d for d in docs if d["metadata"]["name"] == "voltgrid-triggers"]  # opt-in


def check_triggers(docs: list[dict[str, Any]]) -> None:
    deployment = one(docs, "Deployment", "voltgrid-triggers")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == [
        "triggers",
        "--gateway",
        f"http://voltgrid-gateway.{NAMESPACE}.svc:80",
        "--port",
        "8090",
    ]
    assert env_of(deployment)["POD_NAMESPACE"] is None  # from the downward API
    assert deployment["spec"]["replicas"] == 2
    secret_roles = [r for r in by_kind(docs, "Role") if r["metadata"]["name"] == "voltgrid-triggers"]
    by_ns = {r["metadata"]["namespace"]: r["rules"] for r in secret_roles}
    assert by_ns[NAMESPACE] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}
    ]
    for ns in ("shop", "bank"):
        assert by_ns[ns] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
    bindings = {
        b["metadata"]["namespace"] for b in by_kind(docs, "RoleBinding") if b["metadata"]["name"] == "voltgrid-triggers"
    }
    assert bindings == {NAMESPACE, "shop", "bank"}
    assert one(docs, "ClusterRole", "voltgrid-triggers")["rules"] == [
        {"apiGroups": ["voltgrid.dev"], "resources": ["functions"], "verbs": ["list", "watch"]},
        {"apiGroups": ["voltgrid.dev"], "resources": ["functions/status"], "verbs": ["patch"]},  # status.triggers
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},  # aggregated Events
    ]


def test_case_specifics(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rendered
    check_control_plane(name, docs)
    check_options(name, docs)


@pytest.mark.parametrize("existing", ["", "keys"])
def test_gateway_and_operator_mount_the_sandbox_claim_key_and_an_upgrade_keeps_it(
    render: Render, existing: str
) -> None:
    """The gateway signs claims with the key, the operator derives its public half: both mount it, neither
    reads Secrets. Generated unless named (then no Secret is rendered)."""
    docs = render({"sandboxClaims": {"existingSecret": existing}} if existing else {}, [])
    secret = existing or "voltgrid-sandbox-claims"
    deployments = {d["metadata"]["name"]: d for d in by_kind(docs, "Deployment")}
    for name, prefix in (("voltgrid-gateway", "GATEWAY"), ("voltgrid-operator", "OPERATOR")):
        pod = deployments[name]["spec"]["template"]["spec"]
        assert {"name": "sandbox-claims", "secret": {"secretName": secret, "defaultMode": 0o440}} in pod["volumes"]
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        key_file = env[f"VOLTGRID_{prefix}_SANDBOX_CLAIM_KEY_FILE"]
        mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "sandbox-claims")
        assert key_file.startswith(mount["mountPath"] + "/") and mount["readOnly"] is True
    generated = [d for d in by_kind(docs, "Secret") if d["metadata"]["name"] == "voltgrid-sandbox-claims"]
    if existing:
        assert generated == []
    else:
        pem = base64.b64decode(generated[0]["data"]["claim-key.pem"])
        load_signing_key(pem)  # an Ed25519 key the gateway can load


def test_with_triggers_the_gateway_passes_events_to_the_dispatchers_service(render: Render) -> None:
    for enabled in (True, False):
        docs = render({"triggers": {"enabled": enabled}}, [])
        gateway = next(d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "voltgrid-gateway")
        env = {e["name"]: e.get("value") for e in gateway["spec"]["template"]["spec"]["containers"][0]["env"]}
        services = {d["metadata"]["name"]: d for d in by_kind(docs, "Service")}
        if enabled:
            port = services["voltgrid-triggers"]["spec"]["ports"][0]["port"]
            assert env["VOLTGRID_GATEWAY_EVENTS_URL"] == f"http://voltgrid-triggers.{NAMESPACE}.svc:{port}"
        else:
            assert "VOLTGRID_GATEWAY_EVENTS_URL" not in env
