"""Sandbox claims from a warm pool through the gateway, against a fresh gVisor pod, same run.

    .venv/bin/python bench/bench_sandbox_claims.py --kubeconfig /tmp/voltgrid-cluster/kubeconfig [--pool 12]

Runs an operator and a gateway on this host against the cluster (scoped to a fresh namespace, with a
claim key made for the run), applies a SandboxTemplate of ``--pool`` warm sandboxes (the agent in the
Voltgrid image, Python prewarmed, under gVisor) and measures:

- **pool fill**: apply → ``--pool`` ready, and the rate (pods/s) this node starts them at;
- **floor**: one HTTP round trip into a warm sandbox from this host (what a claim waits on at least);
- **claim**: ``POST /_voltgrid/v1/sandboxes`` from the warm pool, one at a time (the pool drains);
- **claim → first result**: claim, then ``print(1)`` through the gateway, until the stdout event;
- **concurrent claims**: ``--pool`` claims at once from a full pool: all served, time to the last;
- **today's path** beside it: a fresh gVisor pod with the agent and a token, create → first
  ``print(1)`` result (what a claim replaces).

Needs the local cluster of ``e2e/cluster/up.sh`` (gVisor, ``localhost/voltgrid/voltgrid:dev`` loaded:
``e2e/images/build-voltgrid-image.sh --import``) and the pod network reachable from this host.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Final

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

sys.path.insert(0, str(Path(__file__).parent))
from _common import free_port, machine, skip, tail

IMAGE: Final = "localhost/voltgrid/voltgrid:dev"
API: Final = "/_voltgrid/v1/sandboxes"
AGENT_PORT: Final = 49999
WRITABLE: Final = [{"name": "HOME", "value": "/tmp"}, {"name": "JUPYTER_RUNTIME_DIR", "value": "/tmp/jupyter"}]
FILL_TIMEOUT_S: Final = 600.0
COMMAND: Final = ["python3", "-m", "voltgrid.sandbox_agent", "--workspace", "/tmp"]


def kubectl(kubeconfig: str, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        ["kubectl", "--kubeconfig", kubeconfig, *args], input=stdin, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def template(ns: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "voltgrid.dev/v1alpha1",
        "kind": "SandboxTemplate",
        "metadata": {"name": "py", "namespace": ns},
        "spec": {
            "image": IMAGE,
            "command": COMMAND,
            "env": WRITABLE,
            "resources": {"cpu": "100m", "memory": "384Mi"},  # a request: 12 fit a 2-CPU node
            "replicas": replicas,
            "maxWarming": replicas,
            "refillPerMinute": 600,
        },
    }


def fresh_pod(ns: str, name: str, token: str) -> dict[str, Any]:
    """Today's path: one pod made for one user, the agent given its token at start."""
    env = [*WRITABLE, {"name": "VOLTGRID_SANDBOX_TOKEN", "value": token}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "runtimeClassName": "gvisor",
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": "agent",
                    "image": IMAGE,
                    "imagePullPolicy": "Never",
                    "command": COMMAND,
                    "env": env,
                    "ports": [{"containerPort": AGENT_PORT}],
                    "resources": {"requests": {"cpu": "100m", "memory": "384Mi"}, "limits": {"memory": "384Mi"}},
                }
            ],
        },
    }


async def first_result(client: httpx.AsyncClient, url: str, token: str) -> None:
    async with client.stream(
        "POST", url + "/execute", json={"code": "print(1)"}, headers={"Authorization": f"Bearer {token}"}
    ) as r:
        async for line in r.aiter_lines():
            if line and json.loads(line).get("type") == "stdout":
                return
    raise SystemExit(f"no stdout from {url}")


async def claim(client: httpx.AsyncClient, gateway: str, admin: str, ns: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {admin}"}
    r = await client.post(gateway + API, json={"template": "py", "namespace": ns}, headers=headers)
    if r.status_code != 201:
        raise SystemExit(f"claim failed: {r.status_code} {r.text}")
    body: dict[str, Any] = r.json()
    return body


def ready_count(kubeconfig: str, ns: str) -> int:
    status = json.loads(kubectl(kubeconfig, "-n", ns, "get", "sandboxtemplate", "py", "-o", "json")).get("status") or {}
    return int(status.get("ready") or 0)


async def wait_ready(kubeconfig: str, ns: str, n: int) -> float:
    started = time.perf_counter()
    while ready_count(kubeconfig, ns) < n:
        if time.perf_counter() - started > FILL_TIMEOUT_S:
            raise SystemExit(f"the pool did not reach {n} ready sandboxes in {FILL_TIMEOUT_S:.0f}s")
        await asyncio.sleep(0.5)
    return time.perf_counter() - started


async def wait_gateway(url: str) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(600):
            try:
                if (await client.get(url + "/_voltgrid/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit("the gateway did not become ready")


async def today(kubeconfig: str, ns: str, n: int) -> list[float]:
    samples = []
    async with httpx.AsyncClient(timeout=120) as client:
        for i in range(n):
            name, token = f"fresh-{i}-{uuid.uuid4().hex[:4]}", secrets.token_urlsafe(24)
            started = time.perf_counter()
            kubectl(kubeconfig, "apply", "-f", "-", stdin=json.dumps(fresh_pod(ns, name, token)))
            ip = ""
            while True:
                pod = json.loads(kubectl(kubeconfig, "-n", ns, "get", "pod", name, "-o", "json"))
                ip = pod["status"].get("podIP") or ""
                if ip:
                    try:
                        await first_result(client, f"http://{ip}:{AGENT_PORT}", token)
                        break
                    except (httpx.TransportError, SystemExit):
                        pass
                if time.perf_counter() - started > 120:
                    raise SystemExit(f"fresh pod {name} never answered")
                await asyncio.sleep(0.05)
            samples.append(time.perf_counter() - started)
            kubectl(kubeconfig, "-n", ns, "delete", "pod", name, "--wait=false")
    return samples


async def agent_round_trips(kubeconfig: str, ns: str, rounds: int = 10) -> list[float]:
    """What a claim cannot go below: the gateway's one round trip into the sandbox, from this host,
    on a fresh connection as a claim's first contact with a pod is."""
    listed = json.loads(kubectl(kubeconfig, "-n", ns, "get", "pods", "-l", "voltgrid.dev/role=pool", "-o", "json"))
    ips = [p["status"]["podIP"] for p in listed["items"] if p["status"].get("podIP")]
    samples = []
    for _ in range(rounds):
        for ip in ips:
            async with httpx.AsyncClient(timeout=30) as client:
                t0 = time.perf_counter()
                (await client.get(f"http://{ip}:{AGENT_PORT}/health")).raise_for_status()
                samples.append(time.perf_counter() - t0)
    return samples


def ms(samples: list[float]) -> str:
    return f"p50 {statistics.median(samples) * 1000:.1f} ms, {tail(samples, 1000, ' ms')}"


async def measure(args: argparse.Namespace, ns: str, gateway: str, admin: str) -> None:
    pool = args.pool
    started = time.perf_counter()
    kubectl(args.kubeconfig, "apply", "-f", "-", stdin=json.dumps(template(ns, pool)))
    fill = await wait_ready(args.kubeconfig, ns, pool)
    print(f"pool fill: {pool} warm gVisor sandboxes ready in {fill:.1f}s ({pool / fill:.2f} pods/s)")
    await asyncio.sleep(2)  # every replica's watch has them
    floor = await agent_round_trips(args.kubeconfig, ns)
    print(f"floor: one HTTP round trip into a warm gVisor sandbox (GET /health, new connection): {ms(floor)}")
    claims, results = [], []
    async with httpx.AsyncClient(timeout=120) as client:
        held = []
        for _ in range(pool):
            t0 = time.perf_counter()
            sandbox = await claim(client, gateway, admin, ns)
            t1 = time.perf_counter()
            await first_result(client, gateway + sandbox["url"], sandbox["token"])
            claims.append(t1 - t0)
            results.append(time.perf_counter() - t0)
            held.append(sandbox)
        print(f"claim from the warm pool (sequential, n={pool}): {ms(claims)}")
        print(f"claim -> first print(1) result under gVisor: {ms(results)}")
        for sandbox in held:
            await client.delete(gateway + sandbox["url"], headers={"Authorization": f"Bearer {sandbox['token']}"})
        refill = await wait_ready(args.kubeconfig, ns, pool)
        print(f"refill after {pool} claims: {refill:.1f}s ({pool / refill:.2f} pods/s)")
        await asyncio.sleep(2)
        t0 = time.perf_counter()
        burst = await asyncio.gather(*(claim(client, gateway, admin, ns) for _ in range(pool)))
        last = time.perf_counter() - t0
        ids = {s["sandboxId"] for s in burst}
        print(f"{pool} concurrent claims from a pool of {pool}: {len(ids)} distinct served, the last after {last:.3f}s")
        for sandbox in burst:
            await client.delete(gateway + sandbox["url"], headers={"Authorization": f"Bearer {sandbox['token']}"})
    fresh = await today(args.kubeconfig, ns, args.fresh)
    print(f"today's path, a fresh gVisor pod -> first print(1) result (n={len(fresh)}): {ms(fresh)}")
    print(
        f"ratio claim->first result / fresh pod (p50): {statistics.median(results) / statistics.median(fresh):.3f}x;"
        f" goals: claim p99 <= 10 ms, claim->first result p50 <= 150 ms; {time.perf_counter() - started:.0f}s in all"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubeconfig", default=os.environ.get("BENCH_KUBECONFIG"), help="the cluster (else: skipped)")
    parser.add_argument("--pool", type=int, default=12, help="warm sandboxes in the pool (and claims per round)")
    parser.add_argument("--fresh", type=int, default=5, help="fresh gVisor pods timed for today's path")
    args = parser.parse_args()
    if not args.kubeconfig:
        skip("needs a cluster: --kubeconfig PATH (e.g. /tmp/voltgrid-cluster/kubeconfig of e2e/cluster/up.sh)")
    print(machine())
    ns = f"bench-sbx-{uuid.uuid4().hex[:6]}"
    kubectl(args.kubeconfig, "create", "namespace", ns)
    admin = secrets.token_urlsafe(24)
    port = free_port()
    gateway = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        key_file = Path(tmp) / "claim-key.pem"
        key_file.write_bytes(
            Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        )
        env = {**os.environ, "KUBECONFIG": args.kubeconfig}
        voltgrid = str(Path(sys.executable).with_name("voltgrid"))
        operator = subprocess.Popen(
            [voltgrid, "operator"],
            env={
                **env,
                "VOLTGRID_OPERATOR_NAMESPACES": ns,
                "VOLTGRID_OPERATOR_LIVENESS": "",
                "VOLTGRID_OPERATOR_METRICS": "",
                "VOLTGRID_OPERATOR_SANDBOX_CLAIM_KEY_FILE": str(key_file),
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        gw = subprocess.Popen(
            [voltgrid, "gateway", "--backend", "kubernetes", "--namespace", ns],
            env={
                **env,
                "VOLTGRID_GATEWAY_PORT": str(port),
                "VOLTGRID_GATEWAY_API_TOKENS": admin,
                "VOLTGRID_GATEWAY_SANDBOX_CLAIM_KEY_FILE": str(key_file),
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            asyncio.run(wait_gateway(gateway))
            asyncio.run(measure(args, ns, gateway, admin))
        finally:
            for proc in (gw, operator):
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            kubectl(args.kubeconfig, "delete", "namespace", ns, "--wait=false")


if __name__ == "__main__":
    main()
