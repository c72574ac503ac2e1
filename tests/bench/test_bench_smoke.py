"""Every benchmark script runs, at sizes of seconds (its figures meaningless here): a benchmark
that no longer runs is found by the unit suite, not by the next person quoting its figures.

A benchmark that skips itself for a missing tool (nginx, haproxy, wrk, redis-server) is skipped
here with its reason; under CI (``.ci/run`` sets ``CI``, after e2e/cluster/install-deps.sh installed
them) that fails instead, so the figures the docs quote stay reproducible there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from _common import SKIPPED, percentile, tail
from run_all import BENCHES, HERE, command

TIMEOUT_S = 120


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)


def test_make_bench_knows_every_script() -> None:
    assert sorted(b.script for b in BENCHES) == sorted(p.name for p in HERE.glob("bench_*.py"))


@pytest.mark.parametrize("bench", [b for b in BENCHES if not b.needs_cluster], ids=lambda b: b.script)
def test_runs_at_tiny_size(bench) -> None:
    argv = command(bench, None, tiny=True)
    assert argv is not None
    done = run(argv)
    if done.returncode == SKIPPED and not os.environ.get("CI"):
        pytest.skip(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr  # e.g. a warm claim's checkpoint failing while timed
    assert done.stdout.startswith("# "), done.stdout  # the machine line the docs quote


@pytest.mark.parametrize("bench", [b for b in BENCHES if b.needs_cluster], ids=lambda b: b.script)
def test_cluster_benchmark_without_a_cluster_says_it_skipped(bench) -> None:
    script = str(HERE / bench.script)
    helped = run([sys.executable, script, "--help"])
    assert helped.returncode == 0 and "--kubeconfig" in helped.stdout, helped.stderr
    done = run([sys.executable, script, *bench.tiny])
    assert (done.returncode, done.stdout.strip()) == (
        SKIPPED,
        f"SKIPPED: needs a cluster: {done.stdout.split(': ', 2)[2].strip()}",
    )
    assert "--kubeconfig" in done.stdout and done.stderr == ""


def test_run_all_reports_skips_and_keeps_going() -> None:
    done = run(
        [sys.executable, str(Path(HERE / "run_all.py")), "--tiny", "--only", "bench_pod_start.py", "bench_registry.py"]
    )
    assert done.returncode == 0, done.stderr
    summary = done.stdout.split("== summary\n", 1)[1].splitlines()
    assert summary[0].startswith("ran      bench_registry.py")
    assert summary[1].startswith("skipped  bench_pod_start.py: needs a cluster")


def test_a_tail_of_few_samples_is_called_their_maximum() -> None:
    assert tail([0.001 * i for i in range(1, 9)], 1e3, " ms") == "max 8.00 ms (n=8, too few for a p99)"
    samples = [float(i) for i in range(1, 201)]
    assert percentile(samples, 0.99) == 198.0 and percentile(samples, 0.5) == 100.0
    assert tail(samples) == "p99 198.00"


def test_proxies_benchmark_without_its_tools_says_what_to_install() -> None:
    done = subprocess.run(
        [sys.executable, str(HERE / "bench_proxies.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
        env={**os.environ, "PATH": "/nonexistent"},  # wrk is looked up on PATH only (nginx, haproxy also in sbin)
    )
    assert (done.returncode, done.stderr) == (SKIPPED, "")
    assert done.stdout.startswith("SKIPPED: needs wrk (apt-get install -y nginx-light haproxy wrk"), done.stdout
