"""Gateway throughput and latency at concurrency 10 and 200, beside direct calls to the upstream.

    .venv/bin/python bench/bench_gateway.py [--duration 10] [--threads 1]

Needs ``wrk`` (apt-get install wrk). Starts an aiohttp upstream and one gateway process (Header
affinity, every request in the same session), then runs wrk against both in the same run.
Goals: >= 5,000 req/s through one gateway; p99 added latency < 2 ms. A bare aiohttp relay (one
handler, no pipeline) runs in the same run as the floor of any aiohttp proxy on the machine.
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def wrk(url: str, connections: int, duration: int, threads: int, header: str | None) -> dict[str, float]:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", url]
    if header:
        cmd[1:1] = ["-H", header]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {}
    for pct in ("50", "99"):
        m = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out)
        assert m, out
        lat[pct] = float(m.group(1)) * UNITS[m.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": lat["50"], "p99": lat["99"], "errors": float(errors.group(1)) if errors else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is required: apt-get install wrk")
    up_port, gw_port, bare_port = free_port(), free_port(), free_port()
    helper = str(HERE / "_gateway_server.py")
    procs = [subprocess.Popen([sys.executable, helper, "upstream", str(up_port)])]
    wait_port(up_port)
    procs.append(subprocess.Popen([sys.executable, helper, "gateway", str(gw_port), f"http://127.0.0.1:{up_port}"]))
    procs.append(subprocess.Popen([sys.executable, helper, "bare", str(bare_port), f"http://127.0.0.1:{up_port}"]))
    try:
        wait_port(gw_port)
        wait_port(bare_port)
        header = "X-Voltgrid-Session: bench-session-1"
        wrk(f"http://127.0.0.1:{gw_port}/x", 10, 2, args.threads, header)  # warm up: session bound, pools open
        print(f"{'target':<9}{'conc':>6}{'req/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}")
        for connections in (10, 200):
            direct = wrk(f"http://127.0.0.1:{up_port}/x", connections, args.duration, args.threads, None)
            via = wrk(f"http://127.0.0.1:{gw_port}/x", connections, args.duration, args.threads, header)
            floor = wrk(f"http://127.0.0.1:{bare_port}/x", connections, args.duration, args.threads, None)
            for name, r in (("direct", direct), ("gateway", via), ("bare", floor)):
                print(f"{name:<9}{connections:>6}{r['rps']:>11,.0f}{r['p50']:>9.2f}{r['p99']:>9.2f}{r['errors']:>9.0f}")
            print(
                f"  -> gateway/direct throughput {via['rps'] / direct['rps']:.2f}, "
                f"added p50 {via['p50'] - direct['p50']:.2f} ms, added p99 {via['p99'] - direct['p99']:.2f} ms "
                f"(goals: >= 5000 req/s, added p99 < 2 ms); "
                f"gateway/bare-aiohttp-relay {via['rps'] / floor['rps']:.2f}"
            )
    finally:
        for p in reversed(procs):  # proxies first, then the upstream
            p.terminate()
            p.wait()


if __name__ == "__main__":
    main()
