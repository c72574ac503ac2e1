"""The in-sandbox agent alone: an execution in a warm kernel against a fresh interpreter, and file streaming.

    .venv/bin/python bench/bench_sandbox_agent.py [--n 200] [--mib 1024]

An agent process (``python -m voltgrid.sandbox_agent --prewarm python,bash``) on loopback, runc, no
gateway: ``print(1)`` through ``POST /execute`` in the prewarmed Python kernel and Bash shell, and —
in the same run, alternating request by request — the same ``print(1)`` in a fresh ``python -c``
process per execution (what running code costs without a warm kernel). Then a ``--mib`` upload and
download through the files API, with the agent's peak resident memory (the file is never buffered).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _common import free_port, machine, percentile, tail

TOKEN = "bench-sandbox-token-0123456789"
MiB = 1024 * 1024
#: Executions of each side not timed (connections opened, the kernel's first-run imports done).
WARMUP = 5


async def execute(client: httpx.AsyncClient, language: str, code: str) -> float:
    started = time.perf_counter()
    r = await client.post("/execute", json={"code": code, "language": language})
    elapsed = time.perf_counter() - started
    if r.status_code != 200 or '"status": "ok"' not in r.text:
        raise RuntimeError(f"execution failed: {r.status_code} {r.text[:200]}")
    return elapsed


async def fresh_interpreter() -> float:
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "print(1)", stdout=asyncio.subprocess.PIPE)
    await proc.communicate()
    return time.perf_counter() - started


def line(name: str, samples: list[float]) -> str:
    return f"{name:<44} p50 {percentile(samples, 0.5) * 1e3:8.2f} ms  {tail(samples, 1e3, ' ms')}"


def peak_rss_mib(pid: int) -> int:
    return int(Path(f"/proc/{pid}/status").read_text().split("VmHWM:")[1].split()[0]) // 1024


async def files(client: httpx.AsyncClient, mib: int) -> tuple[float, float]:
    block = os.urandom(MiB)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(mib):
            yield block

    started = time.perf_counter()
    r = await client.put("/files/bench.bin", content=body())
    up = time.perf_counter() - started
    if r.status_code != 201 or r.json()["size"] != mib * MiB:
        raise RuntimeError(f"upload failed: {r.status_code} {r.text[:200]}")
    started = time.perf_counter()
    received = 0
    async with client.stream("GET", "/files/bench.bin") as resp:
        async for chunk in resp.aiter_raw():
            received += len(chunk)
    down = time.perf_counter() - started
    if received != mib * MiB:
        raise RuntimeError(f"download returned {received} bytes")
    await client.delete("/files/bench.bin")
    return up, down


async def main(n: int, mib: int) -> None:
    print(machine(), flush=True)
    port = free_port()
    with tempfile.TemporaryDirectory() as workspace:
        env = {**os.environ, "VOLTGRID_SANDBOX_TOKEN": TOKEN, "VOLTGRID_SANDBOX_PREWARM": "python,bash"}
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "voltgrid.sandbox_agent", "--host", "127.0.0.1", "--port", str(port),
            "--workspace", workspace, env=env, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120) as c:
                while True:
                    try:
                        if (await c.get("/health")).status_code == 200:
                            break
                    except httpx.TransportError:
                        await asyncio.sleep(0.02)
                print(f"agent start to ready, Python and Bash prewarmed: {time.perf_counter() - started:.2f} s")
                for _ in range(WARMUP):
                    await execute(c, "python", "print(1)")
                    await execute(c, "bash", "echo 1")
                    await fresh_interpreter()
                py, sh, fresh = [], [], []
                for _ in range(n):
                    py.append(await execute(c, "python", "print(1)"))
                    sh.append(await execute(c, "bash", "echo 1"))
                    fresh.append(await fresh_interpreter())
                print(line("execute print(1), warm Python kernel", py))
                print(line("execute echo 1, warm Bash", sh))
                print(line("comparison: fresh `python -c print(1)`", fresh))
                ratio = percentile(fresh, 0.5) / percentile(py, 0.5)
                print(f"warm kernel vs fresh interpreter, p50: {ratio:.1f}x faster")
                up, down = await files(c, mib)
                print(
                    f"files: {mib} MiB upload {up:.2f} s ({mib / up:.0f} MiB/s), download {down:.2f} s "
                    f"({mib / down:.0f} MiB/s); agent peak RSS {peak_rss_mib(proc.pid)} MiB"
                )
        finally:
            proc.terminate()
            await proc.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="executions of each side")
    parser.add_argument("--mib", type=int, default=1024, help="size of the file uploaded and downloaded")
    args = parser.parse_args()
    asyncio.run(main(args.n, args.mib))
