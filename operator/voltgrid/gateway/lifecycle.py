"""Session lifecycle: idle release with preStop, expiry, learned bindings, and takeover.

One :class:`~voltgrid.registry.scheduler.DeadlineScheduler` drives every timer. When a session has
been idle for its ``idleTimeout`` (nothing in flight), the instance's preStop is called once
(``POST {"sessionId", "reason"}``, bounded by its timeout), the binding is dropped and the instance
is deleted if no other session is bound to it; the session id stays valid and wakes on the next
request. At ``maxLifetime`` the same happens and the session is forgotten.

Only a session's owner (rendezvous ring) holds its authoritative record and fires its timers. A
learned binding (an MCP id the instance minted) is kept by the owner, which pushes a passive
:class:`~voltgrid.gateway.manager.BackupCopy` to its runner-up and tells it when the session ends;
a replica that learns an id it does not own (the ``initialize`` landed there) hands the record to
the owner and keeps nothing authoritative. When membership changes, every record whose owner
moved is handed to the new owner, a backup whose key this replica now owns is promoted, and the
replica adopts what it owns from a LIST of instances (labels). The state diagram is in
docs/architecture.md.

The only write is the coarse activity *checkpoint* (:meth:`InstanceBackend.checkpoint`: in a
cluster the pod's ``voltgrid.dev/last-active`` annotation, which the operator's scale-to-zero
safety net reads): one pass every ``checkpoint_interval``, driven by the same scheduler, writes it
for each instance active since its last checkpoint -- at most once per interval per instance, never
on the request path, and nothing at all for idle instances.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Final

import aiohttp

from voltgrid.api.function import Affinity
from voltgrid.backends.base import Instance
from voltgrid.gateway.budget import instance_json, instance_of
from voltgrid.gateway.functions import FunctionEntry
from voltgrid.gateway.manager import INSTANCE_TIMER_PREFIX, BackupCopy, SessionManager
from voltgrid.gateway.peers import Peers
from voltgrid.gateway.warm import unclaimed_warm
from voltgrid.registry.records import RELEASING, UNBOUND, SessionRecord, scoped_key
from voltgrid.registry.scheduler import DeadlineScheduler
from voltgrid.registry.store import SessionExistsError

logger = logging.getLogger(__name__)

#: How soon an expired session that still has requests in flight is looked at again.
EXPIRY_RECHECK: Final = 1.0
#: Longest pause between heartbeats of a stream held on a non-owner replica.
MAX_HEARTBEAT_INTERVAL: Final = 30.0
#: How often a handed-off record with requests in flight here looks whether they ended.
IN_FLIGHT_POLL: Final = 1.0
#: Scheduler key of the checkpoint pass (session keys cannot contain NUL).
CHECKPOINT_KEY: Final = "\x00checkpoint"
#: Scheduler keys of backup copies' expiry start with this.
BACKUP_TIMER_PREFIX: Final = "\x00b:"
#: Roles of a pushed binding: the receiver becomes its owner, keeps a passive copy, or drops it.
OWNER, BACKUP, FORGET = "owner", "backup", "forget"
#: Bindings per internal request when many move at once (membership change).
HANDOFF_BATCH: Final = 500


class Lifecycle:
    def __init__(self, manager: SessionManager, http: aiohttp.ClientSession, peers: Peers) -> None:
        self.m = manager
        self._http = http
        self._peers = peers
        self.scheduler = DeadlineScheduler(self._on_due)
        manager.scheduler = self.scheduler
        manager.budget.remote = peers.budget
        manager.budget.peer_seats = peers.seats
        self._checkpointing: asyncio.Task[int] | None = None
        #: Backup updates waiting for each peer, sent in order by one task per peer (a "forget"
        #: must never overtake the copy it forgets).
        self._outbox: dict[str, list[dict[str, Any]]] = {}
        self.scheduler.schedule(CHECKPOINT_KEY, manager.now() + manager.settings.checkpoint_interval)

    # -- timers ---------------------------------------------------------------------------
    def _on_due(self, key: str, now: float) -> float | None:
        if key == CHECKPOINT_KEY:
            if self._checkpointing is None or self._checkpointing.done():  # a slow pass is not doubled
                self._checkpointing = asyncio.get_running_loop().create_task(self.checkpoint_pass())
            return now + self.m.settings.checkpoint_interval
        if key.startswith(INSTANCE_TIMER_PREFIX):
            return self._instance_due(key[len(INSTANCE_TIMER_PREFIX) :], now)
        if key.startswith(BACKUP_TIMER_PREFIX):
            return self._backup_due(key[len(BACKUP_TIMER_PREFIX) :], now)
        record = self.m.registry.get(key)  # session timers are keyed by the scoped key
        if record is None or record.state == RELEASING:
            return None
        busy = record.inflight > 0 or self.m.is_waking(key)
        if not self.m.membership.is_owner(record.key):
            # Only the owner decides about a session: a record held here is handed off, never fired.
            if self.m.is_waking(key):
                return now + EXPIRY_RECHECK
            self.m.spawn(self.hand_off([record]))
            return None
        if now >= record.expires_at:
            if busy:  # expire once the requests in flight (bounded by the stream limit) are done
                return now + EXPIRY_RECHECK
            self.release(record, "expired", forget=True)
            return None
        if busy:
            return now + record.idle_timeout
        if record.instance is not None and now >= record.last_active + record.idle_timeout:
            self.release(record, "idle", forget=False)
            return record.expires_at
        return record.due()

    def _backup_due(self, key: str, now: float) -> float | None:
        backup = self.m.backups.get(key)
        if backup is None:
            return None
        if now < backup.expires_at:
            return backup.expires_at
        del self.m.backups[key]
        return None

    def _instance_due(self, instance_id: str, now: float) -> float | None:
        state = self.m.instance_state(instance_id)
        fn = self.m.catalog.get(state.instance.function) if state else None
        if state is None or fn is None:
            return None
        instance = state.instance
        last = state.last_active if state.last_active is not None else now
        if state.inflight or now < last + fn.idle_timeout:
            return max(last, now) + fn.idle_timeout
        self.m.forget_instance(instance_id)
        self.m.spawn(self._delete(instance))
        return None

    # -- activity checkpoints ---------------------------------------------------------------
    def last_activity(self, instance_id: str, now: float) -> float | None:
        """Loop time of the latest activity on the instance (``now`` while a request is in flight)."""
        m = self.m
        state = m.instance_state(instance_id)
        latest = state.last_active if state is not None else None
        if state is not None and state.inflight:
            return now
        for key in m.registry.sessions_on(instance_id):
            record = m.registry.get(key)
            if record is None:
                continue
            if record.inflight:
                return now
            latest = record.last_active if latest is None else max(latest, record.last_active)
        return latest

    async def checkpoint_pass(self) -> int:
        """Checkpoint every instance active since its last checkpoint; returns how many were written."""
        m = self.m
        now = m.now()
        due = []
        for state in m.instance_states():
            active = self.last_activity(state.instance.id, now)
            if active is not None and active > state.checkpointed:
                due.append((state.instance, active))
        for instance, active in due:  # one at a time: a steady trickle of PATCHes, never a burst
            if m.instance(instance.id) is not None:
                await m.checkpoint(instance, active)
        return len(due)

    async def stop(self) -> None:
        await self.scheduler.stop()
        if self._checkpointing is not None:
            self._checkpointing.cancel()
            await asyncio.gather(self._checkpointing, return_exceptions=True)

    # -- release --------------------------------------------------------------------------
    def release(self, record: SessionRecord, reason: str, *, forget: bool) -> asyncio.Task[None]:
        """Start releasing ``record`` (preStop once, unbind, delete a now-empty instance)."""
        existing = self.m.releasing.get(record.rkey)
        if existing is not None:
            return existing
        record.state = RELEASING
        task = asyncio.get_running_loop().create_task(self._release(record, reason, forget))
        self.m.releasing[record.rkey] = task
        return task

    async def _release(self, record: SessionRecord, reason: str, forget: bool) -> None:
        try:
            fn = self.m.catalog.get(record.function)
            instance = self.m.instance(record.instance) if record.instance else None
            if instance is not None and fn is not None and fn.prestop_path:
                await self._prestop(fn, instance, record, reason)
            self.m.unbind(record)
            self.m.metrics.releases.labels(record.function, reason).inc()
            if instance is not None:
                if not self.m.registry.sessions_on(instance.id):
                    self.m.forget_instance(instance.id)
                await self.m.budget.release(record.function, instance)  # its owner deletes it with the last seat
        finally:
            record.state = UNBOUND
            self.m.releasing.pop(record.rkey, None)
            self.forget_backup(record)
            if forget:
                self.m.registry.remove(record.rkey)
                self.scheduler.cancel(record.rkey)
            else:
                self.scheduler.schedule(record.rkey, record.due())

    async def _prestop(self, fn: FunctionEntry, instance: Instance, record: SessionRecord, reason: str) -> None:
        assert fn.prestop_path is not None
        body: dict[str, Any] = {"sessionId": record.storage_id, "reason": reason}
        if record.key != record.storage_id:
            body["affinityKey"] = record.key
        try:
            async with (
                asyncio.timeout(fn.prestop_timeout),
                self._http.post(instance.url + fn.prestop_path, json=body) as resp,
            ):
                await resp.read()
                result = "ok" if resp.status < 400 else f"http_{resp.status}"
        except TimeoutError:
            result = "timeout"
        except (aiohttp.ClientError, OSError):
            result = "error"
        self.m.metrics.prestop.labels(fn.key, result).inc()
        if result != "ok":
            logger.warning("preStop of session %s on %s: %s", record.storage_id, instance.id, result)

    async def _delete(self, instance: Instance) -> None:
        try:
            await self.m.backend.delete(instance)
        except Exception:
            logger.exception("deleting instance %s failed", instance.id)

    def end_session(self, record: SessionRecord, reason: str) -> asyncio.Task[None]:
        """Session ended by its client (Session API or MCP DELETE): release and forget it."""
        return self.release(record, reason, forget=True)

    # -- learned bindings (MCP) and hand-off ----------------------------------------------------
    def binding_payload(self, record: SessionRecord, role: str) -> dict[str, Any]:
        instance = self.m.instance(record.instance) if record.instance else None
        return {
            "role": role,
            "key": record.key,
            "function": record.function,
            "storageId": record.storage_id,
            "instance": instance_json(instance) if instance is not None else None,
            "idleTimeout": record.idle_timeout,
            "expiresIn": max(0.0, record.expires_at - self.m.now()),
            "principal": record.principal,
        }

    async def learn(self, record: SessionRecord, key: str) -> SessionRecord:
        """The instance minted ``key`` for the session of ``record``: re-key it, and hand it to the
        owner of ``key`` unless that is this replica (then push its backup)."""
        m = self.m
        if key == record.key or record.instance is None:
            return record
        instance = m.instance(record.instance)
        assert instance is not None  # a bound record's instance is known here
        learned = m.registry.find(record.function, key)
        if learned is None:
            now = m.now()
            learned = m.registry.create(
                key,
                record.function,
                now=now,
                storage_id=record.storage_id,
                idle_timeout=record.idle_timeout,
                max_lifetime=record.expires_at - now,
            )
            learned.inflight, learned.active_since, learned.requests = record.inflight, record.active_since, 1
            learned.principal = record.principal
            m.unbind(record)  # the seat moves with the session: no budget call
            m.bind(learned, instance)
            m.registry.remove(record.rkey)
            self.scheduler.cancel(record.rkey)
            self.scheduler.schedule(learned.rkey, learned.due())
        if m.membership.is_owner(key):
            self.push_backup(learned)
        else:
            await self.hand_off([learned])
        return learned

    async def hand_off(self, records: list[SessionRecord]) -> None:
        """Give records this replica does not own to their owners; each is dropped here once its
        owner has it (a record whose owner cannot be reached stays, and is looked at again)."""
        m = self.m
        by_owner: dict[str, list[SessionRecord]] = {}
        for record in records:
            if m.registry.get(record.rkey) is record:
                by_owner.setdefault(m.membership.owner(record.key), []).append(record)
        for owner, mine in by_owner.items():
            for start in range(0, len(mine), HANDOFF_BATCH):
                batch = mine[start : start + HANDOFF_BATCH]
                delivered = owner != m.membership.self_id and await self._peers.push_bindings(
                    owner, [self.binding_payload(r, OWNER) for r in batch]
                )
                for record in batch:
                    if delivered and m.registry.get(record.rkey) is record:
                        self._drop_local(record)
                    elif m.registry.get(record.rkey) is record:
                        self.scheduler.schedule(record.rkey, min(record.due(), m.now() + EXPIRY_RECHECK))

    def _drop_local(self, record: SessionRecord) -> None:
        """Forget a record another replica now holds (its seat and instance stay: they moved).
        Requests still in flight here finish on the detached record and keep the owner's fresh."""
        m = self.m
        instance_id = m.unbind(record)
        m.registry.remove(record.rkey)
        self.scheduler.cancel(record.rkey)
        if instance_id is not None and not m.registry.sessions_on(instance_id):
            m.forget_instance(instance_id)
        if record.inflight:
            m.spawn(self._keep_fresh(record))

    async def _keep_fresh(self, record: SessionRecord) -> None:
        """Touch the owner of a handed-off record while its requests here run (a legacy SSE stream
        lasts as long as its session), and once when they end."""
        interval = min(record.idle_timeout / 3, MAX_HEARTBEAT_INTERVAL)
        loop = asyncio.get_running_loop()
        touched = loop.time()
        while record.inflight:
            await asyncio.sleep(min(interval, IN_FLIGHT_POLL))
            if record.inflight and loop.time() < touched + interval:
                continue
            touched = loop.time()
            owner = self.m.membership.owner(record.key)
            if owner != self.m.membership.self_id:
                await self._peers.touch(owner, record.function, record.key)

    def _runner_up(self, record: SessionRecord) -> str | None:
        """Where the owner keeps the backup of a learned binding (None: not the owner, or alone)."""
        if record.key == record.storage_id:
            return None  # an id the instance is labelled with: a LIST finds it, no copy needed
        owners = self.m.membership.owners(record.key, 2)
        if len(owners) < 2 or owners[0] != self.m.membership.self_id:
            return None
        return owners[1]

    def push_backup(self, record: SessionRecord) -> None:
        peer = self._runner_up(record)
        if peer is not None and record.instance is not None:
            self._send(peer, self.binding_payload(record, BACKUP))

    def forget_backup(self, record: SessionRecord) -> None:
        peer = self._runner_up(record)
        if peer is not None:
            self._send(peer, {"role": FORGET, "key": record.key, "function": record.function})

    def _send(self, peer: str, item: dict[str, Any]) -> None:
        outbox = self._outbox.get(peer)
        if outbox is not None:
            outbox.append(item)  # its sender is running and takes it in turn
            return
        self._outbox[peer] = [item]
        self.m.spawn(self._drain(peer))

    async def _drain(self, peer: str) -> None:
        try:
            while items := self._outbox.get(peer):
                self._outbox[peer] = []
                for start in range(0, len(items), HANDOFF_BATCH):
                    await self._peers.push_bindings(peer, items[start : start + HANDOFF_BATCH])
        finally:
            self._outbox.pop(peer, None)

    def accept_binding(self, payload: dict[str, Any]) -> None:
        """A peer hands this replica a binding: as its new owner, as the owner's backup, or ends one."""
        m = self.m
        role, key, function = payload.get("role"), payload["key"], payload["function"]
        if role not in (OWNER, BACKUP, FORGET) or not isinstance(key, str) or not isinstance(function, str):
            raise ValueError(f"role must be {OWNER}, {BACKUP} or {FORGET}, key and function strings")
        rkey = scoped_key(function, key)
        if role == FORGET:
            m.backups.pop(rkey, None)
            return
        instance = instance_of(payload["instance"]) if payload.get("instance") else None
        now = m.now()
        idle, lifetime = float(payload["idleTimeout"]), float(payload["expiresIn"])
        principal = payload.get("principal")
        if principal is not None and not isinstance(principal, str):
            raise ValueError("principal must be a string or null")
        if role == BACKUP:
            copy = BackupCopy(key, function, str(payload["storageId"]), instance, idle, now + lifetime, principal)
            m.backups[rkey] = copy
            self.scheduler.schedule(BACKUP_TIMER_PREFIX + rkey, now + lifetime)
            return
        m.backups.pop(rkey, None)
        record = m.registry.get(rkey)
        if record is None:
            record = m.registry.create(
                key, function, now=now, storage_id=str(payload["storageId"]), idle_timeout=idle, max_lifetime=lifetime
            )
        record.principal = principal
        if instance is not None:
            m.bind(record, instance)
        self.scheduler.schedule(record.rkey, record.due())
        self.push_backup(record)

    async def end_everywhere(self, function: str, key: str, reason: str) -> None:
        """End a session wherever its authoritative record is (here, or on its owner)."""
        record = self.m.registry.find(function, key)
        if record is not None and record.state != RELEASING:
            await self.end_session(record, reason)
            return
        owner = self.m.membership.owner(key)
        if owner != self.m.membership.self_id:
            await self._peers.end(owner, function, key, reason)

    def touch(self, function: str, key: str) -> bool:
        record = self.m.registry.find(function, key)
        if record is None:
            return False
        record.last_active = self.m.now()
        return True

    # -- takeover ---------------------------------------------------------------------------
    async def resync(self) -> None:
        """Adopt, from ONE list of instances, the sessions this replica owns but does not know."""
        m = self.m
        try:
            instances = await m.backend.list()
        except Exception:
            logger.exception("listing instances for resync failed")
            return
        if not m.warm.managed:  # the operator's warm pods, as this LIST found them
            found: dict[str, list[Instance]] = {fn.key: [] for fn in m.catalog if fn.warm_pool}
            for instance in instances:
                if unclaimed_warm(instance) and m.instance(instance.id) is None and instance.function in found:
                    found[instance.function].append(instance)
            for function, pool in found.items():
                m.warm.replace(function, pool)
        warm_ids = {i.id for i in m.warm.instances()}
        for instance in instances:
            fn = m.catalog.get(instance.function)
            if fn is None or instance.id in warm_ids or (unclaimed_warm(instance) and not m.warm.managed):
                continue
            if fn.affinity is Affinity.NONE:
                m.adopt_instance(instance)
                if m.membership.is_owner(instance.session):
                    m.touch_instance(instance.id, only_if_unset=True)
                    m.schedule(INSTANCE_TIMER_PREFIX + instance.id, m.now() + fn.idle_timeout)
                continue
            if not m.membership.is_owner(instance.session) or m.registry.sessions_on(instance.id):
                continue
            if fn.affinity in (Affinity.MCP, Affinity.A2A):
                # MCP and A2A ids live only in gateways; an instance no binding names is an orphan.
                too_old = instance.created and instance.created + fn.max_lifetime < time.time()
                if m.instance(instance.id) is None and too_old:
                    m.spawn(self._delete(instance))
                continue
            if m.registry.find(fn.key, instance.session) is None:
                try:
                    record = m.create_session(fn, instance.session)
                except SessionExistsError:
                    continue
                m.bind(record, instance)

    async def rebalance(self) -> None:
        """After a membership change: hand off what others own now, promote the backups this replica
        now owns, refresh the backups of what it keeps, then adopt what it owns from a LIST."""
        m = self.m
        m.warm.drop_unowned()
        m.budget.membership_changed()
        away: list[SessionRecord] = []
        for shard in m.registry.shards():
            for record in list(shard.values()):
                if m.membership.is_owner(record.key):
                    peer = self._runner_up(record)
                    if peer is not None and record.instance is not None:
                        self._send(peer, self.binding_payload(record, BACKUP))
                elif record.state != RELEASING and not m.is_waking(record.rkey):
                    away.append(record)  # requests in flight finish here, on the detached record
            await asyncio.sleep(0)
        for rkey, backup in list(m.backups.items()):
            if m.membership.is_owner(backup.key):
                promoted = m.promote(backup.function, backup.key)
                peer = self._runner_up(promoted) if promoted is not None else None
                if promoted is not None and peer is not None:
                    self._send(peer, self.binding_payload(promoted, BACKUP))
            elif m.membership.self_id not in m.membership.owners(backup.key, 2):
                del m.backups[rkey]
        await self.hand_off(away)
        await self.resync()
