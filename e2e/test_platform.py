"""The whole platform on the real cluster: `voltgrid operator` and `voltgrid gateway --backend
kubernetes` as real processes, a Function called through the gateway.

Checks the division of labour of :mod:`voltgrid.controllers`: a Function without traffic has no pod
and is Ready; the gateway scales it from zero on the first request (a pod named after the session,
owned by the Function); sessions stick to their pods; after ``idleTimeout`` the gateway calls
preStop and deletes the pod, and the same session id wakes on a new pod; the operator reports
coarse counts. With ``warmPool: 1`` the operator keeps a warm pod, a new session takes it (the
gateway's claim checkpoint marks it) and the operator tops the pool back up.

The host reaches pod IPs directly, so both components run on the host with the admin kubeconfig.
Figures (cold start, wake, warm claim) are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest

from e2ehelpers import wait_for as _wait_for
from ports import free_port

pytestmark = pytest.mark.e2e

REPO: Final = Path(__file__).resolve().parents[1]
IMAGE: Final = "localhost/voltgrid/python:3.11"
HEADER: Final = "X-Voltgrid-Session"
WAIT_S: Final = 180.0
REQUEST_TIMEOUT_S: Final = 240.0
STOP_TIMEOUT_S: Final = 20.0
IDLE_TIMEOUT: Final = "10s"
wait_for: Final = functools.partial(_wait_for, timeout=WAIT_S)
#: Tiny stdlib server: answers who it is, records preStop on stdout, exits at once on SIGTERM.
SERVER: Final = r"""
import http.server, json, os, signal, socket, sys, uuid
BOOT = uuid.uuid4().hex
SESSION = os.environ["VOLTGRID_SESSION_ID"]
class Handler(http.server.BaseHTTPRequestHandler):
    def _answer(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        self._answer({"session": SESSION, "hostname": socket.gethostname(), "boot": BOOT,
                      "forwarded": self.headers.get("X-Voltgrid-Session-Id")})
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        if self.path == "/prestop":
            print("PRESTOP " + body, flush=True)
        self._answer({"ok": True})
    def log_message(self, *args):
        pass
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("READY", SESSION, flush=True)
http.server.ThreadingHTTPServer(("", int(os.environ["PORT"])), Handler).serve_forever()
"""


@dataclass
class Platform:
    cluster: Any
    ns: str
    gateway_url: str
    logs: Path
    runtime: dict[str, Any]
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        out: str = self.cluster.kubectl("-n", self.ns, *args, input=input, check=check).stdout
        return out

    def get(self, kind: str, name: str = "", selector: str = "") -> Any:
        args = ["get", kind, "-o", "json"] + ([name] if name else []) + (["-l", selector] if selector else [])
        done = self.cluster.kubectl("-n", self.ns, *args, check=False)
        return json.loads(done.stdout) if done.returncode == 0 else None

    def pods(self, function: str) -> list[dict[str, Any]]:
        listing = self.get("pods", selector=f"voltgrid.dev/function={function}") or {"items": []}
        return [p for p in listing["items"] if not p["metadata"].get("deletionTimestamp")]

    def status(self, function: str) -> dict[str, Any]:
        return dict((self.get("function", function) or {}).get("status") or {})

    def apply_function(self, name: str, sessions: dict[str, Any], scaling: dict[str, Any] | None = None) -> None:
        spec = {
            "image": IMAGE,
            "command": ["python3", "-c", SERVER],
            "port": 8080,
            "isolation": self.runtime,
            "resources": {"cpu": "50m", "memory": "64Mi"},
            "sessions": sessions,
            "scaling": scaling or {},
        }
        obj = {"apiVersion": "voltgrid.dev/v1alpha1", "kind": "Function", "metadata": {"name": name}, "spec": spec}
        self.kubectl("apply", "-f", "-", input=json.dumps(obj))

    def call(self, function: str, session: str | None = None) -> tuple[dict[str, Any], dict[str, str], float]:
        """GET through the gateway: (body, headers, seconds)."""
        request = urllib.request.Request(f"{self.gateway_url}/fn/{self.ns}/{function}/whoami")
        if session is not None:
            request.add_header(HEADER, session)
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
                body = json.loads(response.read())
                return body, dict(response.headers), time.monotonic() - started
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{e.code} from the gateway: {e.read().decode()[:500]}") from None

    def served(self, function: str) -> bool:
        url = f"{self.gateway_url}/_voltgrid/v1/functions/{self.ns}/{function}/sessions"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return bool(response.status == 200)
        except urllib.error.HTTPError as e:
            return e.code == 401  # served: its Session API wants a credential (404: not served yet)
        except (urllib.error.URLError, OSError):
            return False

    def follow_logs(self, pod: str) -> tuple[subprocess.Popen[bytes], Path]:
        """``kubectl logs -f`` into a file: the pod's output survives its deletion there."""
        path = self.logs / f"{pod}-{uuid.uuid4().hex[:4]}.log"
        argv = [str(self.cluster.bin_dir / "kubectl"), "--kubeconfig", str(self.cluster.kubeconfig)]
        with path.open("wb") as out:  # the child keeps its own descriptor
            proc = subprocess.Popen([*argv, "-n", self.ns, "logs", "-f", pod], stdout=out, stderr=subprocess.STDOUT)
        self.children.append(proc)
        return proc, path

    def start(self, name: str, *args: str, env: dict[str, str]) -> None:
        variables = {**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig), **env}
        with (self.logs / f"{name}.log").open("ab") as log:  # the child keeps its own descriptor
            child = subprocess.Popen(
                [sys.executable, "-m", "voltgrid.cli.main", *args],
                env=variables,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        self.children.append(child)

    def stop(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.terminate()
        for child in self.children:
            try:
                child.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def _runtime(cluster: Any) -> dict[str, Any]:
    """gVisor when the cluster has it; on a user's cluster without it, an explicit opt in to the
    node's default runtime. The local cluster always installs gVisor: its absence fails there."""
    found = cluster.kubectl("get", "runtimeclass", "gvisor", check=False).returncode == 0
    if not found and cluster.state_dir is not None:
        cluster.without_gvisor("no RuntimeClass gvisor")
    return {"runtimeClassName": "gvisor"} if found else {"allowUnsandboxed": True}


@pytest.fixture(scope="module")
def platform(voltgrid_crds: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    cluster = voltgrid_crds
    ns = f"vg-plat-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    port = free_port()
    p = Platform(cluster, ns, f"http://127.0.0.1:{port}", tmp_path_factory.mktemp("platform"), _runtime(cluster))
    try:
        p.start(
            "operator",
            "operator",
            "--namespace",
            ns,
            env={
                "VOLTGRID_OPERATOR_LIVENESS": "",
                "VOLTGRID_OPERATOR_METRICS": "",
                "VOLTGRID_OPERATOR_SWEEP_INTERVAL": "2",
            },
        )
        p.start(
            "gateway",
            "gateway",
            "--backend",
            "kubernetes",
            "--namespace",
            ns,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            env={
                "VOLTGRID_GATEWAY_CHECKPOINT_INTERVAL": "3",
                "VOLTGRID_GATEWAY_COLD_START_TIMEOUT": str(WAIT_S),
                "VOLTGRID_GATEWAY_RESYNC_INTERVAL": "10",
            },
        )
        yield p
    finally:
        p.stop()
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        print(f"\nplatform logs in {p.logs}; timings: {json.dumps(p.timings)}", file=sys.stderr)


def _ready(status: dict[str, Any]) -> bool:
    return any(x.get("type") == "Ready" and x.get("status") == "True" for x in status.get("conditions") or [])


def test_scale_from_zero_affinity_idle_release_and_wake(platform: Platform) -> None:
    p = platform
    p.apply_function("echo", {"idleTimeout": IDLE_TIMEOUT, "preStop": {"path": "/prestop", "timeout": "5s"}})
    # (a) no traffic: Ready, and no pod at all
    status = wait_for("Function Ready", lambda: (s := p.status("echo")) and _ready(s) and s)
    assert status.get("instances", 0) == 0 and p.pods("echo") == []
    function_uid = p.get("function", "echo")["metadata"]["uid"]
    wait_for("the gateway to serve it", lambda: p.served("echo"))
    assert p.pods("echo") == []

    # (b) the first request scales from zero; the answer comes from the session's own pod
    one, two = f"s1-{uuid.uuid4().hex[:6]}", f"s2-{uuid.uuid4().hex[:6]}"
    body, _, seconds = p.call("echo", one)
    p.timings["cold_start_s"] = round(seconds, 2)
    (pod,) = p.pods("echo")
    meta = pod["metadata"]
    assert meta["name"] == f"echo-{one}" == body["hostname"]
    assert body["session"] == body["forwarded"] == one
    assert meta["labels"]["voltgrid.dev/session"] == one and meta["labels"]["voltgrid.dev/role"] == "instance"
    owner = meta["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Function", "echo", function_uid)
    assert pod["spec"].get("runtimeClassName") == p.runtime.get("runtimeClassName")
    follower, pod_log = p.follow_logs(meta["name"])

    # (c) two sessions, two pods, each every time
    body_two, _, _ = p.call("echo", two)
    assert body_two["hostname"] == f"echo-{two}" != body["hostname"]
    for _ in range(3):
        assert p.call("echo", one)[0]["boot"] == body["boot"]
        assert p.call("echo", two)[0]["boot"] == body_two["boot"]

    # (e) coarse counts from the operator; the gateway's activity checkpoint on the pods
    wait_for("instances=2", lambda: (s := p.status("echo")).get("instances") == 2 and s.get("activeSessions") == 2)
    wait_for(
        "a last-active checkpoint",
        lambda: all("voltgrid.dev/last-active" in (x["metadata"].get("annotations") or {}) for x in p.pods("echo")),
        timeout=30,
    )

    # (d) idle: preStop, then the pod goes; the same session id wakes on a new pod
    idle_from = time.monotonic()
    wait_for("the idle pod to go", lambda: all(x["metadata"]["name"] != f"echo-{one}" for x in p.pods("echo")))
    p.timings["idle_release_after_s"] = round(time.monotonic() - idle_from, 1)
    follower.wait(timeout=60)
    lines = [x for x in pod_log.read_text().splitlines() if x.startswith("PRESTOP ")]
    assert len(lines) == 1, pod_log.read_text()
    assert json.loads(lines[0][len("PRESTOP ") :]) == {"sessionId": one, "reason": "idle"}
    woken, _, seconds = p.call("echo", one)
    p.timings["wake_s"] = round(seconds, 2)
    assert woken["session"] == one and woken["hostname"] == f"echo-{one}" and woken["boot"] != body["boot"]
    (again,) = [x for x in p.pods("echo") if x["metadata"]["name"] == f"echo-{one}"]
    assert again["metadata"]["uid"] != meta["uid"]
    wait_for("all idle pods gone", lambda: p.pods("echo") == [], timeout=WAIT_S)
    wait_for("instances=0", lambda: (s := p.status("echo")).get("instances") == 0 and s.get("activeSessions") == 0)


def test_warm_pool_claim_and_refill(platform: Platform) -> None:
    p = platform
    p.apply_function("warm", {"idleTimeout": "60s"}, {"warmPool": 1})

    def warm_pods(claimed: bool) -> list[dict[str, Any]]:
        return [
            x
            for x in p.pods("warm")
            if x["metadata"]["labels"].get("voltgrid.dev/role") == "warm"
            and ("voltgrid.dev/last-active" in (x["metadata"].get("annotations") or {})) == claimed
            and any(c["type"] == "Ready" and c["status"] == "True" for c in x["status"].get("conditions") or [])
        ]

    (warm,) = wait_for("a ready warm pod", lambda: warm_pods(claimed=False))
    wait_for("the gateway to serve it", lambda: p.served("warm"))
    session = warm["metadata"]["labels"]["voltgrid.dev/session"]
    body, headers, seconds = p.call("warm")
    p.timings["warm_claim_s"] = round(seconds, 2)
    assert body["hostname"] == warm["metadata"]["name"] and body["session"] == session
    assert headers.get(HEADER) == session
    (claimed,) = wait_for("the claim checkpoint", lambda: warm_pods(claimed=True), timeout=30)
    assert claimed["metadata"]["name"] == warm["metadata"]["name"]
    (refill,) = wait_for("the pool topped up", lambda: warm_pods(claimed=False))
    assert refill["metadata"]["name"] != warm["metadata"]["name"]
    assert p.call("warm", session)[0]["boot"] == body["boot"]  # the session stays on its pod
    wait_for(
        "instances=1, warm=1", lambda: (s := p.status("warm")).get("instances") == 1 and s.get("warmInstances") == 1
    )
