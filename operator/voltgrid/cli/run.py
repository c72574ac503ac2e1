"""`voltgrid run`: Voltgrid as a platform team deploys it, on the local cluster, with one command.

What it does: the local single-node cluster (``e2e/cluster``: Debian packages, Kubernetes built from
pinned Go modules) started when it is not up; Voltgrid's image built and imported into its containerd;
the Helm chart installed (release ``voltgrid`` in ``voltgrid-system``: the operator, two gateway
replicas, the webhooks, the session claim on a local volume, the janitor); the examples applied in
``default`` with their session storage; the gateway Service relayed to ``127.0.0.1:<port>`` (so both
replicas serve, as behind any load balancer); a short tour printed. Then it watches: a component that
restarts or stops being ready is reported (Kubernetes restarts it; nothing else is stopped).
Ctrl-C removes what it installed (the release, the examples' Functions) and, when this run started the
local cluster, stops it; session data (the claims) is kept.

Why never the current kube context: a newcomer's default context may be production. Another cluster
is used only when named (``--kubeconfig`` or ``$VOLTGRID_KUBECONFIG``) *and* confirmed with
``--yes-use-this-cluster``; there the chart's published image is used and the gateway is reached
through ``kubectl port-forward`` (one replica).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from voltgrid.errors import ClusterError

REPO_ROOT: Final = Path(__file__).resolve().parents[3]
LOCAL_CLUSTER_DIR: Final = Path(os.environ.get("VOLTGRID_CLUSTER_DIR", "/tmp/voltgrid-cluster"))
REACHABILITY_TIMEOUT_S: Final = 5
DEFAULT_GATEWAY_PORT: Final = 8080
RELEASE: Final = "voltgrid"
NAMESPACE: Final = "voltgrid-system"
EXAMPLES_NAMESPACE: Final = "default"
#: The examples `make run` applies, in order (the claim first: the Functions' storage names it).
EXAMPLES: Final = (
    "examples/storage/sessions-claim.yaml",
    "examples/echo-function.yaml",
    "examples/sse-agent.yaml",
    "examples/mcp-server.yaml",
)
#: Where the local cluster's session volumes live (hostPath PVs; no provisioner there).
LOCAL_VOLUMES: Final = Path(os.environ.get("VOLTGRID_RUN_VOLUMES", "/var/lib/voltgrid-run"))
HELM_TIMEOUT: Final = "5m"
WATCH_INTERVAL_S: Final = 5.0
CONFIRM_FLAG: Final = "--yes-use-this-cluster"


@dataclass(frozen=True)
class Target:
    """The cluster `voltgrid run` deploys to."""

    kubeconfig: str
    local: bool
    #: Directory of the kubectl matching the local cluster (None: kubectl on PATH).
    bin_dir: Path | None = None
    #: Whether this run started the local cluster (and so stops it on Ctrl-C).
    started: bool = False


def kube_context_reachable(kubeconfig: str | None) -> bool:
    """Whether the given kubeconfig's cluster answers /version within a short timeout."""
    env = dict(os.environ)
    if kubeconfig:
        env["KUBECONFIG"] = kubeconfig
    try:
        done = subprocess.run(
            ["kubectl", "version", f"--request-timeout={REACHABILITY_TIMEOUT_S}s", "-o", "json"],
            env=env,
            capture_output=True,
            timeout=REACHABILITY_TIMEOUT_S * 2,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def named_cluster(flag: str | None, env: Mapping[str, str], confirmed: bool) -> str | None:
    """The kubeconfig of a cluster the user named, None for the local cluster.

    Raises ClusterError when one is named without the confirmation flag: the message says which.
    """
    named = flag or env.get("VOLTGRID_KUBECONFIG") or None
    if named and not confirmed:
        raise ClusterError(
            f"{named} names a cluster other than the local one: Voltgrid would install its CRDs, webhooks "
            f"and a release there. Add {CONFIRM_FLAG} if that is what you want."
        )
    return named


def _script(name: str) -> Path:
    path = REPO_ROOT / "e2e" / "cluster" / name
    if not path.exists():
        raise ClusterError(f"{path} not found: `voltgrid run` starts the local cluster only from a source checkout")
    return path


def _last_line(argv: list[str]) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]


def local_cluster() -> Target:
    """The local cluster, started (after installing what it runs on) when it is not up."""
    bin_dir = Path(_last_line(["bash", str(_script("build-k8s.sh"))]))
    kubeconfig = LOCAL_CLUSTER_DIR / "kubeconfig"
    if kubeconfig.exists() and kube_context_reachable(str(kubeconfig)):
        print(f"using the local cluster ({LOCAL_CLUSTER_DIR})")
        return Target(str(kubeconfig), local=True, bin_dir=bin_dir)
    print("starting the local single-node cluster (e2e/cluster/up.sh)")
    subprocess.run(["bash", str(_script("install-deps.sh"))], check=True)  # a no-op once installed
    subprocess.run(["bash", str(_script("build-kube-router.sh"))], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["bash", str(_script("up.sh"))], check=True)
    return Target(str(kubeconfig), local=True, bin_dir=bin_dir, started=True)


#: Secret holding this run's Session API operator token (the Session API needs a credential).
API_TOKEN_SECRET: Final = "voltgrid-run-api-token"


def chart_values(target: Target, port: int) -> dict[str, str]:
    """``--set`` values of the release: two gateway replicas, this run's Session API token; on the
    local cluster the image built here."""
    values = {
        "gateway.replicas": "2",
        "gateway.apiToken.existingSecret": API_TOKEN_SECRET,
        "operator.urlBase": f"http://127.0.0.1:{port}",
    }
    if target.local:
        values |= {"image.repository": "localhost/voltgrid/voltgrid", "image.tag": "dev", "image.pullPolicy": "Never"}
    return values


def host_volume(name: str, namespace: str, claim: str, path: Path) -> dict[str, Any]:
    """A hostPath PersistentVolume pre-bound to ``namespace/claim`` (the local cluster has no provisioner).

    The directory is world-writable: the kubelet creates each session's sub-path with the root's mode,
    and instances run as non-root users (docs/webhooks.md)."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "voltgrid-run"}},
        "spec": {
            "capacity": {"storage": "10Gi"},
            "accessModes": ["ReadWriteMany"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "claimRef": {"namespace": namespace, "name": claim},
            "hostPath": {"path": str(path), "type": "Directory"},
        },
    }


@dataclass
class Platform:
    """Commands against the target cluster."""

    target: Target
    helm: str
    log: Callable[[str], None] = print
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        path = f"{self.target.bin_dir}{os.pathsep}{os.environ['PATH']}" if self.target.bin_dir else os.environ["PATH"]
        self.env = {**os.environ, "KUBECONFIG": self.target.kubeconfig, "PATH": path}

    def run(self, *argv: str, stdin: str | None = None, check: bool = True) -> str:
        done = subprocess.run(
            list(argv), env=self.env, cwd=REPO_ROOT, input=stdin, capture_output=True, text=True, check=False
        )
        if check and done.returncode != 0:
            raise ClusterError(f"{' '.join(argv[:4])} ... failed: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        return self.run("kubectl", *args, stdin=stdin, check=check)

    def local_volumes(self) -> None:
        for name, namespace, claim in (
            ("voltgrid-run-sessions", NAMESPACE, "voltgrid-sessions"),
            ("voltgrid-run-example-sessions", EXAMPLES_NAMESPACE, "sessions"),
        ):
            path = LOCAL_VOLUMES / name
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o777)
            self.kubectl("apply", "-f", "-", stdin=json.dumps(host_volume(name, namespace, claim, path)))

    def api_token(self) -> str:
        """This run's Session API operator token, kept in a Secret (made once, reused by later runs)."""
        self.kubectl("create", "namespace", NAMESPACE, check=False)
        secret = json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": API_TOKEN_SECRET, "namespace": NAMESPACE},
                "stringData": {"token": secrets.token_urlsafe(24)},
            }
        )
        self.kubectl("create", "-f", "-", stdin=secret, check=False)  # AlreadyExists: keep the first token
        jsonpath = "jsonpath={.data.token}"
        encoded = self.kubectl("-n", NAMESPACE, "get", "secret", API_TOKEN_SECRET, "-o", jsonpath)
        return base64.b64decode(encoded).decode()

    def install(self, values: dict[str, str]) -> None:
        sets = [f"--set={key}={value}" for key, value in values.items()]
        self.log(f"installing the chart (release {RELEASE} in {NAMESPACE}; up to {HELM_TIMEOUT})")
        self.run(
            self.helm, "upgrade", "--install", RELEASE, "charts/voltgrid", "-n", NAMESPACE, "--create-namespace",
            *sets, "--wait", "--timeout", HELM_TIMEOUT,
        )  # fmt: skip

    def examples(self) -> None:
        self.kubectl("label", "namespace", EXAMPLES_NAMESPACE, "voltgrid.dev/enabled=true", "--overwrite")
        for example in EXAMPLES:
            self.kubectl("apply", "-n", EXAMPLES_NAMESPACE, "-f", example)
        self.kubectl("wait", "-n", EXAMPLES_NAMESPACE, "function", "--all", "--for=condition=Ready", "--timeout=120s")

    def gateway_address(self) -> str:
        jsonpath = "jsonpath={.spec.clusterIP}"
        return self.kubectl("-n", NAMESPACE, "get", "svc", f"{RELEASE}-gateway", "-o", jsonpath).strip()

    def component_states(self) -> dict[str, tuple[bool, int]]:
        """``pod name -> (ready, restarts)`` of the release's long-running components."""
        selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component!=janitor"
        pods = json.loads(self.kubectl("-n", NAMESPACE, "get", "pods", "-l", selector, "-o", "json"))["items"]
        states = {}
        for pod in pods:
            statuses = pod.get("status", {}).get("containerStatuses") or []
            ready = bool(statuses) and all(s.get("ready") for s in statuses)
            states[pod["metadata"]["name"]] = (ready, sum(s.get("restartCount", 0) for s in statuses))
        return states

    def remove(self) -> None:
        """Undo :meth:`install` and :meth:`examples` (claims and their data stay)."""
        for example in reversed(EXAMPLES[1:]):
            self.kubectl("delete", "-n", EXAMPLES_NAMESPACE, "-f", example, "--ignore-not-found", check=False)
        self.run(self.helm, "uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--ignore-not-found", check=False)


def component_changes(before: dict[str, tuple[bool, int]], after: dict[str, tuple[bool, int]]) -> list[str]:
    """What to report between two looks at the components (restarts, readiness lost or regained)."""
    lines = []
    for name, (ready, restarts) in sorted(after.items()):
        was_ready, had_restarts = before.get(name, (ready, restarts))  # a new pod: nothing to say yet
        if restarts > had_restarts:
            lines.append(f"{name} restarted ({restarts} restarts): kubectl -n {NAMESPACE} logs --previous {name}")
        if was_ready and not ready:
            lines.append(f"{name} is not ready: kubectl -n {NAMESPACE} describe pod {name}")
        if ready and not was_ready:
            lines.append(f"{name} is ready again")
    for name in sorted(set(before) - set(after)):
        lines.append(f"{name} is gone (replaced)")
    return lines


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


async def relay(host: str, port: int, upstream: tuple[str, int]) -> asyncio.Server:
    """A TCP relay ``host:port -> upstream`` (the gateway Service: the node's kube-proxy balances it)."""

    async def connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*upstream)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await w.wait_closed()

    return await asyncio.start_server(connect, host, port)


def tour(port: int, local: bool, stops_cluster: bool, token: str) -> str:
    base = f"http://127.0.0.1:{port}"
    via = "both gateway replicas (kube-proxy)" if local else "one gateway replica (kubectl port-forward)"
    return f"""
Voltgrid is running: release {RELEASE} in {NAMESPACE} (operator, 2 gateways, webhooks, janitor), the
gateway at {base} ({via}). A short tour:

  1. Call the echo agent; a session id is minted and returned in X-Voltgrid-Session:
       curl -i {base}/fn/default/echo/
  2. Keep a session: its count lives in its own directory on the claim `sessions`:
       curl -H 'X-Voltgrid-Session: demo-1' -d hi {base}/fn/default/echo/     # "requests": 1, 2, 3, ...
  3. Idle release and wake with the same storage. A session keeps the idleTimeout it started with
     (5m); make it short for new sessions, then use a new one:
       kubectl patch -n default function/echo --type=merge -p '{{"spec":{{"sessions":{{"idleTimeout":"10s"}}}}}}'
       curl -H 'X-Voltgrid-Session: demo-2' -d hi {base}/fn/default/echo/   # twice
     watch its pod go (kubectl get pods -n default -w), call again: a new pod, the count goes on.
  4. Sessions, from the Session API (it needs a credential; this run's operator token):
       VOLTGRID_TOKEN={token} .venv/bin/voltgrid sessions --gateway {base} -f default/echo list
  5. Streaming and MCP: curl -N '{base}/fn/default/sse-agent/?prompt=hello+there'
                        any MCP client at {base}/fn/default/notes/mcp
  6. Isolation: as a tenant with `edit` rights, try to read the sessions' files (docs/webhooks.md, "Trust
     model"); each attempt is refused by the webhook with a message.

Ctrl-C removes the release and the examples{" and stops the local cluster" if stops_cluster else ""}; \
session data is kept.
"""


async def _supervise(platform: Platform, port: int, token: str, stop: asyncio.Event) -> None:
    server: asyncio.Server | None = None
    forward: asyncio.subprocess.Process | None = None
    if platform.target.local:
        server = await relay("127.0.0.1", port, (platform.gateway_address(), 80))
    else:
        forward = await asyncio.create_subprocess_exec(*forward_args(port), env=platform.env)
    print(tour(port, platform.target.local, platform.target.started, token), flush=True)
    states = await asyncio.to_thread(platform.component_states)
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), WATCH_INTERVAL_S)
            if forward is not None and forward.returncode is not None:
                print("kubectl port-forward exited; restarting it", file=sys.stderr)
                forward = await asyncio.create_subprocess_exec(*forward_args(port), env=platform.env)
            try:
                now = await asyncio.to_thread(platform.component_states)
            except ClusterError as exc:
                print(f"cannot read the components' state: {exc}", file=sys.stderr)
                continue
            for line in component_changes(states, now):
                print(line, file=sys.stderr, flush=True)
            states = now
    finally:
        if server is not None:
            server.close()
            await server.wait_closed()
        if forward is not None and forward.returncode is None:
            forward.terminate()
            await forward.wait()


def forward_args(port: int) -> list[str]:
    return ["kubectl", "-n", NAMESPACE, "port-forward", f"svc/{RELEASE}-gateway", f"{port}:80"]


async def _serve(platform: Platform, port: int, token: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await _supervise(platform, port, token, stop)


def run(args: argparse.Namespace) -> int:
    try:
        named = named_cluster(args.kubeconfig, os.environ, args.yes_use_this_cluster)
    except ClusterError as exc:
        print(f"voltgrid run: {exc}", file=sys.stderr)
        return 2
    target: Target | None = None
    platform: Platform | None = None
    try:
        target = Target(named, local=False) if named else local_cluster()
        platform = Platform(target, _last_line(["bash", str(_script("build-helm.sh"))]))
        if target.local:
            script = REPO_ROOT / "e2e" / "images" / "build-voltgrid-image.sh"
            print("building Voltgrid's image and importing it into the local cluster")
            subprocess.run(["bash", str(script), "--import"], check=True, stdout=subprocess.DEVNULL)
            platform.local_volumes()
        token = platform.api_token()
        platform.install(chart_values(target, args.port))
        platform.examples()
        asyncio.run(_serve(platform, args.port, token))
    except (ClusterError, subprocess.CalledProcessError) as exc:
        print(f"voltgrid run: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass  # Ctrl-C before the gateway was up: clean up all the same
    finally:
        if platform is not None:
            print("removing the release and the examples", flush=True)
            platform.remove()
        if target is not None and target.started:
            print("stopping the local cluster (e2e/cluster/down.sh)", flush=True)
            subprocess.run(["bash", str(_script("down.sh"))], check=False)
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("run", help="run Voltgrid on the local cluster (the chart, examples, a tour)")
    parser.add_argument(
        "--kubeconfig",
        default=None,
        help="deploy to this cluster instead of the local one (env VOLTGRID_KUBECONFIG); needs " + CONFIRM_FLAG,
    )
    parser.add_argument(
        CONFIRM_FLAG, action="store_true", help="confirm deploying to the cluster named by --kubeconfig"
    )
    parser.add_argument("--port", type=int, default=DEFAULT_GATEWAY_PORT, help="gateway port on 127.0.0.1")
    parser.set_defaults(handler=run)
