"""The in-process session store: shards of plain dicts plus two small indexes.

Sharding bounds the cost of any single dict resize (a rehash of a million-entry dict stalls the
event loop for tens of milliseconds) and lets a resync walk one shard at a time. Every operation is
synchronous, O(1) and writes nothing outside the process; the per-request path is
:meth:`SessionRegistry.begin` / :meth:`SessionRegistry.end`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from voltgrid.errors import VoltgridError
from voltgrid.registry.records import BOUND, UNBOUND, SessionRecord, scoped_key

#: Shards per process (a power of two so that the shard is ``hash & mask``).
DEFAULT_SHARDS: Final = 64


class SessionExistsError(VoltgridError):
    """A session with this id already exists."""


class SessionRegistry:
    """Sessions by scoped key (:func:`~voltgrid.registry.records.scoped_key`, the record's ``rkey``),
    with indexes by function and by instance."""

    def __init__(self, shards: int = DEFAULT_SHARDS) -> None:
        if shards < 1 or shards & (shards - 1):
            raise ValueError(f"shards must be a power of two, not {shards}")
        self._mask = shards - 1
        self._shards: list[dict[str, SessionRecord]] = [{} for _ in range(shards)]
        self._by_function: dict[str, set[str]] = {}
        self._by_instance: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return sum(len(shard) for shard in self._shards)

    def get(self, rkey: str) -> SessionRecord | None:
        return self._shards[hash(rkey) & self._mask].get(rkey)

    def find(self, function: str, key: str) -> SessionRecord | None:
        """The session ``key`` of ``function`` (a session of another Function is not found)."""
        return self.get(scoped_key(function, key))

    def create(
        self,
        key: str,
        function: str,
        *,
        now: float,
        idle_timeout: float,
        max_lifetime: float,
        storage_id: str | None = None,
    ) -> SessionRecord:
        """Add a session; :class:`SessionExistsError` if the Function already has one with this key."""
        rkey = scoped_key(function, key)
        shard = self._shards[hash(rkey) & self._mask]
        if rkey in shard:
            raise SessionExistsError(f"session {key!r} already exists")
        record = SessionRecord(
            key, function, storage_id or key, now=now, idle_timeout=idle_timeout, expires_at=now + max_lifetime
        )
        shard[rkey] = record
        self._by_function.setdefault(record.function, set()).add(rkey)
        return record

    def remove(self, rkey: str) -> SessionRecord | None:
        record = self._shards[hash(rkey) & self._mask].pop(rkey, None)
        if record is not None:
            keys = self._by_function.get(record.function)
            if keys is not None:
                keys.discard(rkey)
                if not keys:
                    del self._by_function[record.function]
            if record.instance is not None:
                self._unindex(record.instance, rkey)
        return record

    def bind(self, record: SessionRecord, instance: str, now: float) -> None:
        """Bind ``record`` to ``instance`` (unbinding it from any previous one)."""
        if record.instance == instance:
            return
        if record.instance is not None:
            self.unbind(record, now)
        record.instance = instance
        record.state = BOUND
        record.bound_since = now
        record.last_active = now
        self._by_instance.setdefault(instance, set()).add(record.rkey)

    def unbind(self, record: SessionRecord, now: float) -> str | None:
        """Drop the binding, accounting held time; returns the instance it was bound to."""
        instance = record.instance
        if instance is None:
            return None
        record.held_s += now - record.bound_since
        record.instance = None
        record.state = UNBOUND
        self._unindex(instance, record.rkey)
        return instance

    def _unindex(self, instance: str, key: str) -> None:
        keys = self._by_instance.get(instance)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_instance[instance]

    def begin(self, record: SessionRecord, now: float) -> None:
        """A request for the session starts (it is active while any is in flight)."""
        if record.inflight == 0:
            record.active_since = now
        record.inflight += 1
        record.requests += 1
        record.last_active = now

    def end(self, record: SessionRecord, now: float, bytes_in: int, bytes_out: int) -> None:
        """A request for the session ended after moving ``bytes_in``/``bytes_out`` bytes."""
        record.inflight -= 1
        if record.inflight == 0:
            record.active_s += now - record.active_since
        record.bytes_in += bytes_in
        record.bytes_out += bytes_out
        record.last_active = now

    def sessions_on(self, instance: str) -> set[str]:
        """Scoped keys of the sessions bound to ``instance`` (empty when none)."""
        return self._by_instance.get(instance, set())

    def functions(self) -> list[str]:
        return list(self._by_function)

    def by_function(self, function: str) -> Iterator[SessionRecord]:
        for key in list(self._by_function.get(function, ())):
            record = self.get(key)
            if record is not None:
                yield record

    def count(self, function: str) -> int:
        return len(self._by_function.get(function, ()))

    def shards(self) -> Iterator[dict[str, SessionRecord]]:
        """The shards, for walks that yield to the event loop between them."""
        yield from self._shards
