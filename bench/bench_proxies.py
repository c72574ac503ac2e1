"""The gateway's data path beside nginx and haproxy doing the same sticky-proxy job, in one run.

    .venv/bin/python bench/bench_proxies.py [--duration 5] [--rounds 1] [--quick]

Needs ``nginx`` (nginx-light is enough), ``haproxy`` and ``wrk`` (``apt-get install -y nginx-light
haproxy wrk``, or ``e2e/cluster/install-deps.sh``); without them it says so and exits as skipped.

One upstream, an nginx with one worker serving a fixed 1 KiB body at /1k and 64 KiB at /64k from
static files, keep-alive on, is reached directly and through three proxies doing one job: route on
the ``X-Voltgrid-Session`` request header (sticky), keep upstream connections alive.

* nginx: ``hash $http_x_voltgrid_session consistent; keepalive 64;``, HTTP/1.1 upstream, the
  ``Connection`` header cleared; proxy buffers large enough that 64 KiB never goes to a temp file.
* haproxy: ``mode http``, ``balance hdr(X-Voltgrid-Session)``, ``http-reuse always``.
* the gateway: ``bench/_gateway_server.py gateway`` (Header affinity on ``X-Voltgrid-Session``).

wrk sends one fixed session id on every request (a Lua script), so every gateway request is one
session's, as a client's would be. Rows with one proxy worker (nginx ``worker_processes 1``,
haproxy ``nbthread 1``, one gateway process) run wrk ``-t1`` at 10, 64 and 256 connections; rows
with two (``worker_processes 2``, ``nbthread 2``, gateway ``--workers 2``) run ``-t2`` at 64. The
gateway's two-worker row runs only when ``_gateway_server.py gateway`` accepts ``--workers`` (a
start with it that exits before listening means not yet). Within each cell (body, workers,
connections) the targets take turns, so a slow moment of the machine hits all of them; with
``--rounds`` above 1 each target's best round counts. Every ratio is to nginx in the same cell of
the same run: figures of other runs or machines are not compared.

Added latency: a paced run per target (10 connections, each waiting 10 ms between requests, about
1,000 req/s, below every target's capacity here), its p50 and p99 minus the direct upstream's in
the same paced cell. At saturation the tails are the 2 CPUs' scheduling (the direct upstream's own
p99 reaches tens of ms), so a difference of saturated p99s says nothing about the path. It is a
difference of two distributions' tails, not of paired requests (bench_gateway.py pairs them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from shutil import which
from typing import Final

sys.path.insert(0, str(Path(__file__).parent))
import grpc

from _common import WrkRun, free_port, machine, skip, wrk

HERE: Final = Path(__file__).parent
TOOLS: Final = ("nginx", "haproxy", "wrk")
INSTALL: Final = "apt-get install -y nginx-light haproxy wrk, or e2e/cluster/install-deps.sh"
SESSION_HEADER: Final = "X-Voltgrid-Session"
SESSIONS: Final = 64
SESSION_ID: Final = "bench-session"
#: Path and size of each upstream body.
BODIES: Final = {"/1k": 1024, "/64k": 64 * 1024}
ONE_WORKER_CONNECTIONS: Final = (10, 64, 256)
TWO_WORKER_CONNECTIONS: Final = (64,)
#: The added latency is read at this many connections, each waiting PACED_DELAY_MS between requests:
#: about 1,000 req/s, below every target's capacity here, so a latency is the path's own cost and not
#: a queue (at saturation on 2 CPUs even the direct upstream's p99 is the scheduler's, tens of ms).
LATENCY_CONNECTIONS: Final = 10
PACED_DELAY_MS: Final = 10
#: Goals of the gateway's data path: its throughput against nginx's, and its added tail.
ONE_WORKER_GOAL: Final = 0.4
TWO_WORKER_GOAL: Final = 0.6
ADDED_P99_GOAL_MS: Final = 1.0
GATEWAY: Final = "gateway"
NGINX: Final = "nginx"
DIRECT: Final = "direct"
#: Seconds of untimed load per target before anything is timed (connections, pools, the session).
WARMUP_S: Final = 1
START_TIMEOUT_S: Final = 20
STOP_TIMEOUT_S: Final = 10


@dataclass(frozen=True)
class Target:
    """Something wrk loads: the upstream itself or a proxy in front of it, with its worker count."""

    name: str
    workers: int
    url: str


@dataclass(frozen=True)
class Row:
    target: Target
    body: str
    connections: int
    run: WrkRun


class Processes:
    """The processes this benchmark started, each stopped by its PID (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, tmp: Path, tools: dict[str, str]) -> None:
        self.tmp = tmp
        #: Each tool's path (nginx and haproxy live in /usr/sbin, which a non-root PATH may lack).
        self.tools = tools
        self.started: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: Sequence[str], port: int) -> subprocess.Popen[bytes] | None:
        """Starts ``argv`` and waits until it listens on ``port``; None when it exited first (its
        output is in ``<tmp>/<name>.log``)."""
        log = self.tmp / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.started[name] = proc
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                del self.started[name]  # nothing left to stop
                return None
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                return proc
            time.sleep(0.05)
        raise RuntimeError(f"{name} does not listen on {port} after {START_TIMEOUT_S} s:\n{log.read_text()[-2000:]}")

    def need(self, name: str, argv: Sequence[str], port: int) -> None:
        """Starts ``argv`` as :meth:`start`, failing with its output when it exits instead."""
        if self.start(name, argv, port) is None:
            raise RuntimeError(f"{name} exited at start:\n{(self.tmp / f'{name}.log').read_text()}")

    def exited(self) -> str:
        """Which processes exited while they should be serving, with their output's end: why a wrk run
        failed, most of the time."""
        return "\n".join(
            f"{name} exited ({proc.returncode}): {(self.tmp / f'{name}.log').read_text()[-2000:]}"
            for name, proc in self.started.items()
            if proc.poll() is not None
        )

    def stop_all(self) -> None:
        for proc in reversed(self.started.values()):  # proxies first, then the upstream
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def nginx_config(tmp: Path, name: str, workers: int, server: str) -> Path:
    """An nginx configuration of its own: pid file, logs and temp paths in ``tmp`` (so it runs as any
    user, beside any system nginx), no access log, keep-alive connections kept for the whole run."""
    temp = tmp / f"{name}-temp"
    temp.mkdir()
    config = tmp / f"{name}.conf"
    config.write_text(
        f"""
worker_processes {workers};
pid {tmp}/{name}.pid;
error_log {tmp}/{name}-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
{server}
}}
"""
    )
    return config


def nginx_argv(procs: Processes, config: Path, name: str) -> list[str]:
    """nginx in the foreground (``daemon off``), so the started PID is its master's."""
    tmp = procs.tmp
    return [
        procs.tools["nginx"],
        "-p",
        str(tmp),
        "-c",
        str(config),
        "-e",
        f"{tmp}/{name}-error.log",
        "-g",
        "daemon off;",
    ]


def start_upstream(procs: Processes, tmp: Path) -> str:
    root = tmp / "www"
    root.mkdir()
    for path, size in BODIES.items():
        (root / path.lstrip("/")).write_bytes(b"x" * size)
    port = free_port()
    server = f"""
    sendfile on;
    tcp_nopush on;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}"""
    procs.need("upstream", nginx_argv(procs, nginx_config(tmp, "upstream", 1, server), "upstream"), port)
    return f"http://127.0.0.1:{port}"


def start_nginx(procs: Processes, tmp: Path, upstream: str, workers: int) -> Target:
    name = f"nginx-{workers}"
    port = free_port()
    server = f"""
    upstream sticky {{
        hash $http_x_voltgrid_session consistent;
        server {upstream.removeprefix("http://")};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://sticky;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffer_size 16k;
            proxy_buffers 8 16k;
        }}
    }}"""
    procs.need(name, nginx_argv(procs, nginx_config(tmp, name, workers, server), name), port)
    return Target(NGINX, workers, f"http://127.0.0.1:{port}")


def start_haproxy(procs: Processes, tmp: Path, upstream: str, workers: int) -> Target:
    name = f"haproxy-{workers}"
    port = free_port()
    config = tmp / f"{name}.cfg"
    config.write_text(
        f"""
global
    nbthread {workers}
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 300s
frontend listen
    bind 127.0.0.1:{port}
    default_backend sticky
backend sticky
    balance hdr({SESSION_HEADER})
    hash-type consistent
    http-reuse always
    server upstream {upstream.removeprefix("http://")}
"""
    )
    # -db: the foreground, so the started PID is haproxy's; -p: its pid file in tmp, not /run.
    procs.need(name, [procs.tools["haproxy"], "-db", "-f", str(config), "-p", str(tmp / f"{name}.pid")], port)
    return Target("haproxy", workers, f"http://127.0.0.1:{port}")


def gateway_argv(upstream: str, port: int) -> list[str]:
    """The gateway with Header affinity: ``X-Voltgrid-Session`` names the session."""
    return [sys.executable, str(HERE / "_gateway_server.py"), GATEWAY, str(port), upstream, "Header"]


def start_gateway(procs: Processes, upstream: str) -> Target:
    port = free_port()
    procs.need("gateway-1", gateway_argv(upstream, port), port)
    return Target(GATEWAY, 1, f"http://127.0.0.1:{port}")


def try_gateway_workers(procs: Processes, upstream: str, workers: int) -> Target | None:
    """The gateway with ``--workers N``, or None when ``_gateway_server.py`` does not accept the option
    yet (it exits instead of listening)."""
    port = free_port()
    argv = [*gateway_argv(upstream, port), "--workers", str(workers)]
    if procs.start(f"gateway-{workers}", argv, port) is None:
        return None
    return Target(GATEWAY, workers, f"http://127.0.0.1:{port}")


def warm_up(targets: Sequence[Target], script: Path) -> None:
    """Untimed load on every target alike: connections opened, pools filled, the session created."""
    for target in targets:
        wrk(target.url + next(iter(BODIES)), 10, WARMUP_S, threads=target.workers, script=script)


def measure(
    targets: Sequence[Target],
    bodies: Sequence[str],
    connections: Sequence[int],
    *,
    duration: int,
    rounds: int,
    script: Path,
    paced: bool = False,
) -> list[Row]:
    """Every target in every (body, connections) cell, taking turns within a cell; wrk runs one thread
    per proxy worker. The best of ``rounds`` counts: the most req/s, or with ``paced`` (``script``
    waits between requests) the lowest p99."""
    rows: list[Row] = []
    for body in bodies:
        for conns in connections:
            best: dict[Target, WrkRun] = {}
            for _ in range(rounds):
                for target in targets:
                    print(f"  {target.name} x{target.workers} {body} c={conns}", file=sys.stderr, flush=True)
                    run = wrk(target.url + body, conns, duration, threads=target.workers, script=script)
                    if target not in best or (run.p99 < best[target].p99 if paced else run.rps > best[target].rps):
                        best[target] = run
            rows += [Row(target, body, conns, best[target]) for target in targets]
    return rows


def find(rows: Sequence[Row], name: str, body: str, workers: int, connections: int) -> WrkRun | None:
    for row in rows:
        if (row.target.name, row.body, row.target.workers, row.connections) == (name, body, workers, connections):
            return row.run
    return None


def ratio_to_nginx(rows: Sequence[Row], row: Row) -> float | None:
    nginx = find(rows, NGINX, row.body, row.target.workers, row.connections)
    return row.run.rps / nginx.rps if nginx else None


def added_p99(paced: Sequence[Row], name: str, body: str) -> float | None:
    """``name``'s p99 minus the upstream's in the paced runs, in ms."""
    proxied = find(paced, name, body, 1, LATENCY_CONNECTIONS)
    direct = find(paced, DIRECT, body, 1, LATENCY_CONNECTIONS)
    return proxied.p99 - direct.p99 if proxied and direct else None


def print_tables(rows: Sequence[Row], paced: Sequence[Row], bodies: Sequence[str]) -> None:
    for body in bodies:
        print(f"\n## {body} ({BODIES[body]:,} byte body)\n")
        print("| proxy | workers | c | req/s | p50 ms | p99 ms | x nginx | failed |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for row in (r for r in rows if r.body == body):
            ratio = ratio_to_nginx(rows, row)
            workers = "-" if row.target.name == DIRECT else str(row.target.workers)
            name = f"direct (no proxy, wrk -t{row.target.workers})" if row.target.name == DIRECT else row.target.name
            run = row.run
            print(
                f"| {name} | {workers} | {row.connections} | {run.rps:,.0f} | {run.p50:.2f} | {run.p99:.2f} "
                f"| {'-' if ratio is None else f'{ratio:.2f}'} | {run.non_2xx + run.socket_errors} |"
            )
        print(
            f"\nadded latency, paced: c={LATENCY_CONNECTIONS}, each connection waiting {PACED_DELAY_MS} ms "
            "between requests (about 1,000 req/s), 1 worker\n"
        )
        print("| proxy | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms | failed |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        direct = find(paced, DIRECT, body, 1, LATENCY_CONNECTIONS)
        for row in (r for r in paced if r.body == body):
            run = row.run
            added = f"{run.p50 - direct.p50:+.2f} | {run.p99 - direct.p99:+.2f}" if direct else "- | -"
            print(
                f"| {row.target.name} | {run.rps:,.0f} | {run.p50:.2f} | {run.p99:.2f} | {added} "
                f"| {run.non_2xx + run.socket_errors} |"
            )


def verdict(ratios: Sequence[tuple[str, WrkRun | None, WrkRun | None]], goal: float) -> str:
    """PASS/FAIL of the gateway's throughput against nginx's in each cell named, with the figures;
    NOT MEASURED when a cell is missing. A cell whose gateway requests failed does not pass."""
    if any(gateway is None or nginx is None for _, gateway, nginx in ratios):
        missing = ", ".join(cell for cell, gateway, nginx in ratios if gateway is None or nginx is None)
        return f"NOT MEASURED (no figures for {missing} in this run)"
    figures: list[str] = []
    passed = True
    for cell, gateway, nginx in ratios:
        assert gateway is not None and nginx is not None
        ratio = gateway.rps / nginx.rps
        failed = gateway.non_2xx + gateway.socket_errors
        passed = passed and ratio >= goal and failed == 0
        figures.append(f"{cell} {ratio:.2f}" + (f" ({failed} failed requests)" if failed else ""))
    return f"{'PASS' if passed else 'FAIL'} ({'; '.join(figures)})"


def print_acceptance(
    rows: Sequence[Row], paced: Sequence[Row], bodies: Sequence[str], gateway_workers_accepted: bool
) -> None:
    print("\n## acceptance (the gateway's data path)\n")
    cells = [(body, conns) for body in bodies for conns in (LATENCY_CONNECTIONS, 64)]
    one = [
        (f"{body} c={conns}", find(rows, GATEWAY, body, 1, conns), find(rows, NGINX, body, 1, conns))
        for body, conns in cells
    ]
    throughput = verdict(one, ONE_WORKER_GOAL)
    print(f"one gateway worker ≥ {ONE_WORKER_GOAL}x nginx (1 worker) at c=10 and c=64: {throughput}")
    added = [(body, added_p99(paced, GATEWAY, body)) for body in bodies]
    if any(ms is None for _, ms in added):
        latency = "NOT MEASURED (no paced rows in this run)"
    else:
        ok = all(ms is not None and ms <= ADDED_P99_GOAL_MS for _, ms in added)
        latency = f"{'PASS' if ok else 'FAIL'} ({'; '.join(f'{body} {ms:+.2f} ms' for body, ms in added)})"
    print(f"one gateway worker: added p99 ≤ {ADDED_P99_GOAL_MS:g} ms at c={LATENCY_CONNECTIONS} (paced): {latency}")
    if gateway_workers_accepted:
        two = [
            (f"{body} c={conns}", find(rows, GATEWAY, body, 2, conns), find(rows, NGINX, body, 2, conns))
            for body in bodies
            for conns in TWO_WORKER_CONNECTIONS
        ]
        workers = verdict(two, TWO_WORKER_GOAL)
    else:
        workers = "NOT MEASURED (bench/_gateway_server.py gateway does not accept --workers yet)"
    print(f"gateway workers: 2 ≥ {TWO_WORKER_GOAL}x nginx with 2 workers: {workers}")


def grpc_through_gateway(procs: Processes, calls: int) -> list[str]:
    """gRPC: a grpcio server as the upstream, the gateway in front (Header affinity: the session id in
    the call's metadata), and a grpcio client timing ``calls`` unary calls (one at a time, then 50 in
    flight) and one server stream of ``calls`` messages, direct and through the gateway."""
    upstream_port, gateway_port = free_port(), free_port()
    server = str(HERE / "_gateway_server.py")
    procs.need("grpc-upstream", [sys.executable, server, "grpc-upstream", str(upstream_port)], upstream_port)
    argv = [sys.executable, server, GATEWAY, str(gateway_port), f"http://127.0.0.1:{upstream_port}", "Header"]
    procs.need("grpc-gateway", argv, gateway_port)
    rows = [("direct", upstream_port), ("gateway, 1 worker", gateway_port)]
    figures = {name: asyncio.run(_grpc_loop(port, calls)) for name, port in rows}
    lines = [
        "\n### gRPC (grpcio client, 100-byte messages)\n",
        "| path | unary calls/s (1 in flight) | unary calls/s (50 in flight) | stream messages/s | x direct |",
        "|---|---:|---:|---:|---:|",
    ]
    direct = figures["direct"]
    for name, (one, fifty, streamed) in figures.items():
        ratio = f"{one / direct[0]:.2f} / {fifty / direct[1]:.2f} / {streamed / direct[2]:.2f}"
        lines.append(f"| {name} | {one:,.0f} | {fifty:,.0f} | {streamed:,.0f} | {ratio} |")
    return lines


async def _grpc_loop(port: int, calls: int) -> tuple[float, float, float]:
    metadata = (("x-voltgrid-session", "bench-grpc"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        unary = channel.unary_unary("/voltgrid.bench.Echo/Unary")
        await unary(b"warm", metadata=metadata)
        started = time.perf_counter()
        for _ in range(calls):
            await unary(b"x" * 100, metadata=metadata)
        one = calls / (time.perf_counter() - started)
        started = time.perf_counter()
        for _ in range(calls // 50):
            await asyncio.gather(*(unary(b"x" * 100, metadata=metadata) for _ in range(50)))
        fifty = (calls // 50) * 50 / (time.perf_counter() - started)
        started = time.perf_counter()
        count = 0
        async for _ in channel.unary_stream("/voltgrid.bench.Echo/Stream")(str(calls).encode(), metadata=metadata):
            count += 1
        streamed = count / (time.perf_counter() - started)
    return one, fifty, streamed


def tools() -> dict[str, str]:
    """Each tool's path, or the skip that says what to install."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = {tool: which(tool, path=search) for tool in TOOLS}
    missing = [tool for tool, path in found.items() if path is None]
    if missing:
        skip(f"needs {', '.join(missing)} ({INSTALL})")
    return {tool: path for tool, path in found.items() if path is not None}


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so a killed run still stops what it started
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, help="seconds per wrk run (default 5; 1 with --quick)")
    parser.add_argument("--rounds", type=int, default=1, help="runs per target and cell, the best counts")
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 s runs, /1k only, c=10 and 64")
    args = parser.parse_args()
    paths = tools()
    duration = args.duration or (1 if args.quick else 5)
    bodies = ["/1k"] if args.quick else list(BODIES)
    one_worker_connections = (10, 64) if args.quick else ONE_WORKER_CONNECTIONS
    print(machine())
    print(
        f"# wrk, the upstream nginx and the proxy share this machine's {os.cpu_count()} CPUs (and any other work: "
        "see the load average): the figures are noisy, the p99s most; compare ratios within one run only."
    )
    print(f"# {duration} s per wrk run, best of {args.rounds} round(s); latencies in ms (wrk --latency)")
    with tempfile.TemporaryDirectory(prefix="bench-proxies-") as tmp_name:
        tmp = Path(tmp_name)
        tmp.chmod(0o755)  # nginx's workers run as another user when started by root: they read www/
        script = tmp / "session.lua"
        # 64 sessions taken in turn: every proxy routes each to its place; with several gateway workers each
        # owns some (one session would make one worker the owner of all traffic, the others its forwarders).
        script.write_text(
            f'local ids = {{}} for i = 1, {SESSIONS} do ids[i] = "{SESSION_ID}-" .. i end\n'
            "local n = 0\n"
            f'request = function() n = n + 1 wrk.headers["{SESSION_HEADER}"] = ids[n % {SESSIONS} + 1]'
            " return wrk.format() end\n"
        )
        paced_script = tmp / "session-paced.lua"
        paced_script.write_text(f"{script.read_text()}function delay() return {PACED_DELAY_MS} end\n")
        procs = Processes(tmp, paths)
        try:
            upstream = start_upstream(procs, tmp)
            one = [
                start_nginx(procs, tmp, upstream, 1),
                start_haproxy(procs, tmp, upstream, 1),
                start_gateway(procs, upstream),
            ]
            two = [start_nginx(procs, tmp, upstream, 2), start_haproxy(procs, tmp, upstream, 2)]
            gateway_two = try_gateway_workers(procs, upstream, 2)
            if gateway_two is None:
                print("# gateway --workers 2: not accepted by bench/_gateway_server.py yet; its row is not measured")
            else:
                two.append(gateway_two)
            one_cell = [Target(DIRECT, 1, upstream), *one]
            two_cell = [Target(DIRECT, 2, upstream), *two]
            warm_up([*one_cell, *two_cell], script)
            rows = measure(
                one_cell, bodies, one_worker_connections, duration=duration, rounds=args.rounds, script=script
            )
            rows += measure(
                two_cell, bodies, TWO_WORKER_CONNECTIONS, duration=duration, rounds=args.rounds, script=script
            )
            paced = measure(
                one_cell,
                bodies,
                [LATENCY_CONNECTIONS],
                duration=duration,
                rounds=args.rounds,
                script=paced_script,
                paced=True,
            )
            grpc_lines = grpc_through_gateway(procs, 200 if args.quick else 2000)
        except RuntimeError as e:
            raise RuntimeError(f"{e}\n{procs.exited() or 'every process it started is still running'}") from e
        finally:
            procs.stop_all()
    print_tables(rows, paced, bodies)
    print_acceptance(rows, paced, bodies, gateway_two is not None)
    print("\n".join(grpc_lines))


if __name__ == "__main__":
    main()
