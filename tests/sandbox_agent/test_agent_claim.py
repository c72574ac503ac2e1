"""A warm pool's sandbox: prewarmed kernel, one claim the gateway signed, the claimant's token and env."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import SANDBOX_ID, TOKEN, Agent, StartAgent, signed_claim, text_of, warm_settings
from voltgrid.sandbox_claims import sign_claim, token_digest

CLAIMANT = "claimant-token-abcdefghijklmnop"


@pytest.fixture
async def warm(start_agent: StartAgent) -> Agent:
    """A pool sandbox whose Python kernel and Bash started before it served; the client has no token yet."""
    agent: Agent = await start_agent(**warm_settings(prewarm=("python", "bash")))
    del agent.client.headers["Authorization"]
    return agent


async def test_claim_sets_token_and_env_in_already_running_contexts(warm: Agent) -> None:
    assert (await warm.client.get("/health")).json() == {"status": "ok", "claimed": False}
    assert (await warm.client.get("/contexts")).status_code == 401  # nothing opens before the claim
    r = await warm.client.post("/claim", json=signed_claim(CLAIMANT, {"API_KEY": "k-1", "QUOTED": "a 'b' $c"}))
    assert r.status_code == 200
    warm.client.headers["Authorization"] = f"Bearer {CLAIMANT}"
    listed = (await warm.client.get("/contexts")).json()
    assert sorted(c["language"] for c in listed) == ["bash", "python"]
    py = await warm.events("/execute", {"code": "import os\nprint(os.environ['API_KEY'], os.environ['QUOTED'])"})
    assert text_of(py) == "k-1 a 'b' $c\n" and py[-1]["execution_count"] == 1
    sh = await warm.events("/execute", {"language": "bash", "code": 'echo "$API_KEY"'})
    assert text_of(sh) == "k-1\n"
    cmd = await warm.events("/commands", {"cmd": "echo $API_KEY; env | grep -c CLAIM_KEY || true"})
    assert text_of(cmd) == "k-1\n0\n"


async def test_a_sandbox_takes_one_claim_only(warm: Agent) -> None:
    assert (await warm.client.post("/claim", json=signed_claim(CLAIMANT))).status_code == 200
    again = await warm.client.post("/claim", json=signed_claim("another-token-0123456789"))
    assert again.status_code == 409  # signed by the gateway, yet refused: burn after use
    assert (
        await warm.client.get("/contexts", headers={"Authorization": "Bearer another-token-0123456789"})
    ).status_code == 401
    async with httpx.AsyncClient(base_url=warm.url, headers={"Authorization": f"Bearer {CLAIMANT}"}) as owner:
        assert (await owner.get("/contexts")).status_code == 200


def _forged() -> dict[str, str]:
    return {"claim": sign_claim(Ed25519PrivateKey.generate(), SANDBOX_ID, token_digest(CLAIMANT), {}, time.time())}


@pytest.mark.parametrize(
    ("make", "status", "needle"),
    [  # made when the test runs: a claim signed at collection would be stale by then
        (dict, 400, "'claim' is required"),
        (lambda: {"claim": "not-a-claim"}, 401, "payload.signature"),
        (lambda: {"claim": "a.b"}, 401, "base64url"),
        (_forged, 401, "signature does not verify"),
        (lambda: signed_claim(CLAIMANT, sandbox_id="sb-another-pod-000000000"), 401, "is for sandbox"),
        (lambda: signed_claim(CLAIMANT, at=time.time() - 3600), 401, "good for"),
        (lambda: signed_claim(CLAIMANT, {"BAD NAME": "x"}), 400, "env names"),
        (lambda: signed_claim(CLAIMANT, {"VOLTGRID_SANDBOX_TOKEN": "x"}), 400, "env names"),
    ],
    ids=["empty", "not-a-claim", "not-base64", "forged", "other-pod", "stale", "bad-env", "token-env"],
)
async def test_a_bad_claim_is_refused_and_leaves_the_sandbox_unclaimed(
    warm: Agent, make: Callable[[], dict[str, object]], status: int, needle: str
) -> None:
    r = await warm.client.post("/claim", json=make())
    assert r.status_code == status and needle in r.json()["error"]["message"], r.text
    assert (await warm.client.post("/claim", json=signed_claim(CLAIMANT))).status_code == 200


async def test_a_sandbox_started_with_its_token_refuses_claims(agent: Agent) -> None:
    r = await agent.client.post("/claim", json=signed_claim(CLAIMANT))
    assert r.status_code == 401 and "takes no claim" in r.json()["error"]["message"]
    assert (await agent.client.get("/contexts")).status_code == 200
    assert TOKEN != CLAIMANT
