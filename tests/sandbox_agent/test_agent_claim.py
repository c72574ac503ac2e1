"""A warm pool's sandbox: prewarmed kernel, one claim with the pool secret, the claimant's token and env."""

from __future__ import annotations

import httpx
import pytest

from conftest import POOL_SECRET, TOKEN, Agent, StartAgent, text_of

CLAIMANT = "claimant-token-abcdefghijklmnop"


@pytest.fixture
async def warm(start_agent: StartAgent) -> Agent:
    """A pool sandbox whose Python kernel and Bash started before it served; the client has no token yet."""
    agent: Agent = await start_agent(token="", pool_secret=POOL_SECRET, prewarm=("python", "bash"))
    agent.client.headers["Authorization"] = f"Bearer {POOL_SECRET}"
    return agent


async def test_claim_sets_token_and_env_in_already_running_contexts(warm: Agent) -> None:
    async with httpx.AsyncClient(base_url=warm.url) as anonymous:
        assert (await anonymous.get("/health")).json() == {"status": "ok", "claimed": False}
    # Before the claim, the pool secret opens nothing but /claim.
    assert (await warm.client.get("/contexts")).status_code == 401
    r = await warm.client.post("/claim", json={"token": CLAIMANT, "env": {"API_KEY": "k-1", "QUOTED": "a 'b' $c"}})
    assert r.status_code == 200
    warm.client.headers["Authorization"] = f"Bearer {CLAIMANT}"
    listed = (await warm.client.get("/contexts")).json()
    assert sorted(c["language"] for c in listed) == ["bash", "python"]
    py = await warm.events("/execute", {"code": "import os\nprint(os.environ['API_KEY'], os.environ['QUOTED'])"})
    assert text_of(py) == "k-1 a 'b' $c\n" and py[-1]["execution_count"] == 1
    sh = await warm.events("/execute", {"language": "bash", "code": 'echo "$API_KEY"'})
    assert text_of(sh) == "k-1\n"
    cmd = await warm.events("/commands", {"cmd": "echo $API_KEY; env | grep -c POOL_SECRET || true"})
    assert text_of(cmd) == "k-1\n0\n"


async def test_the_pool_secret_is_spent_by_the_claim(warm: Agent) -> None:
    assert (await warm.client.post("/claim", json={"token": CLAIMANT})).status_code == 200
    again = await warm.client.post("/claim", json={"token": "another-token-0123456789"})
    assert again.status_code == 401
    assert (await warm.client.get("/contexts")).status_code == 401
    async with httpx.AsyncClient(base_url=warm.url, headers={"Authorization": f"Bearer {CLAIMANT}"}) as owner:
        assert (await owner.get("/contexts")).status_code == 200
        assert (await owner.post("/claim", json={"token": "another-token-0123456789"})).status_code == 409


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({}, "'token' is required"),
        ({"token": "short"}, "at least 16"),
        ({"token": CLAIMANT, "env": {"A": 1}}, "'env'"),
        ({"token": CLAIMANT, "env": {"BAD NAME": "x"}}, "env names"),
        ({"token": CLAIMANT, "env": {"VOLTGRID_SANDBOX_TOKEN": "x"}}, "env names"),
    ],
)
async def test_a_bad_claim_is_400_and_leaves_the_sandbox_unclaimed(
    warm: Agent, body: dict[str, object], needle: str
) -> None:
    r = await warm.client.post("/claim", json=body)
    assert r.status_code == 400 and needle in r.json()["error"]["message"]
    assert (await warm.client.post("/claim", json={"token": CLAIMANT})).status_code == 200


async def test_a_sandbox_started_with_its_token_refuses_claims(agent: Agent) -> None:
    r = await agent.client.post("/claim", json={"token": CLAIMANT})
    assert r.status_code == 409
    async with httpx.AsyncClient(base_url=agent.url, headers={"Authorization": f"Bearer {POOL_SECRET}"}) as pool:
        assert (await pool.post("/claim", json={"token": CLAIMANT})).status_code == 401
    assert TOKEN != CLAIMANT
