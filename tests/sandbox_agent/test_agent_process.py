"""`python -m voltgrid.sandbox_agent` as the images run it: a real process, prewarmed, claimed, stopped."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import httpx

from conftest import CLAIM_PUBLIC, SANDBOX_ID, signed_claim
from ports import free_port

CLAIMANT = "claimant-token-abcdefghijklmnop"


async def test_agent_process_serves_after_prewarm_and_stops_its_kernels_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "VOLTGRID_SANDBOX_CLAIM_KEY": CLAIM_PUBLIC,
        "VOLTGRID_SANDBOX_ID": SANDBOX_ID,
        "VOLTGRID_SANDBOX_PREWARM": "python",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voltgrid.sandbox_agent", "--host", "127.0.0.1", "--port", str(port),
        "--workspace", str(tmp_path), env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for _ in range(600):
                try:
                    if (await client.get("/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            claim = await client.post("/claim", json=signed_claim(CLAIMANT))
            assert claim.status_code == 200
            started = time.monotonic()
            headers = {"Authorization": f"Bearer {CLAIMANT}"}
            r = await client.post("/execute", json={"code": "import os\nprint(1)"}, headers=headers)
            first_result_s = time.monotonic() - started
            events = [json.loads(line) for line in r.text.splitlines()]
            assert events[0] == {"type": "stdout", "text": "1\n"} and events[-1]["status"] == "ok"
            # The kernel was started before serving: the first execution does not wait for it.
            assert first_result_s < 2.0, first_result_s
            pid_events = (await client.post("/execute", json={"code": "os.getpid()"}, headers=headers)).text
            kernel_pid = int(json.loads(pid_events.splitlines()[0])["data"]["text/plain"])
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert not _alive(kernel_pid)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper counts as stopped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone between the open and the read: ESRCH
        return False
