"""Rendezvous ownership and EndpointSlice membership."""

from __future__ import annotations

import pytest

from voltgrid.registry.endpointslices import members_from_slices
from voltgrid.registry.ownership import Membership, rank

MEMBERS = ["http://10.0.0.1:8080", "http://10.0.0.2:8080", "http://10.0.0.3:8080"]
KEYS = [f"s-{i}" for i in range(3000)]


def test_every_replica_agrees_and_load_is_spread() -> None:
    views = [Membership(m, MEMBERS) for m in MEMBERS]
    owners = [views[0].owner(k) for k in KEYS]
    assert all(v.owner(k) == o for v in views for k, o in zip(KEYS, owners, strict=True))
    for m in MEMBERS:
        assert 800 < owners.count(m) < 1200


def test_a_leaving_replica_moves_only_its_keys_to_their_runner_up() -> None:
    before = {k: rank(k, MEMBERS) for k in KEYS}
    after = Membership(MEMBERS[0], MEMBERS[:2])
    for k, ranking in before.items():
        if ranking[0] != MEMBERS[2]:
            assert after.owner(k) == ranking[0]
        else:
            assert after.owner(k) == ranking[1]  # the backup that already holds its copies


def test_suspected_peer_is_skipped_until_membership_is_refreshed() -> None:
    clock = [0.0]
    m = Membership(MEMBERS[0], MEMBERS, clock=lambda: clock[0])
    changes = []
    m.on_change(lambda: changes.append(1))
    m.suspect(MEMBERS[1], seconds=5)
    assert MEMBERS[1] not in m.members and m.peers() == [MEMBERS[2]]
    clock[0] = 6
    assert MEMBERS[1] in m.members
    m.suspect(MEMBERS[0])  # never itself
    assert MEMBERS[0] in m.members and len(changes) == 2


@pytest.mark.parametrize(
    ("slices", "port_name", "expected"),
    [
        (
            [
                {
                    "ports": [{"name": "http", "port": 8080}],
                    "endpoints": [
                        {"addresses": ["10.0.0.1"], "conditions": {"ready": True}},
                        {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},
                        {"addresses": ["10.0.0.3"]},
                    ],
                }
            ],
            "http",
            {"http://10.0.0.1:8080", "http://10.0.0.3:8080"},
        ),
        ([{"ports": [{"name": "metrics", "port": 9090}], "endpoints": [{"addresses": ["10.0.0.1"]}]}], "http", set()),
        (
            [{"ports": [{"name": "http", "port": 80}], "endpoints": [{"addresses": ["fd00::1"]}]}],
            None,
            {"http://[fd00::1]:80"},
        ),
        ([{"ports": None, "endpoints": None}], None, set()),
    ],
)
def test_members_from_endpointslices(slices, port_name, expected) -> None:
    assert members_from_slices(slices, port_name) == expected
