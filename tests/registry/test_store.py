"""The session store: create, bind, meter, index, remove."""

from __future__ import annotations

import pytest

from voltgrid.registry.ids import is_learned_key, is_session_id, mint_session_id
from voltgrid.registry.records import BOUND, UNBOUND, usage
from voltgrid.registry.store import SessionExistsError, SessionRegistry


def test_create_bind_meter_release() -> None:
    reg = SessionRegistry(shards=4)
    rec = reg.create("s-1", "ns/fn", now=100.0, idle_timeout=60, max_lifetime=3600)
    assert (rec.state, rec.instance, rec.expires_at, rec.due()) == (UNBOUND, None, 3700.0, 3700.0)
    reg.bind(rec, "inst-a", now=110.0)
    assert rec.state == BOUND and reg.sessions_on("inst-a") == {rec.rkey} and rec.due() == 170.0
    reg.begin(rec, 120.0)
    reg.begin(rec, 121.0)
    reg.end(rec, 125.0, bytes_in=10, bytes_out=20)
    assert rec.active_seconds(126.0) == 6.0  # still one in flight since 120
    reg.end(rec, 130.0, bytes_in=1, bytes_out=2)
    assert reg.unbind(rec, 140.0) == "inst-a" and reg.sessions_on("inst-a") == set()
    assert usage(rec, 200.0) == {
        "activeSeconds": 10.0,
        "heldSeconds": 30.0,
        "requests": 2,
        "bytesIn": 11,
        "bytesOut": 22,
    }


def test_duplicate_and_remove_clean_indexes() -> None:
    reg = SessionRegistry()
    rec = reg.create("k", "ns/fn", now=0, idle_timeout=1, max_lifetime=2)
    with pytest.raises(SessionExistsError):
        reg.create("k", "ns/fn", now=0, idle_timeout=1, max_lifetime=2)
    reg.bind(rec, "i", 0)
    assert reg.count("ns/fn") == 1 and len(reg) == 1
    assert reg.remove(rec.rkey) is rec and reg.remove(rec.rkey) is None
    assert (reg.count("ns/fn"), len(reg), reg.sessions_on("i"), reg.functions()) == (0, 0, set(), [])


def test_ids_are_scoped_to_their_function() -> None:
    reg = SessionRegistry()
    mine = reg.create("alice-42", "ns/open", now=0, idle_timeout=1, max_lifetime=2)
    theirs = reg.create("alice-42", "ns/protected", now=0, idle_timeout=1, max_lifetime=2)
    assert mine is not theirs and reg.find("ns/open", "alice-42") is mine
    assert reg.find("ns/protected", "alice-42") is theirs and reg.find("ns/other", "alice-42") is None


def test_storage_id_shares_the_key_object_when_equal() -> None:
    reg = SessionRegistry()
    rec = reg.create("abc", "ns/fn", now=0, idle_timeout=1, max_lifetime=2, storage_id="abc")
    assert rec.storage_id is rec.key


@pytest.mark.parametrize("shards", [0, 3, 6])
def test_shards_must_be_a_power_of_two(shards: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        SessionRegistry(shards)


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("s-1", True),
        ("a", True),
        ("a" * 63, True),
        ("a" * 64, False),
        ("-a", False),
        ("a-", False),
        ("A", False),
        ("a_b", False),
        ("", False),
        ("a.b", False),
        ("é", False),
    ],
)
def test_session_ids(value: str, valid: bool) -> None:
    assert is_session_id(value) is valid


def test_minted_ids_are_valid_and_distinct() -> None:
    ids = {mint_session_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(is_session_id(i) for i in ids)


@pytest.mark.parametrize(("value", "valid"), [("0f9c", True), ("a b", False), ("", False), ("x" * 257, False)])
def test_learned_keys(value: str, valid: bool) -> None:
    assert is_learned_key(value) is valid
