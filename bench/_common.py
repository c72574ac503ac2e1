"""What every benchmark script shares: percentiles that say how many samples stand behind them,
loopback ports, the machine line printed above the figures, the "skipped" exit, and one wrk run.

A script that cannot run here (no cluster given, a tool missing) calls :func:`skip`: it prints one
line saying what and why and exits with :data:`SKIPPED`, which ``bench/run_all.py`` (``make bench``)
reports as skipped rather than failed.
"""

from __future__ import annotations

import math
import os
import platform
import re
import socket
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, NoReturn

#: Exit status of a benchmark that did not run here (EX_UNAVAILABLE).
SKIPPED: Final = 69
#: Fewer samples than this cannot carry a p99: the tail is then reported as the maximum.
MIN_SAMPLES_FOR_P99: Final = 100


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..1) of a non-empty list."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(len(ordered) * p) - 1))]


def tail(samples: list[float], scale: float = 1.0, unit: str = "") -> str:
    """``p99 X`` with enough samples, else ``max X (n=N)``: a p99 of 8 samples is their maximum,
    and is named so."""
    if len(samples) >= MIN_SAMPLES_FOR_P99:
        return f"p99 {percentile(samples, 0.99) * scale:.2f}{unit}"
    return f"max {max(samples) * scale:.2f}{unit} (n={len(samples)}, too few for a p99)"


def machine() -> str:
    """One line naming the machine and its load when the figures were taken."""
    load = os.getloadavg()
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"# {stamp}, {platform.node()}: {os.cpu_count()} CPUs, load average {load[0]:.2f} "
        f"(1 min) {load[1]:.2f} (5 min), Python {platform.python_version()}"
    )


def skip(reason: str) -> NoReturn:
    """This benchmark does not run here; says why and exits with :data:`SKIPPED`."""
    print(f"SKIPPED: {reason}", flush=True)
    raise SystemExit(SKIPPED)


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


#: wrk's latency units, in milliseconds.
WRK_UNITS: Final = {"us": 1e-3, "ms": 1.0, "s": 1e3}


@dataclass(frozen=True)
class WrkRun:
    """What one wrk run measured: requests per second, latency percentiles in ms, and the requests that
    did not succeed (an answer other than 2xx/3xx, or a socket error: a figure with these is suspect)."""

    rps: float
    p50: float
    p99: float
    non_2xx: int
    socket_errors: int


def wrk(
    url: str,
    connections: int,
    duration: int,
    *,
    threads: int = 1,
    header: str | None = None,
    script: Path | None = None,
) -> WrkRun:
    """Runs wrk (``--latency``, for the percentiles) against ``url``; ``header`` is ``Name: value``,
    ``script`` a Lua file (e.g. one setting ``wrk.headers``)."""
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency"]
    if header:
        cmd += ["-H", header]
    if script:
        cmd += ["-s", str(script)]
    done = subprocess.run([*cmd, url], capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"wrk exited {done.returncode} against {url}:\n{done.stdout}{done.stderr}")
    out = done.stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None:
        raise RuntimeError(f"no Requests/sec in wrk's output:\n{out}")
    latency = {}
    for pct in ("50", "99"):
        m = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out)
        if m is None:
            raise RuntimeError(f"no {pct}% latency in wrk's output:\n{out}")
        latency[pct] = float(m.group(1)) * WRK_UNITS[m.group(2)]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return WrkRun(
        rps=float(rps.group(1)),
        p50=latency["50"],
        p99=latency["99"],
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in sockets.groups()) if sockets else 0,
    )
