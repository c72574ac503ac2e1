"""Every benchmark in bench/ that this machine allows, at sizes that finish in minutes (``make bench``).

    .venv/bin/python bench/run_all.py [--kubeconfig PATH] [--tiny] [--only NAME ...]

A benchmark that needs a cluster runs only with ``--kubeconfig`` (``make bench
BENCH_KUBECONFIG=/tmp/voltgrid-cluster/kubeconfig``); without it, and when a tool it needs is missing, it
is reported as skipped with the reason, and the others still run. The exit status is 1 when a
benchmark failed, 0 otherwise (skips included). ``--tiny`` runs the sizes of the unit suite's smoke
test (seconds, figures meaningless).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

sys.path.insert(0, str(Path(__file__).parent))
from _common import SKIPPED

HERE: Final = Path(__file__).parent


@dataclass(frozen=True)
class Bench:
    script: str
    #: Arguments of ``make bench``: sizes whose figures mean something, run in minutes.
    args: list[str]
    #: Arguments of the smoke test: seconds, the figures meaningless.
    tiny: list[str]
    #: Needs a cluster: given ``--kubeconfig PATH`` (and cluster_args) or skipped.
    needs_cluster: bool = False
    #: With a cluster, these are added (a benchmark that measures more when it has one).
    cluster_args: list[str] = field(default_factory=list)


BENCHES: Final = (
    Bench(
        "bench_registry.py",
        ["--n", "200000"],
        ["--n", "500"],
        cluster_args=["--objects", "3000", "--writers", "16"],
    ),
    Bench("bench_registry_memory.py", ["--n", "1000000"], ["--n", "2000"]),
    Bench("bench_session_warm.py", ["--n", "2000", "--http-n", "1000"], ["--n", "50", "--http-n", "10"]),
    Bench(
        "bench_gateway.py",
        ["--requests", "2000", "--duration", "5", "--rounds", "2"],
        ["--requests", "20", "--concurrency", "2", "--no-throughput"],
    ),
    Bench("bench_proxies.py", ["--duration", "5"], ["--quick"]),
    Bench("bench_gateway_cpu.py", ["--requests", "20000", "--rounds", "7"], ["--requests", "200", "--rounds", "1"]),
    Bench(
        "bench_triggers.py", ["--n", "5000", "--latency-n", "300"], ["--n", "50", "--latency-n", "5", "--rounds", "1"]
    ),
    Bench("bench_sandbox_agent.py", ["--n", "200", "--mib", "1024"], ["--n", "3", "--mib", "2"]),
    Bench("bench_pod_start.py", ["--n", "10"], ["--n", "1"], needs_cluster=True),
    Bench("bench_functions_scale.py", ["-n", "2000"], ["-n", "10"], needs_cluster=True),
    Bench("bench_sandbox_claims.py", ["--pool", "12"], ["--pool", "1", "--fresh", "1"], needs_cluster=True),
)


def command(bench: Bench, kubeconfig: str | None, tiny: bool) -> list[str] | None:
    """The command line of ``bench`` here, or None when it needs a cluster and none was given."""
    if bench.needs_cluster and not kubeconfig:
        return None
    argv = [sys.executable, str(HERE / bench.script), *(bench.tiny if tiny else bench.args)]
    if kubeconfig and (bench.needs_cluster or bench.cluster_args):
        argv += ["--kubeconfig", kubeconfig, *bench.cluster_args]
    return argv


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubeconfig", help="a cluster for the benchmarks that need one")
    parser.add_argument("--tiny", action="store_true", help="smoke-test sizes")
    parser.add_argument("--only", nargs="*", default=[], help="script names to run (default: all)")
    args = parser.parse_args()
    summary: list[str] = []
    failed = False
    for bench in BENCHES:
        if args.only and bench.script not in args.only:
            continue
        print(f"== {bench.script}", flush=True)
        argv = command(bench, args.kubeconfig, args.tiny)
        if argv is None:
            reason = "needs a cluster: make bench BENCH_KUBECONFIG=PATH (or run_all.py --kubeconfig PATH)"
            print(f"SKIPPED: {reason}", flush=True)
            summary.append(f"skipped  {bench.script}: {reason}")
            continue
        started = time.monotonic()
        done = subprocess.run(argv, check=False, stdout=subprocess.PIPE, text=True)
        print(done.stdout, end="", flush=True)
        took = time.monotonic() - started
        if done.returncode == SKIPPED:
            reason = done.stdout.strip().splitlines()[-1].removeprefix("SKIPPED: ")
            summary.append(f"skipped  {bench.script}: {reason}")
        elif done.returncode:
            failed = True
            summary.append(f"FAILED   {bench.script} (exit {done.returncode} after {took:.0f} s)")
        else:
            partial = [line for line in done.stdout.splitlines() if "SKIPPED" in line]
            summary.append(f"ran      {bench.script} in {took:.0f} s" + (f" ({'; '.join(partial)})" if partial else ""))
    print("== summary")
    print("\n".join(summary))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
