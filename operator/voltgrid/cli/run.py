"""`voltgrid run`: bring Voltgrid up for a newcomer with one command.

It uses the kube context when one is reachable; otherwise it installs what the local single-node
cluster needs (Debian packages, Kubernetes built from pinned Go modules) and starts it
(`e2e/cluster/up.sh`). Then it applies the CRDs,
starts the operator and the gateway as child processes against that cluster, applies the example
Function, and prints the curl command that calls it. Ctrl-C stops the children (the local cluster
stays up for the next run; `make cluster-down` stops it).
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

from voltgrid.errors import ClusterError

REPO_ROOT: Final = Path(__file__).resolve().parents[3]
LOCAL_CLUSTER_DIR: Final = Path(os.environ.get("VOLTGRID_CLUSTER_DIR", "/tmp/voltgrid-cluster"))
REACHABILITY_TIMEOUT_S: Final = 5
CHILD_STOP_TIMEOUT_S: Final = 15
DEFAULT_GATEWAY_PORT: Final = 8080
EXAMPLE: Final = REPO_ROOT / "examples" / "echo-function.yaml"


def kube_context_reachable(kubeconfig: str | None) -> bool:
    """Whether the (explicit or default) kube context answers /version within a short timeout."""
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


def _script(name: str) -> Path:
    path = REPO_ROOT / "e2e" / "cluster" / name
    if not path.exists():
        raise ClusterError(f"{path} not found: `voltgrid run` starts a local cluster only from a source checkout")
    return path


def ensure_cluster(kubeconfig: str | None) -> tuple[str, Path | None]:
    """A kubeconfig for a reachable cluster, and the local cluster's bin dir when we started it."""
    if kube_context_reachable(kubeconfig):
        print(f"using the reachable kube context ({kubeconfig or os.environ.get('KUBECONFIG', '~/.kube/config')})")
        return kubeconfig or os.environ.get("KUBECONFIG", str(Path.home() / ".kube" / "config")), None
    print("no reachable kube context: starting the local single-node cluster (e2e/cluster/up.sh)")
    subprocess.run(["bash", str(_script("install-deps.sh"))], check=True)  # a no-op once the packages are there
    bin_dir = Path(
        subprocess.run(["bash", str(_script("build-k8s.sh"))], check=True, capture_output=True, text=True)
        .stdout.strip()
        .splitlines()[-1]
    )
    subprocess.run(["bash", str(_script("up.sh"))], check=True)
    return str(LOCAL_CLUSTER_DIR / "kubeconfig"), bin_dir


def load_example_image(kubeconfig: str) -> None:
    """On the local cluster (no registry) the example's image, Voltgrid's own, is the one built here:
    the build tags it with the chart's default image name too, and the import makes it visible."""
    if Path(kubeconfig).resolve() != (LOCAL_CLUSTER_DIR / "kubeconfig").resolve():
        return
    script = REPO_ROOT / "e2e" / "images" / "build-voltgrid-image.sh"
    subprocess.run(["bash", str(script), "--import"], check=True, stdout=subprocess.DEVNULL)


def _kubectl(bin_dir: Path | None, kubeconfig: str, *args: str) -> None:
    exe = str(bin_dir / "kubectl") if bin_dir else "kubectl"
    subprocess.run([exe, "--kubeconfig", kubeconfig, *args], check=True)


def _start(name: str, argv: list[str], env: dict[str, str], logs: Path) -> subprocess.Popen[bytes]:
    log = (logs / f"{name}.log").open("ab")
    print(f"starting {name}: logs in {logs / (name + '.log')}")
    return subprocess.Popen(
        [sys.executable, "-m", "voltgrid.cli.main", *argv], env=env, stdout=log, stderr=subprocess.STDOUT
    )


def _stop(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + CHILD_STOP_TIMEOUT_S
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def run(args: argparse.Namespace) -> int:
    kubeconfig, bin_dir = ensure_cluster(args.kubeconfig)
    _kubectl(bin_dir, kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds"))
    _kubectl(
        bin_dir,
        kubeconfig,
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/functions.voltgrid.dev",
        "crd/sessions.voltgrid.dev",
        "crd/sandboxes.voltgrid.dev",
    )
    env = {**os.environ, "KUBECONFIG": kubeconfig}
    # The Session API needs a credential: a token for this run unless one is configured.
    api_token = env.setdefault("VOLTGRID_GATEWAY_API_TOKENS", secrets.token_urlsafe(24)).split(",")[0]
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    children = [
        # Function status URLs point at this gateway, so `kubectl get fn` shows what to curl.
        _start("operator", ["operator"], {**env, "VOLTGRID_OPERATOR_URL_BASE": f"http://127.0.0.1:{args.port}"}, logs),
        _start("gateway", ["gateway", "--backend", "kubernetes", "--port", str(args.port)], env, logs),
    ]
    load_example_image(kubeconfig)
    _kubectl(bin_dir, kubeconfig, "apply", "-n", "default", "-f", str(EXAMPLE))
    print(
        "\nVoltgrid is running. Call the example Function (a session is minted and returned in the header):\n"
        f"  curl -i http://127.0.0.1:{args.port}/fn/default/echo/\n"
        f"  curl -i -H 'X-Voltgrid-Session: demo-1' http://127.0.0.1:{args.port}/fn/default/echo/\n"
        "and list its sessions with this run's Session API token:\n"
        f"  VOLTGRID_TOKEN={api_token} .venv/bin/voltgrid sessions --gateway http://127.0.0.1:{args.port}"
        " -f default/echo list\n"
        "Ctrl-C stops the operator and the gateway; `make cluster-down` stops the local cluster.\n"
    )
    stopping = False

    def _on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        while not stopping:
            for child in children:
                if child.poll() is not None:
                    print(f"a component exited with {child.returncode}; see {logs}", file=sys.stderr)
                    return 1
            time.sleep(0.5)
    finally:
        _stop(children)
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("run", help="run Voltgrid (local cluster when no kube context is reachable)")
    parser.add_argument("--kubeconfig", default=None, help="use this kubeconfig (default: $KUBECONFIG)")
    parser.add_argument("--port", type=int, default=DEFAULT_GATEWAY_PORT, help="gateway port on 127.0.0.1")
    parser.add_argument("--logs", default=str(LOCAL_CLUSTER_DIR / "logs" / "voltgrid"), help="component logs")
    parser.set_defaults(handler=run)
