"""A Redis stream consumed at least once by a consumer group (redis.asyncio).

Replicas share the stream through one consumer group: each entry goes to one replica and stays in
the group's pending list until that replica XACKs it, which it does only after the Function
answered 2xx, or together with the XADD to the dead-letter stream (one MULTI, so an entry is never
both lost and acknowledged). Entries of a replica that died stay pending; after ``claim_idle``
another replica takes them over with XAUTOCLAIM. While an entry is being delivered (retries
included) its replica touches it, so a slow Function is not mistaken for a dead replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Final

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from voltgrid.triggers.dispatch import ATTEMPTS_HEADER, ERROR_HEADER, Dispatcher, Target, message_delivery
from voltgrid.triggers.events import Message
from voltgrid.triggers.lanes import Lanes
from voltgrid.triggers.report import CONSUMING
from voltgrid.triggers.retry import Verdict

log = logging.getLogger(__name__)

#: Entry fields with a meaning; every other field is a header.
DATA_FIELD: Final = b"data"
KEY_FIELD: Final = b"key"
CONTENT_TYPE_FIELD: Final = b"content-type"
DEFAULT_CLAIM_IDLE: Final = 30.0
DEFAULT_BLOCK: Final = 1.0


def as_message(entry_id: bytes, fields: dict[bytes, bytes]) -> Message:
    """A stream entry, broker-neutral: ``data`` is the body, ``key`` the key, the rest headers."""
    text = {k.decode(errors="replace"): v.decode(errors="replace") for k, v in fields.items() if k != DATA_FIELD}
    return Message(
        id=entry_id.decode(),
        body=fields.get(DATA_FIELD, b""),
        headers=text,
        key=text.get(KEY_FIELD.decode()) or None,
        content_type=text.get(CONTENT_TYPE_FIELD.decode()),
    )


class RedisStreamConsumer:
    def __init__(
        self,
        client: aioredis.Redis,
        stream: str,
        *,
        group: str,
        consumer: str,
        dead_letter: str,
        prefetch: int,
        dispatcher: Dispatcher,
        target: Target,
        claim_idle: float = DEFAULT_CLAIM_IDLE,
        block: float = DEFAULT_BLOCK,
    ) -> None:
        self.redis = client
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.dead_letter = dead_letter
        self.dispatcher = dispatcher
        self.target = target
        self.claim_idle_ms = int(claim_idle * 1000)
        self.block_ms = int(block * 1000)
        self._slots = asyncio.Semaphore(prefetch)
        self._prefetch = prefetch
        self._lanes = Lanes()
        self._mine: set[bytes] = set()  # entries this replica is delivering now
        self._next_claim = 0.0  # loop time of the next look for stuck entries

    async def ensure_group(self) -> None:
        """Create the group (and the stream) unless it exists: every replica may race to do it."""
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def run(self) -> None:
        """Consume until cancelled; entries in flight at cancellation stay pending (reclaimed)."""
        await self.ensure_group()
        self.dispatcher.reporter.state(
            self.target.name, True, CONSUMING, f"consuming Redis stream {self.stream} in group {self.group}"
        )
        tasks: set[asyncio.Task[None]] = set()
        tasks.add(asyncio.create_task(self._touch()))
        try:
            while True:
                await self._slots.acquire()  # read nothing while ``prefetch`` entries are in flight
                held = True
                try:
                    for entry_id, fields in await self._next_batch(self._prefetch - len(self._mine)):
                        if entry_id in self._mine:
                            continue
                        if not held:
                            await self._slots.acquire()  # free: the batch was sized to the free slots
                        held = False
                        self._mine.add(entry_id)
                        task = asyncio.create_task(self._handle(entry_id, fields))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                finally:
                    if held:
                        self._slots.release()
        finally:
            for task in tasks:
                task.cancel()
            for task in list(tasks):
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _next_batch(self, free: int) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Up to ``free`` entries: stuck ones of dead replicas first, then new ones (blocking up to ``block``).

        Stuck entries are looked for every third of ``claim_idle`` (none can be stuck for less), not
        before every read: XAUTOCLAIM is a round trip the common path does not need.
        """
        now = asyncio.get_running_loop().time()
        if now >= self._next_claim:
            claimed: Any = await self.redis.xautoclaim(
                self.stream, self.group, self.consumer, min_idle_time=self.claim_idle_ms, count=free
            )
            entries = [(i, f) for i, f in claimed[1] if f is not None]
            if entries:
                log.info("stream %s: took over %d stuck entries", self.stream, len(entries))
                return entries  # and look again next time: there may be more
            self._next_claim = now + self.claim_idle_ms / 3000
        read: Any = await self.redis.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=free, block=self.block_ms
        )
        return list(read[0][1]) if read else []

    async def _handle(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        try:
            d, key = message_delivery(self.target, as_message(entry_id, fields))
            outcome = await self._lanes.run(key, lambda: self.dispatcher.deliver(self.target, d))
            if outcome.verdict is Verdict.DEAD_LETTER:
                dead = dict(fields)
                dead[ATTEMPTS_HEADER.encode()] = str(outcome.attempts).encode()
                dead[ERROR_HEADER.encode()] = outcome.last_error.encode()
                async with self.redis.pipeline(transaction=True) as tx:
                    tx.xadd(self.dead_letter, dead)  # type: ignore[arg-type]
                    tx.xack(self.stream, self.group, entry_id)
                    await tx.execute()
            else:
                await self.redis.xack(self.stream, self.group, entry_id)
        finally:
            self._mine.discard(entry_id)
            self._slots.release()

    async def _touch(self) -> None:
        """Reset the idle time of the entries being delivered, so no other replica claims them.

        One task for all of them, every third of ``claim_idle``: XCLAIM to ourselves with JUSTID
        changes nothing but the idle clock. The same beat reports the group's lag.
        """
        while True:
            await asyncio.sleep(self.claim_idle_ms / 3000)
            if self._mine:
                ids: list[int | bytes | str | memoryview[int]] = list(self._mine)
                await self.redis.xclaim(self.stream, self.group, self.consumer, 0, ids, justid=True)
            await self._report_lag()

    async def _report_lag(self) -> None:
        """The group's lag (entries not yet read by any replica), as the trigger's lag gauge."""
        groups: Any = await self.redis.xinfo_groups(self.stream)
        for group in groups:
            name = group.get("name")
            if (name.decode() if isinstance(name, bytes) else name) == self.group and group.get("lag") is not None:
                self.dispatcher.metrics.lag.labels(self.target.name).set(group["lag"])
