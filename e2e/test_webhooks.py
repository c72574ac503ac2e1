"""The webhooks on a real apiserver: it calls our server over TLS, pods get their session storage,
forbidden mounts are rejected with messages, the CA rotates without a failed call, and the janitor
cleans a real directory that real pods wrote.

The webhook runs as a process on the host (``voltgrid.webhooks.server:main`` with ``--manage-certs``,
so the Secret, the caBundle patches and the hot reload are the real ones) and the configurations use
a URL ``clientConfig`` (``https://127.0.0.1:<port>``); the chart points them at a Service instead.
Their namespaceSelector also requires the label ``voltgrid-e2e/webhooks`` so that other e2e tests'
Voltgrid namespaces never reach this short-lived process.

The test's own user (the cluster admin, as ``kubectl auth whoami`` names it) is the webhook's trusted
user here, standing in for Voltgrid's service accounts; the *tenant* is a ServiceAccount bound to the
built-in ``edit`` ClusterRole in the apps namespace, whom the tests impersonate (``kubectl --as``).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from ports import free_port
from voltgrid.webhooks import certs, config, tls
from voltgrid.webhooks.kube import api_client

pytestmark = pytest.mark.e2e
SYSTEM_NS, APP_NS, PLAIN_NS = "vgwh-system", "vgwh-apps", "vgwh-plain"
PREFIX = "vgwh-e2e"
IMAGE = "localhost/voltgrid/python:3.11"
E2E_LABEL = "voltgrid-e2e/webhooks"
TENANT = f"system:serviceaccount:{APP_NS}:tenant"


def kubectl(cluster: Any, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    done: subprocess.CompletedProcess[str] = cluster.kubectl(*args, input=stdin, check=check)
    return done


def apply(cluster: Any, *docs: dict[str, Any]) -> None:
    kubectl(cluster, "apply", "-f", "-", stdin=yaml.safe_dump_all(docs))


def namespace(name: str, enabled: bool) -> dict[str, Any]:
    labels = {"voltgrid.dev/enabled": "true", E2E_LABEL: "true"} if enabled else {}
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def session_pod(name: str, session: str, script: str, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": {"runAsUser": 65534, "runAsGroup": 65534},
        "containers": [
            {"name": "app", "image": IMAGE, "imagePullPolicy": "Never", "command": ["python3", "-c", script]}
        ],
    }
    spec.update(extra.pop("spec", {}))
    meta = {
        "name": name,
        "namespace": APP_NS,
        "labels": {"voltgrid.dev/managed": "true", "voltgrid.dev/function": "fn", "voltgrid.dev/session": session},
        "annotations": {"voltgrid.dev/storage-claim": "sessions", "voltgrid.dev/storage-mount-path": "/data"},
    }
    meta.update(extra)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


WRITE_AND_LIST = (
    "import os, json; d = os.environ['VOLTGRID_STORAGE_DIR']; sid = os.environ['VOLTGRID_SESSION_ID']\n"
    "open(os.path.join(d, sid + '.txt'), 'a').write(sid + '\\n')\n"
    "print(json.dumps({'files': sorted(os.listdir(d)), 'mine': open(os.path.join(d, sid + '.txt')).read(),"
    " 'uid': os.getuid()}))"
)


@pytest.fixture(scope="module")
def storage_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("vgwh-sessions")
    root.chmod(0o777)  # the kubelet creates sub-paths with the root's mode; pods write as uid 65534
    return root


@pytest.fixture(scope="module")
def webhook(cluster: Any, storage_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The webhook process, its configurations, and the namespaces and claim of the tests."""
    port, files = free_port(), tmp_path_factory.mktemp("vgwh-tls")
    settings = config.WebhookSettings(
        operator_namespace=SYSTEM_NS, endpoint=config.UrlEndpoint(f"https://127.0.0.1:{port}"), name=PREFIX
    )
    configurations = [config.mutating_configuration(settings), config.validating_configuration(settings)]
    for obj in configurations:
        obj["webhooks"][0]["namespaceSelector"]["matchExpressions"].append({"key": E2E_LABEL, "operator": "Exists"})
    pv = {
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "vgwh-sessions"},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                 "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(storage_root)},
                 "claimRef": {"namespace": APP_NS, "name": "sessions"}},
    }  # fmt: skip
    pvc = {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "sessions", "namespace": APP_NS},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": "vgwh-sessions",
                 "resources": {"requests": {"storage": "1Gi"}}},
    }  # fmt: skip
    pvc["metadata"]["labels"] = {"voltgrid.dev/session-storage": "true"}  # guarded by its label
    tenant = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "tenant", "namespace": APP_NS}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "tenant-edit", "namespace": APP_NS},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
         "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": APP_NS}]},
        # `edit` lacks `kubectl debug`; grant it, so that the webhook is what refuses a session pod.
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "debugger", "namespace": APP_NS},
         "rules": [{"apiGroups": [""], "resources": ["pods/ephemeralcontainers"], "verbs": ["patch", "update"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "tenant-debugger", "namespace": APP_NS},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "debugger"},
         "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": APP_NS}]},
    ]  # fmt: skip
    for ns in (APP_NS, PLAIN_NS, SYSTEM_NS):  # an earlier run's teardown does not wait for its deletions
        kubectl(cluster, "delete", "namespace", ns, "--ignore-not-found", "--wait=true", "--timeout=180s")
    kubectl(cluster, "delete", "pv", "vgwh-sessions", "--ignore-not-found", "--wait=true")
    apply(cluster, namespace(SYSTEM_NS, False), namespace(APP_NS, True), namespace(PLAIN_NS, False), pv, pvc, *tenant)
    apply(cluster, *configurations)
    me = kubectl(cluster, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}").stdout.strip()
    argv = [
        "--trusted-user", me,
        "--host", "127.0.0.1", "--port", str(port), "--manage-certs", "--namespace", SYSTEM_NS,
        "--configuration-prefix", PREFIX, "--extra-name", "127.0.0.1", "--kubeconfig", str(cluster.kubeconfig),
        "--tls-cert", str(files / "tls.crt"), "--tls-key", str(files / "tls.key"),
    ]  # fmt: skip
    log = (files / "webhook.log").open("w")
    code = "import sys; from voltgrid.webhooks.server import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, *argv], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not (files / "tls.crt").exists() or not _serving(port):
            assert proc.poll() is None, (files / "webhook.log").read_text()
            assert time.monotonic() < deadline, "webhook did not start"
            time.sleep(0.2)
        yield {"port": port, "files": files, "proc": proc, "settings": settings}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
        for obj in configurations:
            kubectl(cluster, "delete", obj["kind"].lower(), obj["metadata"]["name"], "--ignore-not-found")
        for ns in (APP_NS, PLAIN_NS, SYSTEM_NS):
            kubectl(cluster, "delete", "namespace", ns, "--ignore-not-found", "--wait=false")
        kubectl(cluster, "delete", "pv", "vgwh-sessions", "--ignore-not-found", "--wait=false")


def _serving(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def served_issuer(port: int) -> str:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port)) as raw, context.wrap_socket(raw) as conn:
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).issuer.rfc4514_string()


def dry_run(cluster: Any, pod: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return kubectl(cluster, "create", "--dry-run=server", "-o", "json", "-f", "-", stdin=json.dumps(pod), check=False)


def run_pod(cluster: Any, pod: dict[str, Any]) -> dict[str, Any]:
    """Create the pod, wait until it has finished, return its output (one JSON line)."""
    apply(cluster, pod)
    name = pod["metadata"]["name"]
    kubectl(cluster, "wait", "-n", APP_NS, f"pod/{name}", "--for=jsonpath={.status.phase}=Succeeded", "--timeout=90s")
    out: dict[str, Any] = json.loads(kubectl(cluster, "logs", "-n", APP_NS, name).stdout.strip().splitlines()[-1])
    return out


def test_sessions_get_their_own_directory(cluster: Any, webhook: dict[str, Any], storage_root: Path) -> None:
    a = run_pod(cluster, session_pod("sess-a", "s-a", WRITE_AND_LIST))
    b = run_pod(cluster, session_pod("sess-b", "s-b", WRITE_AND_LIST))
    assert a == {"files": ["s-a.txt"], "mine": "s-a\n", "uid": 65534}
    assert b == {"files": ["s-b.txt"], "mine": "s-b\n", "uid": 65534}  # neither sees the other
    stored = json.loads(kubectl(cluster, "get", "-n", APP_NS, "pod/sess-a", "-o", "json").stdout)
    (container,) = stored["spec"]["containers"]
    assert {"name": "voltgrid-session", "mountPath": "/data", "subPath": f"{APP_NS}/fn/s-a"} in container[
        "volumeMounts"
    ]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert stored["spec"]["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert stored["spec"]["automountServiceAccountToken"] is False
    # Released and woken on a new pod: the same session sees its own file again.
    kubectl(cluster, "delete", "-n", APP_NS, "pod/sess-a", "--wait=true")
    again = run_pod(cluster, session_pod("sess-a2", "s-a", WRITE_AND_LIST))
    assert again == {"files": ["s-a.txt"], "mine": "s-a\ns-a\n", "uid": 65534}
    assert (storage_root / APP_NS / "fn" / "s-a" / "s-a.txt").read_text() == "s-a\ns-a\n"


MOUNT = {"name": "store", "mountPath": "/x"}
CLAIM = [{"name": "store", "persistentVolumeClaim": {"claimName": "sessions"}}]
FORBIDDEN: list[tuple[str, dict[str, Any], str]] = [
    ("hostPath", {"volumes": [{"name": "h", "hostPath": {"path": "/etc"}}]}, "volume 'h' is a hostPath (/etc)"),
    ("other session", {"volumes": CLAIM, "containers": [{"name": "c", "image": IMAGE,
                       "volumeMounts": [MOUNT | {"subPath": f"{APP_NS}/fn/s-b"}]}]},
     "(volume 'voltgrid-session') mounts the directory of session 's-b'"),
    ("claim root", {"volumes": CLAIM, "containers": [{"name": "c", "image": IMAGE, "volumeMounts": [MOUNT]}]},
     "mounts the root of session storage"),
    ("subPathExpr", {"volumes": CLAIM, "containers": [{"name": "c", "image": IMAGE,
                     "volumeMounts": [MOUNT | {"subPathExpr": "$(SID)"}]}]}, "uses subPathExpr on session storage"),
    ("dotdot", {"volumes": [{"name": "store", "emptyDir": {}}], "containers": [{"name": "c", "image": IMAGE,
                "volumeMounts": [MOUNT | {"subPath": "a/../../b"}]}]}, "must not contain '..'"),
]  # fmt: skip


@pytest.mark.parametrize("case", FORBIDDEN, ids=[c[0] for c in FORBIDDEN])
def test_forbidden_pods_are_rejected(cluster: Any, webhook: dict[str, Any], case: tuple[str, Any, str]) -> None:
    _, spec, message = case
    done = dry_run(cluster, session_pod("bad", "s-a", "pass", spec=spec))
    assert done.returncode != 0 and message in done.stderr, done.stderr


def test_bad_session_id_is_rejected(cluster: Any, webhook: dict[str, Any]) -> None:
    done = dry_run(cluster, session_pod("bad", "Bad_Session", "pass"))
    assert done.returncode != 0 and "is not a valid session id" in done.stderr, done.stderr


def test_pods_outside_voltgrid_namespaces_are_untouched(cluster: Any, webhook: dict[str, Any]) -> None:
    pod = session_pod("plain", "s-a", "pass", namespace=PLAIN_NS, spec={"volumes": FORBIDDEN[0][1]["volumes"]})
    done = dry_run(cluster, pod)
    assert done.returncode == 0, done.stderr
    spec = json.loads(done.stdout)["spec"]
    assert [v["name"] for v in spec["volumes"] if v["name"] != "kube-api-access" and "projected" not in v] == ["h"]
    assert "env" not in spec["containers"][0] and "runAsNonRoot" not in spec["securityContext"]


async def test_ca_rotation_keeps_the_apiserver_calling(cluster: Any, webhook: dict[str, Any]) -> None:
    settings = certs.CertSettings(
        namespace=SYSTEM_NS,
        mutating_configuration=f"{PREFIX}-session-storage",
        validating_configuration=f"{PREFIX}-session-isolation",
        extra_names=("127.0.0.1",),
    )
    files = (webhook["files"] / "tls.crt", webhook["files"] / "tls.key")
    now = datetime.now(UTC)
    aged_ca = tls.generate_ca(now - timedelta(days=300))  # two thirds of its year are gone
    aged = tls.CertState(aged_ca, tls.issue_serving(aged_ca, settings.names, now - timedelta(days=1)), aged_ca.cert_pem)
    client = await api_client(str(cluster.kubeconfig))
    try:
        store = certs.KubernetesCertStore(client, settings)
        stored = await store.read_secret()
        assert stored is not None  # bootstrapped by the webhook process
        await store.write_secret(aged.secret_data(), stored.resource_version)
        await certs.patch_bundles(store, settings, aged.bundle)
        certs.write_files(aged, *files)
        await _until(lambda: served_issuer(webhook["port"]) == aged_ca.cert.subject.rfc4514_string())
        assert dry_run(cluster, session_pod("ok", "s-a", "pass")).returncode == 0
        rotated = await certs.reconcile(store, settings, datetime.now(UTC), files)
    finally:
        await client.close()
    assert rotated.ca != aged.ca and len(x509_bundle(rotated.bundle)) == 2
    await _until(lambda: served_issuer(webhook["port"]) == rotated.ca.cert.subject.rfc4514_string())
    done = dry_run(cluster, session_pod("ok", "s-a", "pass"))
    assert done.returncode == 0, done.stderr
    assert "voltgrid-session" in done.stdout  # mutated: the apiserver called us with the new certificate
    assert "hostPath" in dry_run(cluster, session_pod("bad", "s-a", "pass", spec=FORBIDDEN[0][1])).stderr


def x509_bundle(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


async def _until(check: Callable[[], bool], seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.2)


def run_janitor(cluster: Any, root: Path, *flags: str) -> dict[str, str]:
    code = "import sys; from voltgrid.webhooks.janitor import main; sys.exit(main(sys.argv[1:]))"
    argv = [sys.executable, "-c", code, "--root", str(root), "--kubeconfig", str(cluster.kubeconfig), *flags]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, env=os.environ)
    assert done.returncode == 0, done.stderr
    return {line["session"]: line["action"] for line in map(json.loads, done.stdout.splitlines())}


def test_janitor_on_the_real_directory(cluster: Any, webhook: dict[str, Any], storage_root: Path) -> None:
    kubectl(cluster, "delete", "-n", APP_NS, "pod/sess-b", "--wait=true", "--ignore-not-found")
    old = (datetime.now(UTC) - timedelta(days=30)).timestamp()
    for path in (storage_root / APP_NS / "fn").rglob("*"):
        os.utime(path, (old, old))
    for session in ("s-a", "s-b"):
        os.utime(storage_root / APP_NS / "fn" / session, (old, old))
    assert run_janitor(cluster, storage_root, "--dry-run") == {"s-a": "keep", "s-b": "would-remove"}
    assert (storage_root / APP_NS / "fn" / "s-b").exists()
    assert run_janitor(cluster, storage_root) == {"s-a": "keep", "s-b": "remove"}  # s-a: pod sess-a2 exists
    assert not (storage_root / APP_NS / "fn" / "s-b").exists()
    assert (storage_root / APP_NS / "fn" / "s-a" / "s-a.txt").exists()


SLEEPER = "import time; time.sleep(600)"
TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def as_tenant(cluster: Any, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return kubectl(cluster, f"--as={TENANT}", *args, stdin=stdin, check=False)


def running_session_pod(cluster: Any, name: str, session: str) -> None:
    apply(cluster, session_pod(name, session, SLEEPER))
    kubectl(cluster, "wait", "-n", APP_NS, f"pod/{name}", "--for=condition=Ready", "--timeout=90s")


def plain_pod(name: str, volumes: list[dict[str, Any]], mounts: list[dict[str, Any]], **labels: str) -> dict[str, Any]:
    spec = {
        "restartPolicy": "Never",
        "containers": [{"name": "c", "image": IMAGE, "command": ["python3", "-c", "pass"], "volumeMounts": mounts}],
        "volumes": volumes,
    }
    meta = {"name": name, "namespace": APP_NS, "labels": labels}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


ALL = [MOUNT]
TENANT_TRICKS: list[tuple[str, dict[str, Any], str]] = [
    ("the claim's root, no labels", plain_pod("t1", CLAIM, ALL), "volume 'store' is session storage"),
    ("another session's sub-path, no labels", plain_pod("t2", CLAIM, [MOUNT | {"subPath": f"{APP_NS}/fn/s-a"}]),
     "volume 'store' is session storage"),
    ("subPathExpr, no labels", plain_pod("t3", CLAIM, [MOUNT | {"subPathExpr": "$(POD_NAME)"}]),
     "volume 'store' is session storage"),
    ("labelled as session s-a (impersonation)", session_pod("t4", "s-a", "pass"),
     "only Voltgrid's own service accounts may create pods labelled"),
    ("a Function's labels, for the gateway to adopt",
     plain_pod("t5", [], [], **{"voltgrid.dev/managed": "true", "voltgrid.dev/function": "fn"}),
     "only Voltgrid's own service accounts may create pods labelled voltgrid.dev/managed=true"),
    ("a clone of the claim as an ephemeral volume",
     plain_pod("t6", [{"name": "copy", "ephemeral": {"volumeClaimTemplate": {"spec": {
         "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
         "dataSource": {"kind": "PersistentVolumeClaim", "name": "sessions"}}}}}], []),
     "volume 'copy' clones session storage claim 'sessions'"),
]  # fmt: skip


@pytest.mark.parametrize("case", TENANT_TRICKS, ids=[c[0] for c in TENANT_TRICKS])
def test_a_tenant_with_edit_rights_cannot_reach_session_files(
    cluster: Any, webhook: dict[str, Any], case: tuple[str, dict[str, Any], str]
) -> None:
    _, pod, message = case
    done = as_tenant(cluster, "create", "-f", "-", stdin=json.dumps(pod))
    assert done.returncode != 0 and message in done.stderr, done.stderr
    assert kubectl(cluster, "get", "-n", APP_NS, "pod", pod["metadata"]["name"], "--ignore-not-found").stdout == ""


def test_a_tenant_cannot_shell_into_debug_or_relabel_session_pods(cluster: Any, webhook: dict[str, Any]) -> None:
    running_session_pod(cluster, "victim", "s-v")
    exec_ = as_tenant(cluster, "exec", "-n", APP_NS, "victim", "--", "cat", f"/data/{APP_NS}")
    assert exec_.returncode != 0 and "may not exec into session pod 'victim'" in exec_.stderr, exec_.stderr
    forward = as_tenant(cluster, "port-forward", "-n", APP_NS, "pod/victim", "0:8080", "--pod-running-timeout=5s")
    assert forward.returncode != 0 and "may not portforward into session pod" in forward.stderr, forward.stderr
    debug = as_tenant(cluster, "debug", "-n", APP_NS, "victim", f"--image={IMAGE}", "--profile=general", "--", "true")
    assert debug.returncode != 0 and "may not add containers to session pod 'victim'" in debug.stderr, debug.stderr
    relabel = as_tenant(cluster, "label", "-n", APP_NS, "pod/victim", "voltgrid.dev/session=s-a", "--overwrite")
    assert relabel.returncode != 0 and "may change a pod's Voltgrid labels" in relabel.stderr, relabel.stderr
    # Its own plain pod cannot be turned into a Function's pod either (the gateway would adopt it).
    assert as_tenant(cluster, "create", "-f", "-", stdin=json.dumps(plain_pod("mine", [], []))).returncode == 0
    adopt = as_tenant(
        cluster, "label", "-n", APP_NS, "pod/mine", "voltgrid.dev/managed=true", "voltgrid.dev/function=fn"
    )
    assert adopt.returncode != 0 and "may change a pod's Voltgrid labels" in adopt.stderr, adopt.stderr
    # The admin (trusted here) still can: the rules follow the user, not the pod.
    assert kubectl(cluster, "exec", "-n", APP_NS, "victim", "--", "true", check=False).returncode == 0
    kubectl(cluster, "delete", "-n", APP_NS, "pod/victim", "pod/mine", "--wait=false")


def test_a_tenants_deployment_cannot_start_session_pods(cluster: Any, webhook: dict[str, Any]) -> None:
    """The ReplicaSet controller creates the pods, and it is not Voltgrid either."""
    deploy = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "sneaky", "namespace": APP_NS},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "sneaky"}},
                 "template": session_pod("x", "s-a", SLEEPER) | {"metadata": {"labels": {
                     "app": "sneaky", "voltgrid.dev/managed": "true", "voltgrid.dev/function": "fn",
                     "voltgrid.dev/session": "s-a"}}}},
    }  # fmt: skip
    deploy["spec"]["template"].pop("apiVersion")
    deploy["spec"]["template"].pop("kind")
    deploy["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    assert as_tenant(cluster, "apply", "-f", "-", stdin=json.dumps(deploy)).returncode == 0
    deadline = time.monotonic() + 60
    events = ""
    while "only Voltgrid's own service accounts" not in events:
        assert time.monotonic() < deadline, events
        time.sleep(1)
        events = kubectl(cluster, "get", "events", "-n", APP_NS, "--field-selector", "reason=FailedCreate").stdout
    assert kubectl(cluster, "get", "pods", "-n", APP_NS, "-l", "app=sneaky", "-o", "name").stdout == ""
    kubectl(cluster, "delete", "-n", APP_NS, "deployment/sneaky", "--wait=false")


def test_a_tenant_cannot_clone_or_unguard_the_claim(cluster: Any, webhook: dict[str, Any]) -> None:
    clone = {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "copy", "namespace": APP_NS},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                 "dataSourceRef": {"kind": "PersistentVolumeClaim", "name": "sessions"}},
    }  # fmt: skip
    done = as_tenant(cluster, "create", "-f", "-", stdin=json.dumps(clone))
    assert done.returncode != 0 and "clones session storage claim 'sessions'" in done.stderr, done.stderr
    done = as_tenant(cluster, "label", "-n", APP_NS, "pvc/sessions", "voltgrid.dev/session-storage-")
    assert done.returncode != 0 and "may remove label voltgrid.dev/session-storage" in done.stderr, done.stderr


def test_a_claim_a_function_names_is_guarded(cluster: Any, webhook: dict[str, Any], voltgrid_crds: Any) -> None:
    function = {
        "apiVersion": "voltgrid.dev/v1alpha1", "kind": "Function", "metadata": {"name": "fn", "namespace": APP_NS},
        "spec": {"image": IMAGE, "storage": {"claimName": "fn-claim"}},
    }  # fmt: skip
    apply(cluster, function)
    pod = plain_pod("t7", [{"name": "s", "persistentVolumeClaim": {"claimName": "fn-claim"}}], [MOUNT | {"name": "s"}])
    done = as_tenant(cluster, "create", "--dry-run=server", "-f", "-", stdin=json.dumps(pod))
    assert done.returncode != 0 and "volume 's' is session storage" in done.stderr, done.stderr
    kubectl(cluster, "delete", "-n", APP_NS, "function/fn", "--wait=false")


def test_session_pods_have_no_token_file_and_one_claim_volume(cluster: Any, webhook: dict[str, Any]) -> None:
    """No automount field and the claim mounted by the writer under its own name: the apiserver injects
    the token volume, the webhook removes it; the two mounts of one claim become one."""
    script = f"import os, json; print(json.dumps({{'token': os.path.exists({TOKEN!r}), 'files': os.listdir('/data')}}))"
    pod = session_pod("tokenless", "s-t", script)
    pod["spec"]["volumes"] = [{"name": "mine", "persistentVolumeClaim": {"claimName": "sessions"}}]
    pod["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "mine", "mountPath": "/data", "subPath": f"{APP_NS}/fn/s-t"}
    ]
    assert run_pod(cluster, pod) == {"token": False, "files": []}
    stored = json.loads(kubectl(cluster, "get", "-n", APP_NS, "pod/tokenless", "-o", "json").stdout)
    assert [v["name"] for v in stored["spec"]["volumes"]] == ["voltgrid-session"]


def test_a_link_in_a_sessions_directory_leads_nowhere(
    cluster: Any, webhook: dict[str, Any], storage_root: Path
) -> None:
    """Session s-a plants ``to-b -> ../s-b``; a pod of s-a asking for sub-path ``s-a/to-b`` is refused, even
    from Voltgrid's own user: only the session's directory itself is ever mounted."""
    plant = "import os; os.symlink('../s-b', os.path.join(os.environ['VOLTGRID_STORAGE_DIR'], 'to-b')); print('{}')"
    run_pod(cluster, session_pod("planter", "s-a", plant))
    assert (storage_root / APP_NS / "fn" / "s-a" / "to-b").is_symlink()
    spec = {"volumes": CLAIM, "containers": [{"name": "c", "image": IMAGE, "command": ["true"],
            "volumeMounts": [MOUNT | {"subPath": f"{APP_NS}/fn/s-a/to-b"}]}]}  # fmt: skip
    done = dry_run(cluster, session_pod("escape", "s-a", "pass", spec=spec))
    assert done.returncode != 0 and "below its session's directory" in done.stderr, done.stderr


def test_webhook_down_blocks_voltgrid_namespaces_only(cluster: Any, webhook: dict[str, Any]) -> None:
    webhook["proc"].terminate()
    webhook["proc"].wait(timeout=30)
    done = dry_run(cluster, session_pod("x", "s-a", "pass"))
    assert done.returncode != 0 and "failed calling webhook" in done.stderr, done.stderr
    operator_pod = session_pod("operator", "s-a", "pass", namespace=SYSTEM_NS)
    assert dry_run(cluster, operator_pod).returncode == 0  # the operator's namespace is never selected
