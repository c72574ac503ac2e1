"""Which gateway replica owns a session: rendezvous (highest-random-weight) hashing.

Every replica computes the same owner from the same member list, with no coordination. When a
replica leaves, only its keys move, and each moves to the replica that was its runner-up: that is
why a binding learned at runtime (an MCP session id) is copied to the runner-up, the "backup", which
then already knows it when it becomes the owner. Members come from a static list (local, tests)
or from the gateway Service's EndpointSlices (:mod:`voltgrid.registry.endpointslices`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from typing import Final

#: A peer whose forward failed is treated as gone for this long, unless membership says otherwise.
DEFAULT_SUSPECT_SECONDS: Final = 10.0


def score(key: str, member: str) -> int:
    """The rendezvous weight of ``member`` for ``key`` (stable across processes and machines)."""
    digest = hashlib.blake2b(f"{member}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rank(key: str, members: Iterable[str]) -> list[str]:
    """Members ordered from owner to least preferred for ``key``."""
    return sorted(members, key=lambda m: score(key, m), reverse=True)


class Membership:
    """The live gateway replicas, as seen by this one, and ownership over them.

    ``self_id`` is this replica's base URL (how peers reach it). Members are replaced wholesale by
    :meth:`set_members`; a peer can be suspected after a failed hop (:meth:`suspect`) until the next
    membership update or for :data:`DEFAULT_SUSPECT_SECONDS`.
    """

    def __init__(self, self_id: str, members: Iterable[str] = (), *, clock: Callable[[], float] = time.monotonic):
        self.self_id = self_id
        self._clock = clock
        self._members: tuple[str, ...] = ()
        self._suspects: dict[str, float] = {}
        self._listeners: list[Callable[[], None]] = []
        self.set_members(members)

    @property
    def members(self) -> tuple[str, ...]:
        """Live members, this replica always included."""
        if self._suspects:
            now = self._clock()
            for member, until in list(self._suspects.items()):
                if until <= now:
                    del self._suspects[member]
                    self._notify()
            return tuple(m for m in self._members if m not in self._suspects)
        return self._members

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def set_members(self, members: Iterable[str]) -> None:
        new = tuple(sorted({*members, self.self_id}))
        self._suspects.clear()
        if new != self._members:
            self._members = new
            self._notify()

    def suspect(self, member: str, seconds: float = DEFAULT_SUSPECT_SECONDS) -> None:
        if member != self.self_id and member in self._members:
            self._suspects[member] = self._clock() + seconds
            self._notify()

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()

    def owner(self, key: str) -> str:
        members = self.members
        if len(members) == 1:
            return members[0]
        return max(members, key=lambda m: score(key, m))

    def owners(self, key: str, n: int = 2) -> list[str]:
        """The owner and its ``n - 1`` runners-up."""
        return rank(key, self.members)[:n]

    def is_owner(self, key: str) -> bool:
        return self.owner(key) == self.self_id

    def peers(self) -> list[str]:
        return [m for m in self.members if m != self.self_id]
