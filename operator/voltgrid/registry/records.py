"""Compact per-session records: one ``__slots__`` object per session, no per-session dict or task.

A million idle sessions must fit in well under a GiB of one gateway process, so a record holds
only numbers and shared strings: the function key is interned, the storage id is the same object
as the key when they are equal, and timers live in the one scheduler heap, not in the record.
Times are event-loop times (``loop.time()``); :func:`usage` converts for the Session API.
"""

from __future__ import annotations

import sys
from typing import Final, TypedDict

#: Session states. An UNBOUND session is valid but holds no instance (released while idle).
UNBOUND: Final = 0
BOUND: Final = 1
RELEASING: Final = 2
STATE_NAMES: Final = ("Idle", "Active", "Releasing")


def scoped_key(function: str, key: str) -> str:
    """The registry's key of session ``key`` of ``function``: client ids are scoped to their
    Function, so the same id on two Functions names two unrelated sessions."""
    return f"{function}\x00{key}"


class SessionRecord:
    """Everything the gateway knows about one session (or one learned alias such as an MCP id)."""

    __slots__ = (
        "active_s",
        "active_since",
        "bound_since",
        "bytes_in",
        "bytes_out",
        "created",
        "expires_at",
        "function",
        "held_s",
        "idle_timeout",
        "inflight",
        "instance",
        "key",
        "last_active",
        "principal",
        "requests",
        "rkey",
        "state",
        "storage_id",
    )

    def __init__(
        self,
        key: str,
        function: str,
        storage_id: str,
        *,
        now: float,
        idle_timeout: float,
        expires_at: float,
    ) -> None:
        self.key = key
        self.function = sys.intern(function)
        self.rkey = scoped_key(self.function, key)
        self.storage_id = key if storage_id == key else storage_id
        self.instance: str | None = None
        self.state = UNBOUND
        self.created = now
        self.last_active = now
        self.expires_at = expires_at
        self.idle_timeout = idle_timeout
        self.inflight = 0
        self.active_since = 0.0
        self.active_s = 0.0
        self.bound_since = 0.0
        self.held_s = 0.0
        self.requests = 0
        self.bytes_in = 0
        self.bytes_out = 0
        #: Who created the session (a JWT principal), or None; only that principal may use it.
        self.principal: str | None = None

    def active_seconds(self, now: float) -> float:
        """Seconds with at least one request in flight, including the current stretch."""
        return self.active_s + (now - self.active_since if self.inflight else 0.0)

    def held_seconds(self, now: float) -> float:
        """Seconds with an instance bound, including the current binding."""
        return self.held_s + (now - self.bound_since if self.instance is not None else 0.0)

    def due(self) -> float:
        """When the scheduler must look at this session next (idle deadline or expiry)."""
        if self.instance is None:
            return self.expires_at
        return min(self.last_active + self.idle_timeout, self.expires_at)


class Usage(TypedDict):
    """Metered usage of one session, as the Session API shows it."""

    activeSeconds: float
    heldSeconds: float
    requests: int
    bytesIn: int
    bytesOut: int


def usage(record: SessionRecord, now: float) -> Usage:
    return {
        "activeSeconds": round(record.active_seconds(now), 3),
        "heldSeconds": round(record.held_seconds(now), 3),
        "requests": record.requests,
        "bytesIn": record.bytes_in,
        "bytesOut": record.bytes_out,
    }
