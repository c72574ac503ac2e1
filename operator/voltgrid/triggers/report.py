"""What the dispatcher tells the cluster about triggers: ``status.triggers`` on each Function, and Events.

**Status.** The operator writes the Function's status with JSON merge patches naming its own keys
(``conditions``, ``instances``...); a merge patch replaces a list whole (CRDs have no strategic
merge), so an entry of the dispatcher inside ``conditions`` would be dropped by the operator's next
write, and the reverse. So the dispatcher writes one key of its own, ``status.triggers`` (one entry
per trigger, keyed by name, with a condition's fields), which the operator never writes; the
operator reads it and sums it up in a ``TriggersReady`` condition. Every key has one writer.

Writes are batched: a trigger's state changes in memory (:meth:`Reporter.state`,
:meth:`Reporter.delivered`), and a flush every ``interval`` seconds PATCHes only the Functions whose
entries differ from what their status already holds (as last seen by the dispatcher's watch);
``lastDelivered`` counts as a change only once it moved by ``DELIVERED_RESOLUTION``. A stream of
events costs no write per event, and a replica that agrees with what another wrote writes nothing.

**Events** (core/v1 on the Function) are aggregated as client-go's EventCorrelator does: the
first occurrence of (Function, trigger, reason) is created at the next flush; repeats within
``window`` only raise a count, which the following flushes PATCH into ``count`` and
``lastTimestamp``. However fast a stream fails, each (trigger, reason) costs at most one write per
``interval``; after ``window`` a new Event starts. Failures to write are logged, never raised: a
report is a courtesy, not a state change. Without an apiserver (``--functions``) the states are
kept for ``/healthz`` only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar

import aiohttp
from pydantic import ValidationError

from voltgrid.api import constants
from voltgrid.api.function import Function
from voltgrid.api.triggers import Trigger
from voltgrid.registry.kubeapi import Json, Key, KubeApi, KubeApiError

log = logging.getLogger(__name__)

V = TypeVar("V")

COMPONENT: Final = "voltgrid-triggers"
NORMAL: Final = "Normal"
WARNING: Final = "Warning"
MERGE_PATCH: Final = "application/merge-patch+json"
#: Seconds between flushes: the most a state change or an Event waits before it is written.
DEFAULT_INTERVAL: Final = 10.0
#: Repeats of one Event within this are counted on it (client-go aggregates over 10 minutes too).
DEFAULT_WINDOW: Final = 600.0
#: ``lastDelivered`` is rewritten only once it moved by this much.
DELIVERED_RESOLUTION: Final = timedelta(seconds=60)
MAX_MESSAGE: Final = 1024

# Reasons of a trigger's state. Ready:
SCHEDULED: Final = "Scheduled"
ROUTED: Final = "Routed"
CONSUMING: Final = "Consuming"
# Not ready, each naming the problem:
CONNECTING: Final = "Connecting"
SECRET_MISSING: Final = "SecretMissing"
SECRET_KEY_MISSING: Final = "SecretKeyMissing"
BROKER_UNREACHABLE: Final = "BrokerUnreachable"
QUEUE_NOT_FOUND: Final = "QueueNotFound"
CONSUMER_FAILED: Final = "ConsumerFailed"
INVALID_SCHEDULE: Final = "InvalidSchedule"
INVALID_TRIGGER: Final = "InvalidTrigger"
FUNCTION_INVALID: Final = "FunctionInvalid"
# Events only:
TRIGGER_STARTED: Final = "TriggerStarted"
DEAD_LETTERED: Final = "DeadLettered"
TICK_SKIPPED: Final = "TickSkipped"
REPLY_DROPPED: Final = "ReplyDropped"


def rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_time(text: Any) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(str(text).replace("Z", "+00:00"))


@dataclass(frozen=True, slots=True)
class State:
    ready: bool
    reason: str
    message: str


@dataclass(slots=True)
class Described:
    """What the reporter knows of one Function: its reference, its triggers' types, its status entries."""

    ref: Json
    types: dict[str, str]  # trigger name -> type, in spec order
    current: list[Json]  # status.triggers as last seen


def entries(
    described: Described, states: Mapping[str, State], delivered: Mapping[str, datetime], now: datetime
) -> list[Json]:
    """``status.triggers`` for one Function: an entry per trigger of the spec that has a state.

    ``lastTransitionTime`` is kept while the status holds; ``lastDelivered`` is the later of the
    one written (perhaps by another replica) and this replica's, rewritten only past the resolution.
    """
    before = {str(e.get("name")): e for e in described.current}
    out: list[Json] = []
    for name, type_ in described.types.items():
        state = states.get(name)
        if state is None:
            continue
        status = "True" if state.ready else "False"
        prev = before.get(name) or {}
        since = prev.get("lastTransitionTime") if prev.get("status") == status else None
        entry: Json = {
            "name": name,
            "type": type_,
            "status": status,
            "reason": state.reason,
            "message": state.message[:MAX_MESSAGE],
            "lastTransitionTime": since or rfc3339(now),
        }
        written = _parse_time(prev.get("lastDelivered"))
        mine = delivered.get(name)
        if mine is not None and (written is None or mine - written >= DELIVERED_RESOLUTION):
            entry["lastDelivered"] = rfc3339(mine)
        elif written is not None:
            entry["lastDelivered"] = prev["lastDelivered"]
        out.append(entry)
    return out


def differs(current: Sequence[Mapping[str, Any]], wanted: Sequence[Mapping[str, Any]]) -> bool:
    """Whether writing ``wanted`` would change ``current`` (the order of entries does not count)."""

    def keyed(xs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        return {str(x.get("name")): {k: v for k, v in x.items() if v is not None} for x in xs}

    return keyed(current) != keyed(wanted)


def rejected_states(body: Mapping[str, Any], error: ValidationError) -> dict[str, State]:
    """States for the triggers of a Function that does not validate: each trigger validated alone,
    so the one at fault says what is wrong (InvalidSchedule, InvalidTrigger) and the others say
    they wait for the Function (FunctionInvalid)."""
    out: dict[str, State] = {}
    for raw in (body.get("spec") or {}).get("triggers") or []:
        if not isinstance(raw, dict) or not raw.get("name"):
            continue
        try:
            Trigger.model_validate(raw)
        except ValidationError as e:
            first = e.errors()[0]
            cron = any(str(part) == "cron" for err in e.errors() for part in err["loc"])
            why = str(first["msg"]).removeprefix("Value error, ")
            out[str(raw["name"])] = State(False, INVALID_SCHEDULE if cron else INVALID_TRIGGER, why)
            continue
        why = str(error.errors()[0]["msg"]).removeprefix("Value error, ")
        out[str(raw["name"])] = State(False, FUNCTION_INVALID, f"the Function is invalid: {why}")
    return out


def split(trigger: str) -> tuple[Key, str]:
    """``<namespace>/<function>/<trigger>`` (each a DNS name, so no '/' inside) into its parts."""
    ns, fn, name = trigger.split("/", 2)
    return (ns, fn), name


@dataclass(slots=True)
class _Event:
    """One aggregated Event: its name once created, the count written, the count seen."""

    type: str
    reason: str
    message: str
    first: datetime
    last: datetime
    count: int = 1
    written: int = 0
    name: str | None = None


@dataclass(slots=True)
class _Books:
    states: dict[Key, dict[str, State]] = field(default_factory=dict)
    delivered: dict[Key, dict[str, datetime]] = field(default_factory=dict)
    events: dict[tuple[Key, str, str], _Event] = field(default_factory=dict)


Clock = Callable[[], datetime]


def wall_clock() -> datetime:
    return datetime.now(UTC)


class Reporter:
    """Trigger states and Events in memory, written to the cluster by :meth:`flush` (see the module)."""

    def __init__(
        self,
        api: KubeApi | None = None,
        *,
        interval: float = DEFAULT_INTERVAL,
        window: float = DEFAULT_WINDOW,
        clock: Clock = wall_clock,
    ) -> None:
        self._api = api
        self.interval = interval
        self._window = timedelta(seconds=window)
        self._clock = clock
        self._books = _Books()
        self._functions: dict[Key, Described] = {}
        self._rejected: dict[Key, Described] = {}

    # -- what the dispatcher runs ------------------------------------------------------------

    def functions(self, functions: Iterable[Function]) -> None:
        """The Functions the dispatcher serves now (each load): their references and current entries.

        The states of triggers that went away are forgotten, so a renamed trigger starts afresh.
        """
        described: dict[Key, Described] = {}
        for fn in functions:
            meta = fn.metadata
            key = (meta.namespace or "default", meta.name or "")
            described[key] = Described(
                _ref(key, meta.uid),
                {t.name: t.type.value for t in fn.spec.triggers},
                [e.to_wire() for e in (fn.status.triggers if fn.status else [])],
            )
        self._functions = described
        self._forget_gone()

    def rejected(self, body: Mapping[str, Any], error: ValidationError) -> None:
        """A Function that does not validate: each of its triggers says why it does not run."""
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace") or "default"), str(meta.get("name") or ""))
        triggers = [t for t in (body.get("spec") or {}).get("triggers") or [] if isinstance(t, dict) and t.get("name")]
        current = [e for e in (body.get("status") or {}).get("triggers") or [] if isinstance(e, dict)]
        self._rejected[key] = Described(
            _ref(key, meta.get("uid")), {str(t["name"]): str(t.get("type") or "") for t in triggers}, current
        )
        for name, state in rejected_states(body, error).items():
            self.state(f"{key[0]}/{key[1]}/{name}", state.ready, state.reason, state.message)

    def accepted(self, key: Key) -> None:
        """The Function validates again (or is gone): it is no longer reported as rejected."""
        self._rejected.pop(key, None)

    def _forget_gone(self) -> None:
        known = {key: d.types for key, d in [*self._rejected.items(), *self._functions.items()]}
        self._books.states = _prune(self._books.states, known)
        self._books.delivered = _prune(self._books.delivered, known)

    def state(self, trigger: str, ready: bool, reason: str, message: str) -> None:
        """The trigger's state now; a change to a problem posts a Warning, a consumer that connected
        a Normal ``TriggerStarted``."""
        key, name = split(trigger)
        new = State(ready, reason, message)
        states = self._books.states.setdefault(key, {})
        old = states.get(name)
        states[name] = new
        if old == new:
            return
        if not ready and reason != CONNECTING and (old is None or old.reason != reason):
            self.event(trigger, WARNING, reason, message)
        elif ready and reason == CONSUMING:
            self.event(trigger, NORMAL, TRIGGER_STARTED, message)

    def delivered(self, trigger: str) -> None:
        """An event of the trigger was answered 2xx: moves ``lastDelivered`` (written coarsely)."""
        key, name = split(trigger)
        self._books.delivered.setdefault(key, {})[name] = self._clock()

    def event(self, trigger: str, type_: str, reason: str, message: str) -> None:
        """An Event on the trigger's Function, aggregated with its repeats (see the module)."""
        key, name = split(trigger)
        now = self._clock()
        agg = self._books.events.get((key, name, reason))
        text = f"trigger {name}: {message}"[:MAX_MESSAGE]
        if agg is None or now - agg.first > self._window:
            self._books.events[(key, name, reason)] = _Event(type_, reason, text, now, now)
            return
        agg.count += 1
        agg.last = now
        agg.message = text

    def snapshot(self) -> dict[str, Json]:
        """Every trigger's state, by ``<namespace>/<function>/<trigger>`` (for ``/healthz``)."""
        return {
            f"{ns}/{fn}/{name}": {"ready": s.ready, "reason": s.reason, "message": s.message}
            for (ns, fn), states in sorted(self._books.states.items())
            for name, s in sorted(states.items())
        }

    # -- writing ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Flush every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except Exception:  # a bug here must not end reporting for the replica's lifetime
                log.exception("writing the trigger reports failed; trying again in %ss", self.interval)

    async def flush(self) -> None:
        """Write the status entries that changed and the Events that are new or were repeated."""
        if self._api is None:
            return
        now = self._clock()
        for key, described in [*self._functions.items(), *self._rejected.items()]:
            states = self._books.states.get(key, {})
            wanted = entries(described, states, self._books.delivered.get(key, {}), now)
            if wanted and differs(described.current, wanted):
                await self._write_status(key, described, wanted)
        for ident, agg in list(self._books.events.items()):
            if agg.count != agg.written:
                await self._write_event(ident[0], agg)
            if now - agg.first > self._window and agg.count == agg.written:
                del self._books.events[ident]  # the next occurrence starts a new Event

    async def _write_status(self, key: Key, described: Described, wanted: list[Json]) -> None:
        assert self._api is not None
        path = f"/apis/{constants.API_VERSION}/namespaces/{key[0]}/functions/{key[1]}/status"
        try:
            await self._api.request("PATCH", path, body={"status": {"triggers": wanted}}, content_type=MERGE_PATCH)
        except KubeApiError as e:
            if e.status != 404:  # gone: nothing to report on
                log.warning("cannot write the trigger status of %s/%s: %s", key[0], key[1], e)
                return
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            log.warning("cannot write the trigger status of %s/%s: %s", key[0], key[1], e)
            return
        described.current = wanted  # until the watch brings the object back

    async def _write_event(self, key: Key, agg: _Event) -> None:
        assert self._api is not None
        described = self._functions.get(key) or self._rejected.get(key)
        if described is None:  # the Function went away: its Events with it
            agg.written = agg.count
            return
        collection = f"/api/v1/namespaces/{key[0]}/events"
        try:
            if agg.name is not None:
                patch = {"count": agg.count, "lastTimestamp": rfc3339(agg.last), "message": agg.message}
                try:
                    await self._api.request("PATCH", f"{collection}/{agg.name}", body=patch, content_type=MERGE_PATCH)
                    agg.written = agg.count
                    return
                except KubeApiError as e:
                    if e.status != 404:  # expired (the apiserver's event TTL): create it again
                        raise
            created = await self._api.request("POST", collection, body=self._event_body(key, described, agg))
            agg.name = str((created.get("metadata") or {}).get("name") or "") or None
            agg.written = agg.count
        except (KubeApiError, aiohttp.ClientError, OSError, TimeoutError) as e:
            log.warning("cannot post Event %s on %s/%s: %s", agg.reason, key[0], key[1], e)

    @staticmethod
    def _event_body(key: Key, described: Described, agg: _Event) -> Json:
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{key[1]}.", "namespace": key[0]},
            "involvedObject": described.ref,
            "type": agg.type,
            "reason": agg.reason,
            "message": agg.message,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "firstTimestamp": rfc3339(agg.first),
            "lastTimestamp": rfc3339(agg.last),
            "count": agg.count,
        }


def _prune(books: dict[Key, dict[str, V]], known: Mapping[Key, Mapping[str, str]]) -> dict[Key, dict[str, V]]:
    """``books`` without the Functions and triggers that are no longer known."""
    out: dict[Key, dict[str, V]] = {}
    for key, by_name in books.items():
        kept = {name: v for name, v in by_name.items() if name in known.get(key, {})}
        if kept:
            out[key] = kept
    return out


def _ref(key: Key, uid: Any) -> Json:
    ref: Json = {"apiVersion": constants.API_VERSION, "kind": "Function", "namespace": key[0], "name": key[1]}
    if uid:
        ref["uid"] = str(uid)
    return ref
