"""Memory of 1,000,000 idle sessions in one gateway process (goal < 1 GiB).

    .venv/bin/python bench/bench_registry_memory.py [--n 1000000]

Each session is a real registry record (created, bound, used, then released so it holds no
instance: an idle session whose id stays valid) with its expiry timer in the one scheduler heap.
Measured as the growth of the process's resident set, beside the bytes per session.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

from voltgrid.registry.ids import mint_session_id
from voltgrid.registry.scheduler import DeadlineScheduler
from voltgrid.registry.store import SessionRegistry

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    args = parser.parse_args()
    print(machine())
    gc.collect()
    before = rss_bytes()
    reg = SessionRegistry()
    sched: DeadlineScheduler[str] = DeadlineScheduler(lambda key, now: None)
    t0 = time.perf_counter()
    for i in range(args.n):
        record = reg.create(mint_session_id(), "bench/fn", now=0.0, idle_timeout=900, max_lifetime=21600)
        reg.bind(record, f"inst-{i}", 0.0)
        reg.begin(record, 1.0)
        reg.end(record, 2.0, 1000, 5000)
        reg.unbind(record, 3.0)
        sched.schedule(record.key, record.due())
    elapsed = time.perf_counter() - t0
    gc.collect()
    grown = rss_bytes() - before
    print(
        f"{args.n:,} idle sessions (records + ids + indexes + timer heap): {grown / 2**20:,.0f} MiB RSS growth, "
        f"{grown / args.n:.0f} bytes/session, built in {elapsed:.1f}s"
    )
    print(f"ratio to the 1 GiB budget: {grown / 2**30:.2f} (goal < 1.00); sessions={len(reg):,} timers={len(sched):,}")


if __name__ == "__main__":
    main()
