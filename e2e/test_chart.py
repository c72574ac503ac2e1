"""The chart and the rendered manifest on a real cluster, with real helm and kubectl.

Order matters (one module, tests in file order): helm install -> NOTES work as written -> helm upgrade ->
helm uninstall leaves only the documented leftovers -> deploy/voltgrid.yaml applies, serves, and
re-applying it (client-side, then server-side) changes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import itertools
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import grpc
import httpx
import httpx2
import pytest
from a2a.client import ClientConfig, create_client
from a2a.types.a2a_pb2 import AgentCard, AgentInterface, Message, Part, Role, SendMessageRequest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from e2ehelpers import IMAGE_BUILD_TIMEOUT_S
from ports import free_port
from voltgrid.cli.run import host_volume

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]
RELEASE = "voltgrid"
HELM_NS = "voltgrid-e2e"
MANIFEST_NS = "voltgrid-system"
IMAGE = {"image.repository": "localhost/voltgrid/voltgrid", "image.tag": "dev", "image.pullPolicy": "Never"}
#: What `helm uninstall` leaves (docs/operations.md, "Uninstall"): the session claim (resource-policy
#: keep), the webhook's CA Secret (written at runtime, not part of the release), the CRDs, the namespace.
#: Bounds (a passing run takes ~2 min warm): a cold image build installs the dependencies (~1 min).
HELM_TIMEOUT = "3m"
HELM_TIMEOUT_S = 240
NOTES_TIMEOUT_S = 300
LEFTOVERS = {("persistentvolumeclaim", "voltgrid-sessions"), ("secret", "voltgrid-webhook-tls")}
#: The Session API's operator token of the upgraded release.
API_TOKEN = "e2e-" + os.urandom(12).hex()
#: The release's NOTES, kept for the manifest's smoke test.
NOTES: list[str] = []


def env(cluster: Any) -> dict[str, str]:
    return {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "PATH": f"{cluster.bin_dir}{os.pathsep}{os.environ['PATH']}",
    }


def run(cluster: Any, *argv: str, timeout: float = 120, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        env=env(cluster),
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ok(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 0, f"{out.args}: {out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def helm() -> str:
    out = subprocess.run(["bash", str(ROOT / "e2e/cluster/build-helm.sh")], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module", autouse=True)
def clean_slate(cluster: Any, helm: str) -> None:
    """Removes what an interrupted earlier run left (the tests clean up after themselves when they pass)."""
    run(cluster, "kubectl", "delete", "-n", "default", "function", "echo", "--ignore-not-found", "--wait=true")
    run(cluster, helm, "uninstall", RELEASE, "-n", HELM_NS, "--ignore-not-found", "--wait", timeout=240)
    cluster_wide = "clusterrole,clusterrolebinding,mutatingwebhookconfiguration,validatingwebhookconfiguration"
    selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/part-of=voltgrid"
    run(cluster, "kubectl", "delete", cluster_wide, "-l", selector, "--ignore-not-found")
    for namespace in (HELM_NS, MANIFEST_NS):
        run(cluster, "kubectl", "delete", "namespace", namespace, "--ignore-not-found", "--wait=true", timeout=300)
        run(cluster, "kubectl", "delete", "pv", f"voltgrid-sessions-{namespace}", "--ignore-not-found")
    for namespace in ("default", JOURNEY_NS):
        drop_example_claim(cluster, namespace)


def volume_for(cluster: Any, name: str, namespace: str, claim: str) -> None:
    """A fresh, world-writable hostPath PV pre-bound to ``namespace/claim`` (no provisioner here; the
    same one `voltgrid run` makes)."""
    root = Path(f"/tmp/voltgrid-e2e-sessions/{name}")
    shutil.rmtree(root, ignore_errors=True)  # an earlier run's sessions
    root.mkdir(parents=True)
    root.chmod(0o777)
    ok(run(cluster, "kubectl", "apply", "-f", "-", stdin=json.dumps(host_volume(name, namespace, claim, root))))


def session_volume(cluster: Any, namespace: str) -> None:
    """The chart's claim's volume."""
    volume_for(cluster, f"voltgrid-sessions-{namespace}", namespace, "voltgrid-sessions")


def example_claim_volume(cluster: Any, namespace: str) -> None:
    """The volume of ``<namespace>/sessions``, the claim of examples/storage/."""
    volume_for(cluster, f"voltgrid-example-sessions-{namespace}", namespace, "sessions")


def drop_example_claim(cluster: Any, namespace: str) -> None:
    run(cluster, "kubectl", "delete", "-n", namespace, "pvc", "sessions", "--ignore-not-found", "--wait=true")
    run(cluster, "kubectl", "delete", "pv", f"voltgrid-example-sessions-{namespace}", "--ignore-not-found")


def all_ready(cluster: Any, namespace: str) -> None:
    ok(
        run(
            cluster,
            "kubectl", "-n", namespace, "wait", "deploy", "--all", "--for=condition=Available", "--timeout=180s",
            timeout=240,
        )
    )  # fmt: skip
    pods = json.loads(ok(run(cluster, "kubectl", "-n", namespace, "get", "pods", "-o", "json")))["items"]
    for pod in pods:
        if pod["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "janitor":
            continue
        if pod["metadata"].get("deletionTimestamp"):
            continue  # an old replica a rollout is shutting down (it may well have exited 0 already)
        ready = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}.get("Ready")
        assert ready == "True", f"{pod['metadata']['name']} not ready: {pod['status']}"
    claim = json.loads(ok(run(cluster, "kubectl", "-n", namespace, "get", "pvc", "voltgrid-sessions", "-o", "json")))
    assert claim["status"]["phase"] == "Bound"


def notes_script(notes: str) -> str:
    """The NOTES commands (lines starting with `$ `), as one bash script."""
    commands = [line.strip()[2:] for line in notes.splitlines() if line.strip().startswith("$ ")]
    assert commands, notes
    return "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + "\n".join(commands) + "\n"


def follow_notes(cluster: Any, notes: str) -> str:
    out = run(cluster, "bash", "-c", notes_script(notes), timeout=NOTES_TIMEOUT_S)
    assert out.returncode == 0, f"NOTES commands failed:\n{out.stdout}\n{out.stderr}"
    assert re.search(r"^HTTP/1\.1 200", out.stdout, re.M), out.stdout
    assert re.search(r"^x-voltgrid-session: \S+", out.stdout, re.M | re.I), out.stdout
    return out.stdout


@pytest.mark.timeout(IMAGE_BUILD_TIMEOUT_S + HELM_TIMEOUT_S + 300)
def test_helm_install_brings_every_component_to_ready(cluster: Any, helm: str, voltgrid_image: str) -> None:
    session_volume(cluster, HELM_NS)
    example_claim_volume(cluster, "default")
    sets = [f"--set={k}={v}" for k, v in IMAGE.items()]
    ok(
        run(
            cluster,
            helm, "install", RELEASE, "charts/voltgrid", "-n", HELM_NS, "--create-namespace", *sets,
            "--wait", "--timeout", HELM_TIMEOUT,
            timeout=HELM_TIMEOUT_S,
        )
    )  # fmt: skip
    all_ready(cluster, HELM_NS)
    conf = json.loads(
        ok(run(cluster, "kubectl", "get", "mutatingwebhookconfiguration", "voltgrid-session-storage", "-o", "json"))
    )
    deadline = time.monotonic() + 60
    while not conf["webhooks"][0]["clientConfig"].get("caBundle") and time.monotonic() < deadline:
        time.sleep(2)
        conf = json.loads(
            ok(run(cluster, "kubectl", "get", "mutatingwebhookconfiguration", "voltgrid-session-storage", "-o", "json"))
        )
    assert conf["webhooks"][0]["clientConfig"].get("caBundle"), "the webhook never patched its caBundle"


@pytest.mark.timeout(NOTES_TIMEOUT_S + 60)
def test_notes_instructions_work_as_written(cluster: Any, helm: str) -> None:
    notes = ok(run(cluster, helm, "get", "notes", RELEASE, "-n", HELM_NS))
    follow_notes(cluster, notes)
    NOTES.append(notes)


@pytest.mark.timeout(HELM_TIMEOUT_S + NOTES_TIMEOUT_S + 300)
def test_helm_upgrade_with_changed_values(cluster: Any, helm: str) -> None:
    secret = [
        "kubectl",
        "-n",
        HELM_NS,
        "create",
        "secret",
        "generic",
        "session-api",
        f"--from-literal=token={API_TOKEN}",
    ]
    ok(run(cluster, *secret))
    ok(
        run(
            cluster,
            helm, "upgrade", RELEASE, "charts/voltgrid", "-n", HELM_NS, "--reuse-values",
            "--set", "gateway.replicas=2", "--set", "operator.replicas=2", "--set", "logLevel=debug",
            "--set", "gateway.apiToken.existingSecret=session-api",
            "--wait", "--timeout", HELM_TIMEOUT,
            timeout=HELM_TIMEOUT_S,
        )
    )  # fmt: skip
    all_ready(cluster, HELM_NS)
    gateway = json.loads(ok(run(cluster, "kubectl", "-n", HELM_NS, "get", "deploy", "voltgrid-gateway", "-o", "json")))
    assert gateway["status"]["readyReplicas"] == 2
    ok(run(cluster, "kubectl", "get", "clusterkopfpeering", "voltgrid"))
    # The echo Function from the NOTES still answers through the upgraded gateway.
    notes = ok(run(cluster, helm, "get", "notes", RELEASE, "-n", HELM_NS))
    follow_notes(cluster, notes)


JOURNEY_NS = "vg-journey"


def call_gateway(cluster: Any, session: str, body: str) -> dict[str, Any]:
    """POST through the gateway Service's ClusterIP (the host is the node: kube-proxy balances over
    both replicas, as any in-cluster client would see them)."""
    ip = ok(
        run(cluster, "kubectl", "-n", HELM_NS, "get", "svc", "voltgrid-gateway", "-o", "jsonpath={.spec.clusterIP}")
    )
    request = urllib.request.Request(
        f"http://{ip}:80/fn/{JOURNEY_NS}/echo/", data=body.encode(), headers={"X-Voltgrid-Session": session}
    )
    with urllib.request.urlopen(request, timeout=180) as answer:
        out: dict[str, Any] = json.loads(answer.read())
        return out


def instance_pods(cluster: Any) -> list[str]:
    listed = ok(
        run(cluster, "kubectl", "-n", JOURNEY_NS, "get", "pods", "-l", "voltgrid.dev/function=echo", "-o", "name")
    )
    return listed.split()


def pod_uid(cluster: Any, name: str) -> str:
    return ok(run(cluster, "kubectl", "-n", JOURNEY_NS, "get", "pod", name, "-o", "jsonpath={.metadata.uid}"))


@pytest.mark.timeout(600)
def test_a_sessions_files_survive_idle_release_and_wake_through_two_gateways(cluster: Any) -> None:
    """The user's path: kubectl apply the echo example (claim + Function with storage) in a Voltgrid
    namespace, call it through the two gateway replicas, let the session idle out (its pod is deleted),
    call again: a new pod, the same count continues from the session's directory."""
    ok(run(cluster, "kubectl", "create", "namespace", JOURNEY_NS))
    try:
        ok(run(cluster, "kubectl", "label", "namespace", JOURNEY_NS, "voltgrid.dev/enabled=true"))
        example_claim_volume(cluster, JOURNEY_NS)
        ok(run(cluster, "kubectl", "apply", "-n", JOURNEY_NS, "-f", "examples/storage/sessions-claim.yaml"))
        ok(run(cluster, "kubectl", "apply", "-n", JOURNEY_NS, "-f", "examples/echo-function.yaml"))
        patch = {"spec": {"sessions": {"idleTimeout": "5s"}}}
        ok(run(cluster, "kubectl", "patch", "-n", JOURNEY_NS, "function/echo", "--type=merge", "-p", json.dumps(patch)))
        ok(
            run(
                cluster, "kubectl", "wait", "-n", JOURNEY_NS, "function/echo", "--for=condition=Ready", "--timeout=120s"
            )
        )
        first = [call_gateway(cluster, "journey-1", f"call {i}") for i in range(4)]
        assert [a["requests"] for a in first] == [1, 2, 3, 4], first
        assert len({a["instance"] for a in first}) == 1
        released_uid = pod_uid(cluster, first[0]["instance"])
        deadline = time.monotonic() + 120
        while instance_pods(cluster):  # idle release: preStop, then the pod is deleted
            assert time.monotonic() < deadline, "the idle session's pod was never released"
            time.sleep(2)
        woken = call_gateway(cluster, "journey-1", "again")
        assert woken["requests"] == 5, woken  # read back from the session's directory on the claim
        assert pod_uid(cluster, woken["instance"]) != released_uid  # a new pod (names are per session)
        other = call_gateway(cluster, "journey-2", "hello")
        assert other["requests"] == 1  # another session starts from its own, empty directory
        stored = json.loads(ok(run(cluster, "kubectl", "-n", JOURNEY_NS, "get", "pods", "-o", "json")))["items"]
        for pod in stored:
            assert [v["name"] for v in pod["spec"]["volumes"]] == ["voltgrid-session"], pod["spec"]["volumes"]
        root = Path(f"/tmp/voltgrid-e2e-sessions/voltgrid-example-sessions-{JOURNEY_NS}/{JOURNEY_NS}/echo")
        assert (root / "journey-1" / "requests").read_text() == "5"
    finally:
        run(cluster, "kubectl", "delete", "namespace", JOURNEY_NS, "--ignore-not-found", "--wait=true", timeout=300)
        run(cluster, "kubectl", "delete", "pv", f"voltgrid-example-sessions-{JOURNEY_NS}", "--ignore-not-found")


MCP_NS = "vg-mcp"


class RoundRobin(httpx2.AsyncBaseTransport):
    """Each request to the next gateway pod, as a load balancer in front of the replicas would."""

    def __init__(self, hosts: list[str]) -> None:
        self._hosts = itertools.cycle(hosts)
        self._inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        request.url = request.url.copy_with(host=next(self._hosts), port=8080)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def gateway_pod_ips(cluster: Any) -> list[str]:
    selector = "app.kubernetes.io/component=gateway"
    jsonpath = "jsonpath={.items[*].status.podIP}"
    return ok(run(cluster, "kubectl", "-n", HELM_NS, "get", "pods", "-l", selector, "-o", jsonpath)).split()


def session_rows(ip: str) -> list[str]:
    request = urllib.request.Request(
        f"http://{ip}:8080/_voltgrid/v1/functions/{MCP_NS}/notes/sessions",
        headers={"Authorization": f"Bearer {API_TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return sorted(item["sessionId"] for item in json.loads(answer.read())["items"])


async def mcp_conversation(hosts: list[str], tag: str, started: asyncio.Queue[str], go: asyncio.Event) -> None:
    """One MCP session with the official SDK, its requests alternating between the gateway pods: it
    initializes, says so, waits for ``go``, then calls for 6 s (twice the Function's idleTimeout)."""
    client = httpx2.AsyncClient(transport=RoundRobin(hosts), timeout=httpx2.Timeout(30, read=300))
    async with (
        client,
        streamable_http_client(f"http://{hosts[0]}:8080/fn/{MCP_NS}/notes/mcp", http_client=client) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        await session.call_tool("add_note", {"text": tag})
        await started.put(tag)
        await go.wait()
        for _ in range(6):  # spaced past the Function's idleTimeout in total, never idle that long
            listed = await session.call_tool("list_notes", {})
            assert not listed.is_error, listed
            assert tag in json.dumps(listed.model_dump()), listed
            await asyncio.sleep(1)


@pytest.mark.timeout(600)
async def test_mcp_sessions_across_two_gateway_pods(cluster: Any) -> None:
    """The official MCP SDK through both gateway pods, each request of a session to the next pod
    (half of the initializes land on the replica that does not own the minted id): calls past
    idleTimeout never fail, the Session API of either pod lists each live session once, and after the
    SDK's DELETE neither lists it and its instance is gone."""
    ok(run(cluster, "kubectl", "create", "namespace", MCP_NS))
    try:
        ok(run(cluster, "kubectl", "label", "namespace", MCP_NS, "voltgrid.dev/enabled=true"))
        ok(run(cluster, "kubectl", "apply", "-n", MCP_NS, "-f", "examples/mcp-server.yaml"))
        patch = {"spec": {"sessions": {"idleTimeout": "3s"}}}
        ok(run(cluster, "kubectl", "patch", "-n", MCP_NS, "function/notes", "--type=merge", "-p", json.dumps(patch)))
        ready = ["--for=condition=Ready", "--timeout=120s"]
        ok(run(cluster, "kubectl", "wait", "-n", MCP_NS, "function/notes", *ready))
        hosts = gateway_pod_ips(cluster)
        assert len(hosts) == 2, hosts
        started: asyncio.Queue[str] = asyncio.Queue()
        go = asyncio.Event()
        tasks = [asyncio.create_task(mcp_conversation(hosts, f"note-{i}", started, go)) for i in range(6)]
        async with asyncio.timeout(240):  # cold starts under gVisor
            for _ in tasks:
                await started.get()
        live = [session_rows(ip) for ip in hosts]
        assert live[0] == live[1] and len(live[0]) == 6, live  # once each, on both pods
        go.set()
        await asyncio.gather(*tasks)
        deadline = time.monotonic() + 60
        while any(session_rows(ip) for ip in hosts):
            assert time.monotonic() < deadline, [session_rows(ip) for ip in hosts]
            await asyncio.sleep(1)
        selector = "voltgrid.dev/function=notes"
        while ok(run(cluster, "kubectl", "-n", MCP_NS, "get", "pods", "-l", selector, "-o", "name")).strip():
            assert time.monotonic() < deadline + 60, "instances of ended MCP sessions were not released"
            await asyncio.sleep(1)
    finally:
        run(cluster, "kubectl", "delete", "namespace", MCP_NS, "--ignore-not-found", "--wait=true", timeout=300)


PROTOCOLS_NS = "vg-protocols"


def a2a_card(url: str) -> AgentCard:
    """The A2A agent's card as a client configures it: the JSON-RPC binding at ``url``."""
    interface = AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0")
    return AgentCard(name="counter", version="1.0", supported_interfaces=[interface])


async def a2a_say(url: str, text: str, context: str = "") -> tuple[str, str]:
    """One message with the official a2a-sdk client: (the agent's answer, its context id)."""
    message = Message(message_id=str(uuid.uuid4()), role=Role.ROLE_USER, parts=[Part(text=text)], context_id=context)
    http = httpx.AsyncClient(timeout=240)  # a cold start under gVisor
    client = await create_client(a2a_card(url), ClientConfig(streaming=False, httpx_client=http))
    async with http, client:
        events = [event async for event in client.send_message(SendMessageRequest(message=message))]
    task = events[-1].task
    return task.status.message.parts[0].text, task.context_id


@pytest.mark.timeout(600)
async def test_grpc_and_a2a_examples_across_two_gateway_pods(cluster: Any) -> None:
    """The gRPC example with grpcio and the A2A example with the a2a-sdk client, each conversation
    begun on one gateway pod and continued on the other: the same instance answers, and counts on."""
    ok(run(cluster, "kubectl", "create", "namespace", PROTOCOLS_NS))
    try:
        ok(run(cluster, "kubectl", "label", "namespace", PROTOCOLS_NS, "voltgrid.dev/enabled=true"))
        for example in ("examples/grpc-echo.yaml", "examples/a2a-agent.yaml"):
            ok(run(cluster, "kubectl", "apply", "-n", PROTOCOLS_NS, "-f", example))
        ready = ["--for=condition=Ready", "--timeout=120s"]
        ok(run(cluster, "kubectl", "wait", "-n", PROTOCOLS_NS, "function/grpc-echo", "function/a2a-agent", *ready))
        first, second = gateway_pod_ips(cluster)
        md = (("x-voltgrid-function", f"{PROTOCOLS_NS}/grpc-echo"), ("x-voltgrid-session", "s-e2e"))
        unary = "/voltgrid.example.Echo/Unary"
        async with grpc.aio.insecure_channel(f"{first}:8080") as a, grpc.aio.insecure_channel(f"{second}:8080") as b:
            opened = (await a.unary_unary(unary)(b"hi", metadata=md, timeout=240)).decode()
            instance = opened.split(":")[0]
            assert opened == f"{instance}:1:hi"
            assert (await b.unary_unary(unary)(b"yo", metadata=md, timeout=60)).decode() == f"{instance}:2:yo"
        base = f"fn/{PROTOCOLS_NS}/a2a-agent/"
        said, context = await a2a_say(f"http://{first}:8080/{base}", "hello")
        again, same = await a2a_say(f"http://{second}:8080/{base}", "again", context)
        assert same == context and said.startswith("message 1 ") and again.startswith("message 2 "), (said, again)
        assert said.rsplit(" ", 1)[1] == again.rsplit(" ", 1)[1]  # the same instance
    finally:
        run(cluster, "kubectl", "delete", "namespace", PROTOCOLS_NS, "--ignore-not-found", "--wait=true", timeout=300)


SANDBOX_NS = "vg-sandboxes"
SANDBOXES = "/_voltgrid/v1/sandboxes"


def gateway_call(
    url: str, method: str = "GET", body: Any = None, token: str = API_TOKEN, timeout: float = 120
) -> tuple[int, Any]:
    """One call to the gateway's API: (status, JSON or NDJSON events or text)."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            status, text = answer.status, answer.read().decode()
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read().decode()
    if "\n{" in text.strip():
        return status, [json.loads(line) for line in text.splitlines() if line]
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def pool_template(name: str, replicas: int) -> dict[str, Any]:
    writable = [{"name": n, "value": v} for n, v in (("HOME", "/tmp"), ("JUPYTER_RUNTIME_DIR", "/tmp/jupyter"))]
    return {
        "apiVersion": "voltgrid.dev/v1alpha1",
        "kind": "SandboxTemplate",
        "metadata": {"name": name, "namespace": SANDBOX_NS},
        "spec": {
            "image": f"{IMAGE['image.repository']}:{IMAGE['image.tag']}",
            "command": ["python3", "-m", "voltgrid.sandbox_agent", "--workspace", "/tmp"],
            "env": writable,
            "resources": {"cpu": "200m", "memory": "512Mi"},  # requests too: three at once on a 2-CPU node
            "replicas": replicas,
            "ttl": "10m",
            "maxTtl": "1h",
        },
    }


def pool_pods(cluster: Any, claimed: bool, template: str = "py") -> list[dict[str, Any]]:
    selector = f"voltgrid.dev/sandbox-template={template},voltgrid.dev/claimed{'=' if claimed else '!='}true"
    listed = json.loads(ok(run(cluster, "kubectl", "-n", SANDBOX_NS, "get", "pods", "-l", selector, "-o", "json")))
    return [p for p in listed["items"] if not p["metadata"].get("deletionTimestamp")]


def wait_until(what: str, check: Any, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)
    return value


@pytest.mark.timeout(900)
def test_sandbox_claims_from_a_warm_pool_through_two_gateway_pods_under_gvisor(cluster: Any) -> None:
    """The Sandbox API as a user reaches it: kubectl apply the pool example, claim through one gateway
    pod, run code through the other; the sandbox cannot reach the gateway or another sandbox; deleted
    and expired sandboxes are burnt; a wrong token opens nothing."""
    ok(run(cluster, "kubectl", "create", "namespace", SANDBOX_NS))
    try:
        ok(run(cluster, "kubectl", "apply", "-n", SANDBOX_NS, "-f", "examples/sandbox-pool.yaml"))
        wait_until("two warm sandboxes", lambda: len([p for p in pool_pods(cluster, False, "python") if all(
            c["status"] == "True" for c in p["status"].get("conditions", []) if c["type"] == "Ready"
        ) and p["status"].get("podIP")]) >= 2, 300)  # fmt: skip
        first, second = (f"http://{ip}:8080" for ip in gateway_pod_ips(cluster))
        claim = {"template": "python", "namespace": SANDBOX_NS, "env": {"GREETING": "hi"}, "metadata": {"run": "e2e"}}
        started = time.monotonic()
        status, sandbox = gateway_call(first + SANDBOXES, "POST", claim)
        claim_s = time.monotonic() - started
        assert status == 201, sandbox
        token, url = sandbox["token"], sandbox["url"]
        status, events = gateway_call(
            second + url + "/execute", "POST", {"code": "import os\nprint(os.environ['GREETING'])\n6*7"}, token
        )
        assert status == 200 and events[0] == {"type": "stdout", "text": "hi\n"}, events
        assert events[1]["data"]["text/plain"] == "42"
        print(f"claim through the gateway: {claim_s * 1000:.0f} ms; first result {time.monotonic() - started:.2f} s")
        for wrong in ("", "wrong-token-0123456789", API_TOKEN):  # none, a guess, the operator's: all 401
            assert gateway_call(second + url + "/execute", "POST", {"code": "1"}, wrong)[0] == 401
        [pod] = [
            p
            for p in pool_pods(cluster, True, "python")
            if p["metadata"]["labels"]["voltgrid.dev/sandbox-id"] == sandbox["sandboxId"]
        ]
        assert pod["spec"]["runtimeClassName"] == "gvisor"
        assert token not in json.dumps(pod)  # only the token's digest is written down
        # A second sandbox; neither can reach the other's agent nor the gateway's internal API.
        status, other = gateway_call(second + SANDBOXES, "POST", {"template": "python", "namespace": SANDBOX_NS})
        assert status == 201, other
        [other_pod] = [
            p
            for p in pool_pods(cluster, True, "python")
            if p["metadata"]["labels"]["voltgrid.dev/sandbox-id"] == other["sandboxId"]
        ]
        gateway_ip = first.split("//")[1].split(":")[0]
        probe = (
            "import socket\n"
            "def reach(host, port):\n"
            "    try:\n"
            "        socket.create_connection((host, port), timeout=3).close()\n"
            "        return 'open'\n"
            "    except OSError as e:\n"
            "        return type(e).__name__\n"
            f"print(reach({other_pod['status']['podIP']!r}, 49999), reach({gateway_ip!r}, 8080))"
        )
        status, events = gateway_call(first + url + "/execute", "POST", {"code": probe}, token)
        assert status == 200 and "open" not in events[0]["text"], events
        # Burn after use: DELETE removes the pod; the token then opens nothing on either gateway pod.
        status, deleted = gateway_call(first + other["url"], "DELETE", token=other["token"])
        assert status == 200 and deleted["deleted"] is True
        wait_until("the deleted sandbox's pod gone", lambda: other["sandboxId"] not in {
            p["metadata"]["labels"]["voltgrid.dev/sandbox-id"] for p in pool_pods(cluster, True, "python")
        }, 60)  # fmt: skip
        for gw in (first, second):
            assert gateway_call(gw + other["url"] + "/execute", "POST", {"code": "1"}, other["token"])[0] == 404
        # A short claim expires and is burnt by the gateway that owns it.
        status, short = gateway_call(
            second + SANDBOXES, "POST", {"template": "python", "namespace": SANDBOX_NS, "ttl": "5s"}
        )
        assert status == 201, short
        wait_until("the expired sandbox's pod gone", lambda: short["sandboxId"] not in {
            p["metadata"]["labels"]["voltgrid.dev/sandbox-id"] for p in pool_pods(cluster, True, "python")
        }, 60)  # fmt: skip
        status, listed = gateway_call(second + SANDBOXES)
        assert status == 200 and {i["sandboxId"] for i in listed["items"]} >= {sandbox["sandboxId"]}
        assert short["sandboxId"] not in {i["sandboxId"] for i in listed["items"]}
        template = json.loads(
            ok(run(cluster, "kubectl", "-n", SANDBOX_NS, "get", "sandboxtemplate", "python", "-o", "json"))
        )
        wait_until("the pool refilled", lambda: json.loads(ok(run(
            cluster, "kubectl", "-n", SANDBOX_NS, "get", "sandboxtemplate", "python", "-o", "json"
        )))["status"].get("ready") == 2, 300)  # fmt: skip
        assert template["status"]["claimed"] >= 1
    finally:
        run(cluster, "kubectl", "delete", "namespace", SANDBOX_NS, "--ignore-not-found", "--wait=true", timeout=300)


def claim_sandbox(gateway: str, **body: Any) -> dict[str, Any]:
    status, sandbox = gateway_call(gateway + SANDBOXES, "POST", {"template": "py", "namespace": SANDBOX_NS, **body})
    assert status == 201, sandbox
    return dict(sandbox)


def run_in(gateway: str, sandbox: dict[str, Any], code: str, language: str = "python", timeout: float = 60) -> Any:
    body = {"code": code, "language": language, "timeout": timeout}
    return gateway_call(gateway + sandbox["url"] + "/execute", "POST", body, sandbox["token"], timeout + 60)


def outcome(attack: Any, victim: dict[str, Any]) -> str:
    """What a hostile call came to, whatever it was: a status and its error code, or the exception."""
    try:
        status, body = attack(victim)
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as exc:
        return type(getattr(exc, "reason", exc)).__name__  # the sandbox died mid-answer: the stream broke
    if isinstance(body, list):
        errors = [e.get("name") for e in body if e.get("type") == "error"]
        return f"{status} {errors or body[-1].get('status')}"
    return f"{status} {body.get('error', {}).get('code', '') if isinstance(body, dict) else ''}"


def upload_gib(gateway: str, sandbox: dict[str, Any]) -> tuple[int, Any]:
    chunk = os.urandom(1024 * 1024)
    request = urllib.request.Request(
        gateway + sandbox["url"] + "/files/big.bin",
        data=(chunk for _ in range(1024)),
        method="PUT",
        headers={"Authorization": f"Bearer {sandbox['token']}", "Transfer-Encoding": "chunked"},
    )
    try:
        with urllib.request.urlopen(request, timeout=600) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.mark.timeout(900)
def test_hostile_code_stays_inside_its_sandbox(cluster: Any) -> None:
    """A 1 GiB upload, a memory hog and a fork bomb, each in a sandbox of its own under gVisor: each hits
    its own sandbox's limits (or fits in them), while another sandbox, the gateway and the node serve on."""
    ok(run(cluster, "kubectl", "create", "namespace", SANDBOX_NS))
    try:
        ok(run(cluster, "kubectl", "apply", "-f", "-", stdin=json.dumps(pool_template("py", 2))))
        wait_until("two warm sandboxes", lambda: sum(
            1 for p in pool_pods(cluster, False) if any(
                c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", [])
            )
        ) >= 2, 300)  # fmt: skip
        first, second = (f"http://{ip}:8080" for ip in gateway_pod_ips(cluster))
        bystander = claim_sandbox(second)
        assert run_in(second, bystander, "x = 41")[0] == 200
        attacks = {
            "1 GiB upload": lambda v: upload_gib(first, v),
            "memory hog": lambda v: run_in(first, v, "b = bytearray(2 * 1024**3)\nb[::4096] = b'x' * (len(b) // 4096)"),
            "fork bomb": lambda v: gateway_call(  # a command: killed with its process group at its timeout
                first + v["url"] + "/commands",
                "POST",
                {"cmd": ["python3", "-c", "import os\nwhile True:\n    os.fork()"], "timeout": 20},
                v["token"],
                120,
            ),
        }
        for name, attack in attacks.items():
            victim = claim_sandbox(first)  # a fresh one each: the last may have died of it
            started = time.monotonic()
            print(f"{name}: {outcome(attack, victim)} after {time.monotonic() - started:.1f}s")
            status, events = run_in(second, bystander, "print(x + 1)")
            assert status == 200 and events[0] == {"type": "stdout", "text": "42\n"}, (name, events)
            assert gateway_call(second + "/_voltgrid/readyz", token="")[0] == 200
            nodes = json.loads(ok(run(cluster, "kubectl", "get", "nodes", "-o", "json")))["items"]
            assert [c["status"] for c in nodes[0]["status"]["conditions"] if c["type"] == "Ready"] == ["True"]
            gateway_call(first + victim["url"], "DELETE", token=victim["token"])
    finally:
        run(cluster, "kubectl", "delete", "namespace", SANDBOX_NS, "--ignore-not-found", "--wait=true", timeout=300)


def sandbox_object(cluster: Any, name: str) -> dict[str, Any]:
    out = run(cluster, "kubectl", "-n", SANDBOX_NS, "get", "sandbox", name, "-o", "json")
    return json.loads(out.stdout) if out.returncode == 0 else {}


@pytest.mark.timeout(600)
def test_a_sandbox_object_with_a_template_ref_binds_from_the_pool_and_serves_through_the_gateway(
    cluster: Any,
) -> None:
    """kubectl/GitOps: ``kubectl apply`` a Sandbox with ``templateRef`` and the SHA-256 of a token the
    user made; the operator binds a warm pod of the pool (its signed claim), both gateway pods learn
    it from the pod's annotations and serve ``status.url`` with that token; deleting the Sandbox
    burns the pod. (Written without a cluster to run it on: the lead runs it.)"""
    ok(run(cluster, "kubectl", "create", "namespace", SANDBOX_NS))
    try:
        ok(run(cluster, "kubectl", "apply", "-f", "-", stdin=json.dumps(pool_template("py", 1))))
        wait_until("a warm sandbox", lambda: [p for p in pool_pods(cluster, False) if any(
            c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", [])
        )], 300)  # fmt: skip
        token = os.urandom(32).hex()  # as `openssl rand -hex 32` makes it
        digest = hashlib.sha256(token.encode()).hexdigest()  # `printf %s "$TOKEN" | sha256sum`
        manifest = {
            "apiVersion": "voltgrid.dev/v1alpha1",
            "kind": "Sandbox",
            "metadata": {"name": "from-git", "namespace": SANDBOX_NS},
            "spec": {
                "templateRef": "py",
                "tokenSha256": digest,
                "ttl": "5m",
                "env": [{"name": "GREETING", "value": "from-kubectl"}],
            },
        }
        started = time.monotonic()
        ok(run(cluster, "kubectl", "apply", "-f", "-", stdin=json.dumps(manifest)))
        st = wait_until(
            "the Sandbox bound",
            lambda: (s := sandbox_object(cluster, "from-git").get("status") or {}).get("sandboxId") and s,
            120,
        )
        bind_s = time.monotonic() - started
        assert st["phase"] == "Running" and st["url"] == f"{SANDBOXES}/{st['sandboxId']}", st
        [pod] = [p for p in pool_pods(cluster, True) if p["metadata"]["name"] == st["podName"]]
        assert pod["metadata"]["labels"]["voltgrid.dev/sandbox"] == "from-git"
        assert pod["metadata"]["labels"]["voltgrid.dev/sandbox-id"] == st["sandboxId"]
        assert pod["spec"]["runtimeClassName"] == "gvisor"
        assert token not in json.dumps(pod) + json.dumps(sandbox_object(cluster, "from-git"))
        first, second = (f"http://{ip}:8080" for ip in gateway_pod_ips(cluster))
        code = {"code": "import os\nprint(os.environ['GREETING'])\n6*7"}
        for gw in (first, second):  # each replica learns the sandbox from the pod's annotations (its watch)
            status, events = wait_until(
                "the gateway serving it",
                lambda gw=gw: (r := gateway_call(gw + st["url"] + "/execute", "POST", code, token))[0] != 404 and r,
                60,
            )
            assert status == 200 and events[0] == {"type": "stdout", "text": "from-kubectl\n"}, events
            assert events[1]["data"]["text/plain"] == "42"
        print(f"Sandbox object bound through the operator: {bind_s:.2f} s from kubectl apply")
        for wrong in ("", "wrong-token-0123456789", API_TOKEN):
            assert gateway_call(first + st["url"] + "/execute", "POST", {"code": "1"}, wrong)[0] == 401
        wait_until("the pool refilled", lambda: json.loads(ok(run(
            cluster, "kubectl", "-n", SANDBOX_NS, "get", "sandboxtemplate", "py", "-o", "json"
        )))["status"].get("ready") == 1, 300)  # fmt: skip
        # Burn after use: deleting the Sandbox deletes its pod; the token then opens nothing.
        ok(run(cluster, "kubectl", "-n", SANDBOX_NS, "delete", "sandbox", "from-git", "--wait=true"))
        wait_until("the Sandbox's pod gone", lambda: st["podName"] not in {
            p["metadata"]["name"] for p in pool_pods(cluster, True)
        }, 60)  # fmt: skip
        for gw in (first, second):
            wait_until("the gateway forgetting it", lambda gw=gw: gateway_call(
                gw + st["url"] + "/execute", "POST", {"code": "1"}, token
            )[0] == 404, 30)  # fmt: skip
    finally:
        run(cluster, "kubectl", "delete", "namespace", SANDBOX_NS, "--ignore-not-found", "--wait=true", timeout=300)


TRIGGERS_NS = "vg-triggers"
#: Messages published to the queue trigger, and the session keys they carry in turn.
QUEUE_MESSAGES = 10_000
QUEUE_KEYS = 8
#: The handler of the trigger test: appends "<instance> <event id> <subject>" to its session's file.
RECORDER = """
import http.server, os, socket
INSTANCE = socket.gethostname()
LOG = os.path.join(os.environ["VOLTGRID_STORAGE_DIR"], "events.log")
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        line = f"{INSTANCE} {self.headers.get('ce-id')} {self.headers.get('ce-subject', '-')}\\n"
        with open(LOG, "a") as log:
            log.write(line)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8080"))), Handler).serve_forever()
"""


def trigger_function(name: str, triggers: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "voltgrid.dev/v1alpha1",
        "kind": "Function",
        "metadata": {"name": name, "namespace": TRIGGERS_NS},
        "spec": {
            "image": "voltgrid/voltgrid:0.1.0",
            "command": ["python3", "-c", RECORDER],
            "sessions": {"affinity": "Header", "header": "X-Voltgrid-Session", "idleTimeout": "10m"},
            "storage": {"claimName": "sessions", "mountPath": "/data"},
            "scaling": {"maxInstances": 20},
            "triggers": triggers,
        },
    }


def recorded(root: Path, function: str) -> dict[str, list[list[str]]]:
    """Each session's recorded lines ([instance, event id, subject]) from the host side of its storage."""
    out: dict[str, list[list[str]]] = {}
    for log in (root / TRIGGERS_NS / function).glob("*/events.log"):
        out[log.parent.name] = [line.split() for line in log.read_text().splitlines() if line.strip()]
    return out


def dispatcher(cluster: Any, gateway: str, replica: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    command = [
        str(ROOT / ".venv/bin/voltgrid"),
        *("triggers", "--gateway", gateway, "--lease-namespace", TRIGGERS_NS),
        *("--replica", replica, "--host", "127.0.0.1", "--port", str(port)),
    ]
    with log.open("wb") as out:
        return subprocess.Popen(command, env=env(cluster), stdout=out, stderr=subprocess.STDOUT)


def trigger_functions() -> list[dict[str, Any]]:
    """``orders`` (a Redis stream read through the Secret ``redis``, keyed sessions), ``ticker``
    (@every 10s), ``yearly`` (a yearly cron)."""
    queue = {
        "name": "orders",
        "type": "queue",
        "queue": {"broker": "RedisStreams", "urlFrom": {"name": "redis", "key": "url"}, "queue": "orders"},
        "session": {"source": "Key"},
        "retry": {"maxRetries": 5, "minBackoff": "1s", "maxBackoff": "5s"},
    }
    tick = {"name": "tick", "type": "cron", "cron": {"schedule": "@every 10s"}}
    tick["session"] = {"source": "Fixed", "name": "ticks"}
    yearly = {"name": "yearly", "type": "cron", "cron": {"schedule": "0 0 1 1 *"}}
    return [
        trigger_function("orders", [queue]),
        trigger_function("ticker", [tick]),
        trigger_function("yearly", [yearly]),
    ]


async def publish(url: str) -> None:
    import redis.asyncio as redis  # noqa: PLC0415 (only this test)

    client = redis.Redis.from_url(url)
    try:
        for n in range(QUEUE_MESSAGES):
            await client.xadd("orders", {"data": str(n), "key": f"k-{n % QUEUE_KEYS}"})
    finally:
        await client.aclose()


def delivered(storage: Path) -> set[str]:
    return {line[1] for lines in recorded(storage, "orders").values() for line in lines}


async def deliver_across_a_crash(storage: Path, procs: list[subprocess.Popen[bytes]], logs: Path) -> None:
    """Wait for a third of the stream, SIGKILL the first dispatcher, wait for all of it."""
    async with asyncio.timeout(600):
        while len(delivered(storage)) < QUEUE_MESSAGES // 3:  # noqa: ASYNC110 (polling what is tested)
            await asyncio.sleep(0.5)
        procs[0].kill()  # its unacknowledged messages must not be lost
        while len(delivered(storage)) < QUEUE_MESSAGES:
            assert procs[1].poll() is None, (logs / "r1.log").read_text()[-3000:]
            await asyncio.sleep(1)


@pytest.mark.timeout(900)
async def test_queue_and_cron_triggers_through_the_gateway_across_a_dispatcher_crash(
    cluster: Any, tmp_path: Path
) -> None:
    """Two dispatcher replicas (the `voltgrid triggers` command, against this cluster) deliver a Redis
    stream of 10,000 messages through the chart's gateway into gVisor pods; one replica is SIGKILLed
    mid-stream: nothing is lost, each session key stays on one instance, duplicates are counted. An
    `@every 10s` cron fires each tick once with both replicas; a Function whose only trigger is a
    yearly cron runs no pod; a malformed CloudEvent is refused with 400 naming the problem."""
    from brokers import redis_available, redis_server  # noqa: PLC0415 (the tests' broker harness)

    assert redis_available(), "redis-server is missing: e2e/cluster/install-deps.sh installs it"
    ok(run(cluster, "kubectl", "create", "namespace", TRIGGERS_NS))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ok(run(cluster, "kubectl", "label", "namespace", TRIGGERS_NS, "voltgrid.dev/enabled=true"))
        ok(run(cluster, "kubectl", "apply", "-n", TRIGGERS_NS, "-f", "examples/storage/sessions-claim.yaml"))
        example_claim_volume(cluster, TRIGGERS_NS)
        storage = Path(f"/tmp/voltgrid-e2e-sessions/voltgrid-example-sessions-{TRIGGERS_NS}")
        with redis_server(tmp_path) as broker:
            secret = ["secret", "generic", "redis", "-n", TRIGGERS_NS, f"--from-literal=url={broker.url}"]
            ok(run(cluster, "kubectl", "create", *secret))
            manifest = "\n---\n".join(json.dumps(f) for f in trigger_functions())
            ok(run(cluster, "kubectl", "apply", "-f", "-", stdin=manifest))
            names = ["function/orders", "function/ticker", "function/yearly"]
            ok(run(cluster, "kubectl", "wait", "-n", TRIGGERS_NS, *names, "--for=condition=Ready", "--timeout=120s"))
            gateway = f"http://{gateway_pod_ips(cluster)[0]}:8080"
            ports = [free_port(), free_port()]
            procs = [dispatcher(cluster, gateway, f"r{i}", ports[i], tmp_path / f"r{i}.log") for i in range(2)]
            await publish(broker.url)
            await deliver_across_a_crash(storage, procs, tmp_path)
        sessions = recorded(storage, "orders")
        duplicates = sum(len(lines) for lines in sessions.values()) - len(delivered(storage))
        print(f"queue: {QUEUE_MESSAGES} published, {len(delivered(storage))} delivered, {duplicates} duplicates")
        assert len(sessions) == QUEUE_KEYS
        assert all(len({line[0] for line in lines}) == 1 for lines in sessions.values())  # one instance per key
        assert len({lines[0][0] for lines in sessions.values()}) == QUEUE_KEYS  # the burst scaled out: one each
        assert duplicates <= 2 * 32 * 2, duplicates  # only around the crash: at most what was in flight
        tick_ids = [line[1] for line in recorded(storage, "ticker").get("ticks", [])]
        assert len(tick_ids) >= 2 and len(tick_ids) == len(set(tick_ids)), tick_ids  # each tick once
        selector = "voltgrid.dev/function=yearly"
        assert not ok(run(cluster, "kubectl", "-n", TRIGGERS_NS, "get", "pods", "-l", selector, "-o", "name")).strip()
        async with httpx.AsyncClient() as http:
            refused = await http.post(
                f"http://127.0.0.1:{ports[1]}/events/{TRIGGERS_NS}",
                content=b"{not json",
                headers={"Content-Type": "application/cloudevents+json"},
            )
        assert refused.status_code == 400 and refused.text, refused.text
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)
        run(cluster, "kubectl", "delete", "namespace", TRIGGERS_NS, "--ignore-not-found", "--wait=true", timeout=300)
        drop_example_claim(cluster, TRIGGERS_NS)


#: A handler that fails an event's first two attempts (body fail-twice) or all of them (body always),
#: counting attempts per event id in memory: retries of one key come back to this instance.
FLAKY = """
import collections, http.server, os
ATTEMPTS = collections.Counter()
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        ATTEMPTS[self.headers.get("ce-id")] += 1
        ok = body == b"fail-twice" and ATTEMPTS[self.headers.get("ce-id")] >= 3
        self.send_response(200 if ok else 500)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8080"))), Handler).serve_forever()
"""


def metric(url: str, name: str, trigger: str) -> float:
    try:
        text = httpx.get(url + "/metrics", timeout=10).text
    except httpx.ConnectError:
        return 0.0  # the dispatcher is still starting
    pattern = rf'^{name}_total{{trigger="{re.escape(trigger)}"}} ([0-9.e+]+)$'
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.timeout(600)
async def test_a_queue_trigger_retries_then_dead_letters_on_the_cluster(cluster: Any, tmp_path: Path) -> None:
    """Through the chart's gateway into a gVisor pod: a handler failing twice succeeds on the third
    attempt; an always-failing one ends in the dead-letter stream after maxRetries, acknowledged."""
    import redis.asyncio as redis  # noqa: PLC0415 (only these tests)

    from brokers import redis_server  # noqa: PLC0415 (the tests' broker harness)

    ok(run(cluster, "kubectl", "create", "namespace", TRIGGERS_NS))
    proc: subprocess.Popen[bytes] | None = None
    try:
        ok(run(cluster, "kubectl", "label", "namespace", TRIGGERS_NS, "voltgrid.dev/enabled=true"))
        with redis_server(tmp_path) as broker:
            secret = ["secret", "generic", "redis", "-n", TRIGGERS_NS, f"--from-literal=url={broker.url}"]
            ok(run(cluster, "kubectl", "create", *secret))
            queue = {
                "name": "jobs",
                "type": "queue",
                "queue": {"broker": "RedisStreams", "urlFrom": {"name": "redis", "key": "url"}, "queue": "jobs"},
                "session": {"source": "Key"},
                "retry": {"maxRetries": 3, "minBackoff": "1s", "maxBackoff": "2s"},
            }
            function = {
                "apiVersion": "voltgrid.dev/v1alpha1",
                "kind": "Function",
                "metadata": {"name": "flaky", "namespace": TRIGGERS_NS},
                "spec": {
                    "image": "voltgrid/voltgrid:0.1.0",
                    "command": ["python3", "-c", FLAKY],
                    "sessions": {"affinity": "Header", "header": "X-Voltgrid-Session", "idleTimeout": "10m"},
                    "triggers": [queue],
                },
            }
            ok(run(cluster, "kubectl", "apply", "-f", "-", stdin=json.dumps(function)))
            ok(
                run(
                    cluster,
                    "kubectl",
                    "wait",
                    "-n",
                    TRIGGERS_NS,
                    "function/flaky",
                    "--for=condition=Ready",
                    "--timeout=120s",
                )
            )
            gateway = f"http://{gateway_pod_ips(cluster)[0]}:8080"
            port = free_port()
            proc = dispatcher(cluster, gateway, "r0", port, tmp_path / "r0.log")
            client = redis.Redis.from_url(broker.url)
            try:
                await client.xadd("jobs", {"data": "fail-twice", "key": "k-1"})
                await client.xadd("jobs", {"data": "always", "key": "k-1"})
                trigger, url = f"{TRIGGERS_NS}/flaky/jobs", f"http://127.0.0.1:{port}"
                async with asyncio.timeout(300):
                    while metric(url, "voltgrid_trigger_dead_lettered", trigger) < 1:
                        assert proc.poll() is None, (tmp_path / "r0.log").read_text()[-3000:]
                        await asyncio.sleep(1)
                dead = await client.xrange("jobs.dead-letter")
                pending = await client.xpending("jobs", "voltgrid")
            finally:
                await client.aclose()
            assert metric(url, "voltgrid_trigger_delivered", trigger) == 1  # the third attempt of the first
            assert metric(url, "voltgrid_trigger_retried", trigger) == 2 + 3  # two, then maxRetries
            assert len(dead) == 1 and dead[0][1][b"data"] == b"always", dead
            assert pending["pending"] == 0, pending  # both acknowledged: one delivered, one dead-lettered
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(30)
        run(cluster, "kubectl", "delete", "namespace", TRIGGERS_NS, "--ignore-not-found", "--wait=true", timeout=300)


def trigger_states(cluster: Any, name: str) -> dict[str, str]:
    out = ok(run(cluster, "kubectl", "get", "-n", TRIGGERS_NS, f"function/{name}", "-o", "json"))
    return {e["name"]: e["reason"] for e in (json.loads(out).get("status") or {}).get("triggers") or []}


def event_reasons(cluster: Any, name: str) -> set[str]:
    selector = f"involvedObject.kind=Function,involvedObject.name={name}"
    out = ok(run(cluster, "kubectl", "get", "events", "-n", TRIGGERS_NS, "--field-selector", selector, "-o", "json"))
    return {e["reason"] for e in json.loads(out)["items"] if e.get("reportingComponent") == "voltgrid-triggers"}


def settled(cluster: Any, expected: dict[str, str]) -> bool:
    return trigger_states(cluster, "mixed") == expected and "SecretMissing" in event_reasons(cluster, "mixed")


@pytest.mark.timeout(300)
async def test_trigger_states_reach_the_function_status_and_events(cluster: Any, tmp_path: Path) -> None:
    """A dispatcher against this cluster writes status.triggers (a missing Secret, an invalid schedule, a
    working cron, each named) and Events on the Function; the operator sums them up in TriggersReady
    without dropping them, and the dispatcher's writes leave the operator's conditions in place."""
    ok(run(cluster, "kubectl", "create", "namespace", TRIGGERS_NS))
    proc: subprocess.Popen[bytes] | None = None
    try:
        ok(run(cluster, "kubectl", "label", "namespace", TRIGGERS_NS, "voltgrid.dev/enabled=true"))
        queue = {
            "name": "orders",
            "type": "queue",
            "queue": {"broker": "RabbitMQ", "urlFrom": {"name": "absent"}, "queue": "orders"},
        }
        tick = {"name": "tick", "type": "cron", "cron": {"schedule": "@every 1h"}}
        bad = {"name": "nightly", "type": "cron", "cron": {"schedule": "0 25 * * *"}}  # the CRD cannot check it
        manifest = "\n---\n".join(
            json.dumps(f) for f in (trigger_function("mixed", [queue, tick]), trigger_function("invalid", [bad]))
        )
        ok(run(cluster, "kubectl", "apply", "-f", "-", stdin=manifest))
        gateway = f"http://{gateway_pod_ips(cluster)[0]}:8080"
        proc = dispatcher(cluster, gateway, "r0", free_port(), tmp_path / "r0.log")
        expected = {"orders": "SecretMissing", "tick": "Scheduled"}
        async with asyncio.timeout(90):  # a flush every 10s, then the operator's reconcile
            while not settled(cluster, expected):  # noqa: ASYNC110 (polling what is tested)
                await asyncio.sleep(1)
            while trigger_states(cluster, "invalid") != {"nightly": "InvalidSchedule"}:  # noqa: ASYNC110 (as above)
                await asyncio.sleep(1)
        ok(run(cluster, "kubectl", "wait", "-n", TRIGGERS_NS, "function/mixed", "--for=condition=TriggersReady=false"))
        body = json.loads(ok(run(cluster, "kubectl", "get", "-n", TRIGGERS_NS, "function/mixed", "-o", "json")))
        conditions = {c["type"]: c for c in body["status"]["conditions"]}
        assert conditions["TriggersReady"]["reason"] == "SecretMissing", conditions
        assert "Ready" in conditions  # the dispatcher's write kept the operator's key
        assert trigger_states(cluster, "mixed") == expected  # and the operator's write kept the dispatcher's
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(30)
        run(cluster, "kubectl", "delete", "namespace", TRIGGERS_NS, "--ignore-not-found", "--wait=true", timeout=300)


DISPATCH_NS = "vg-dispatch"


def helm_triggers(cluster: Any, helm: str, enabled: bool) -> None:
    namespaces = f"{{{DISPATCH_NS}}}" if enabled else "null"
    ok(
        run(
            cluster,
            helm, "upgrade", RELEASE, "charts/voltgrid", "-n", HELM_NS, "--reuse-values",
            "--set", f"triggers.enabled={str(enabled).lower()}", "--set", f"triggers.secretNamespaces={namespaces}",
            "--wait", "--timeout", HELM_TIMEOUT,
            timeout=HELM_TIMEOUT_S,
        )
    )  # fmt: skip


@pytest.mark.timeout(2 * HELM_TIMEOUT_S + 420)
async def test_the_charts_dispatcher_reports_trigger_states_and_events_under_its_own_rbac(
    cluster: Any, helm: str
) -> None:
    """The chart's dispatcher Deployment under its own RBAC: it reads a Secret in a namespace it was
    given (and finds the key missing), holds its cron Lease, writes status.triggers and Events. (The
    local cluster runs no cluster DNS, so the Service names the chart wires between the gateway and
    the dispatcher do not resolve here: those hops are tested in process, tests/triggers.)"""
    ok(run(cluster, "kubectl", "create", "namespace", DISPATCH_NS))
    try:
        ok(run(cluster, "kubectl", "label", "namespace", DISPATCH_NS, "voltgrid.dev/enabled=true"))
        ok(
            run(
                cluster, "kubectl", "-n", DISPATCH_NS, "create", "secret", "generic", "broker", "--from-literal=other=x"
            )
        )
        queue = {"broker": "RedisStreams", "urlFrom": {"name": "broker", "key": "url"}, "queue": "jobs"}
        function = {
            "apiVersion": "voltgrid.dev/v1alpha1",
            "kind": "Function",
            "metadata": {"name": "hooks", "namespace": DISPATCH_NS},
            "spec": {
                "image": "voltgrid/voltgrid:0.1.0",
                "command": ["python3", "-c", FLAKY],  # never called: no event reaches it here
                "triggers": [
                    {"name": "jobs", "type": "queue", "queue": queue},
                    {"name": "tick", "type": "cron", "cron": {"schedule": "@every 1h"}},
                    {
                        "name": "hooks",
                        "type": "cloudevents",
                        "cloudEvents": {"filters": [{"attribute": "type", "prefix": "shop."}]},
                    },
                ],
            },
        }
        ok(run(cluster, "kubectl", "apply", "-f", "-", stdin=json.dumps(function)))
        helm_triggers(cluster, helm, True)
        expected = {"jobs": "SecretKeyMissing", "tick": "Scheduled", "hooks": "Routed"}
        deadline = time.monotonic() + 120
        while {k: v for k, v in trigger_states_in(cluster, DISPATCH_NS, "hooks").items() if k in expected} != expected:
            assert time.monotonic() < deadline, trigger_states_in(cluster, DISPATCH_NS, "hooks")
            await asyncio.sleep(2)
        selector = "involvedObject.kind=Function,involvedObject.name=hooks"
        events = json.loads(
            ok(run(cluster, "kubectl", "get", "events", "-n", DISPATCH_NS, "--field-selector", selector, "-o", "json"))
        )["items"]
        assert any(e.get("reportingComponent") == "voltgrid-triggers" for e in events), events
    finally:
        run(cluster, "kubectl", "delete", "namespace", DISPATCH_NS, "--ignore-not-found", "--wait=true", timeout=300)
        helm_triggers(cluster, helm, False)


def trigger_states_in(cluster: Any, namespace: str, name: str) -> dict[str, str]:
    out = run(cluster, "kubectl", "get", "-n", namespace, f"function/{name}", "-o", "json")
    if out.returncode != 0:
        return {}
    return {e["name"]: e["reason"] for e in (json.loads(out.stdout).get("status") or {}).get("triggers") or []}


@pytest.mark.timeout(HELM_TIMEOUT_S + 480)
def test_helm_uninstall_leaves_only_documented_leftovers(cluster: Any, helm: str) -> None:
    run(cluster, "kubectl", "-n", HELM_NS, "delete", "secret", "session-api", "--ignore-not-found")  # the test's own
    ok(run(cluster, "kubectl", "delete", "-n", "default", "function", "echo", "--ignore-not-found", "--wait=true"))
    uninstall = [helm, "uninstall", RELEASE, "-n", HELM_NS, "--wait", "--timeout", HELM_TIMEOUT]
    ok(run(cluster, *uninstall, timeout=HELM_TIMEOUT_S))
    deadline = time.monotonic() + 120
    while True:
        listed = ok(
            run(
                cluster,
                "kubectl",
                "-n",
                HELM_NS,
                "get",
                "all,cm,secret,pvc,sa,role,rolebinding,pdb,cronjob,ingress",
                "-o",
                "name",
            )
        )
        left = {tuple(n.split("/", 1)) for n in listed.split()}
        left = {(kind.split(".")[0], name) for kind, name in left if not name.startswith("kube-root-ca.crt")}
        left -= {("serviceaccount", "default")}
        if left <= LEFTOVERS or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert left <= LEFTOVERS, f"left behind in {HELM_NS}: {sorted(left - LEFTOVERS)}"
    selector = f"app.kubernetes.io/instance={RELEASE}"
    cluster_wide = (
        "clusterrole,clusterrolebinding,mutatingwebhookconfiguration,validatingwebhookconfiguration,clusterkopfpeering"
    )
    assert ok(run(cluster, "kubectl", "get", cluster_wide, "-l", selector, "-o", "name")).strip() == ""
    for crd in ("functions.voltgrid.dev", "sessions.voltgrid.dev", "sandboxes.voltgrid.dev"):
        ok(run(cluster, "kubectl", "get", "crd", crd))  # documented: CRDs stay (they hold user data)
    ok(run(cluster, "kubectl", "delete", "namespace", HELM_NS, "--wait=true", timeout=300))
    ok(run(cluster, "kubectl", "delete", "pv", f"voltgrid-sessions-{HELM_NS}", "--ignore-not-found"))


def resource_versions(cluster: Any) -> dict[str, str]:
    items = json.loads(ok(run(cluster, "kubectl", "get", "-f", "deploy/voltgrid.yaml", "-o", "json")))["items"]
    return {
        f"{i['kind']}/{i['metadata'].get('namespace', '')}/{i['metadata']['name']}": i["metadata"]["resourceVersion"]
        for i in items
    }


@pytest.mark.timeout(NOTES_TIMEOUT_S + 600)
def test_rendered_manifest_applies_serves_and_reapplies_without_changes(cluster: Any, voltgrid_image: str) -> None:
    manifest = "deploy/voltgrid.yaml"
    session_volume(cluster, MANIFEST_NS)
    run(cluster, "kubectl", "create", "namespace", MANIFEST_NS)
    token = run(cluster, "kubectl", "-n", MANIFEST_NS, "create", "secret", "generic", "voltgrid-gateway-internal",
                "--from-literal=token=e2e-" + os.urandom(16).hex())  # fmt: skip
    assert token.returncode == 0 or "AlreadyExists" in token.stderr, token.stderr
    key = Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    claims = run(cluster, "kubectl", "-n", MANIFEST_NS, "create", "secret", "generic", "voltgrid-sandbox-claims",
                 f"--from-literal=claim-key.pem={key}")  # fmt: skip
    assert claims.returncode == 0 or "AlreadyExists" in claims.stderr, claims.stderr
    try:
        ok(run(cluster, "kubectl", "apply", "-f", manifest, timeout=180))
        all_ready(cluster, MANIFEST_NS)
        # The same smoke test as the release's: its NOTES, pointed at the manifest's namespace.
        assert NOTES, "the helm tests did not run first"
        notes = NOTES[0].replace(HELM_NS, MANIFEST_NS)
        follow_notes(cluster, notes)
        second = ok(run(cluster, "kubectl", "apply", "-f", manifest, timeout=180))
        changed = [line for line in second.splitlines() if not line.endswith(" unchanged")]
        assert not changed, f"a second apply changed: {changed}"
        diff = run(cluster, "kubectl", "diff", "-f", manifest, timeout=180)
        assert diff.returncode == 0, f"client-side diff after apply:\n{diff.stdout}{diff.stderr}"
        ok(run(cluster, "kubectl", "apply", "--server-side", "--force-conflicts", "-f", manifest, timeout=180))
        diff = run(cluster, "kubectl", "diff", "--server-side", "-f", manifest, timeout=180)
        assert diff.returncode == 0, f"server-side diff after server-side apply:\n{diff.stdout}{diff.stderr}"
        before = resource_versions(cluster)
        ok(run(cluster, "kubectl", "apply", "--server-side", "-f", manifest, timeout=180))
        after = resource_versions(cluster)
        assert {k for k in after if after[k] != before.get(k)} == set(), "a second server-side apply changed objects"
    finally:
        run(cluster, "kubectl", "delete", "-n", "default", "function", "echo", "--ignore-not-found", "--wait=true")
        objects = [
            d for d in (ROOT / manifest).read_text().split("\n---\n") if "kind: CustomResourceDefinition" not in d
        ]
        run(
            cluster,
            "kubectl",
            "delete",
            "--ignore-not-found",
            "--wait=true",
            "-f",
            "-",
            stdin="\n---\n".join(objects),
            timeout=300,
        )
        run(cluster, "kubectl", "delete", "namespace", MANIFEST_NS, "--ignore-not-found", "--wait=true", timeout=300)
        run(cluster, "kubectl", "delete", "pv", f"voltgrid-sessions-{MANIFEST_NS}", "--ignore-not-found")
        drop_example_claim(cluster, "default")
