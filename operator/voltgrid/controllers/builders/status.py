"""Status patches: Kubernetes-style conditions and the status of each resource.

``lastTransitionTime`` only moves when a condition's status flips, and a patch is only worth
sending when :func:`changed` says so: the operator never writes a status that says nothing new.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from voltgrid.controllers.builders.pods import FunctionCounts
from voltgrid.controllers.builders.runtime import RuntimeChoice

Json = dict[str, Any]

READY: Final = "Ready"
TRIGGERS_READY: Final = "TriggersReady"
#: A trigger of the spec that no dispatcher has reported yet (none runs, or it has not caught up).
REASON_TRIGGER_PENDING: Final = "TriggerPending"
REASON_READY: Final = "Ready"
REASON_INVALID: Final = "InvalidSpec"
_VOLATILE: Final = frozenset({"lastTransitionTime"})


def rfc3339(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def condition(
    previous: Sequence[Mapping[str, Any]] | None,
    type_: str,
    ok: bool,
    reason: str,
    message: str,
    *,
    generation: int | None,
    now: datetime,
) -> Json:
    """One condition; keeps the previous ``lastTransitionTime`` when the status did not change."""
    status = "True" if ok else "False"
    before = next((x for x in previous or () if x.get("type") == type_), None)
    since = before.get("lastTransitionTime") if before and before.get("status") == status else None
    out: Json = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since or rfc3339(now),
    }
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def changed(current: Mapping[str, Any] | None, patch: Mapping[str, Any]) -> bool:
    """Whether applying ``patch`` (a status merge patch) would change ``current``."""
    current = current or {}
    for key, value in patch.items():
        if key == "conditions":
            if _strip(current.get(key)) != _strip(value):
                return True
        elif current.get(key) != value:
            return True
    return False


def _strip(conditions: Any) -> list[Json]:
    return sorted(
        ({k: v for k, v in x.items() if k not in _VOLATILE} for x in conditions or []), key=lambda x: str(x.get("type"))
    )


def function_status(
    previous: Mapping[str, Any] | None,
    *,
    generation: int | None,
    choice: RuntimeChoice,
    counts: FunctionCounts,
    url: str,
    now: datetime,
    triggers: Sequence[str] = (),
) -> Json:
    """The Function's status: Ready when its pods can run (a runtime is available). A Function
    with no pods is Ready: it scales from zero on the first request. A Function with ``triggers``
    (their names) also gets :func:`triggers_condition`."""
    conditions = (previous or {}).get("conditions")
    reason = REASON_READY if choice.runnable and choice.sandboxed else choice.reason
    ready = condition(conditions, READY, choice.runnable, reason, choice.message, generation=generation, now=now)
    out = [ready]
    if triggers:
        entries = (previous or {}).get("triggers") or []
        out.append(triggers_condition(conditions, triggers, entries, generation=generation, now=now))
    return {
        "conditions": out,
        "instances": counts.instances,
        "readyInstances": counts.ready,
        "warmInstances": counts.warm,
        "activeSessions": counts.active_sessions,
        "url": url,
        "runtimeClassName": choice.runtime_class_name,
        "observedGeneration": generation,
    }


def invalid_status(previous: Mapping[str, Any] | None, *, generation: int | None, message: str, now: datetime) -> Json:
    """Status of an object whose spec the operator cannot run (what the CRD schema cannot catch)."""
    return not_ready_status(previous, generation=generation, reason=REASON_INVALID, message=message, now=now)


def not_ready_status(
    previous: Mapping[str, Any] | None, *, generation: int | None, reason: str, message: str, now: datetime
) -> Json:
    """Status of an object the operator could not make run: ``Ready=False`` saying why (an invalid
    spec, or an object of its own that the apiserver refused: ``PodRejected``...)."""
    conditions = (previous or {}).get("conditions")
    return {
        "conditions": [condition(conditions, READY, False, reason, message, generation=generation, now=now)],
        "observedGeneration": generation,
    }


def triggers_condition(
    previous: Sequence[Mapping[str, Any]] | None,
    names: Sequence[str],
    entries: Sequence[Mapping[str, Any]],
    *,
    generation: int | None,
    now: datetime,
) -> Json:
    """``TriggersReady``: the operator's summary of ``status.triggers``, which the dispatcher writes.

    The two components never write the same key of the status: the operator's merge patches name
    ``conditions`` (a merge patch replaces a list whole), the dispatcher's name only ``triggers``,
    so neither can drop what the other wrote. The operator reads the dispatcher's entries here and
    sums them up: True when every trigger of the spec is reported ready; else False with the first
    problem's reason (``TriggerPending`` for a trigger no dispatcher reported) and every problem
    in the message.
    """
    by_name = {str(e.get("name")): e for e in entries}
    problems: list[tuple[str, str]] = []
    for name in names:
        entry = by_name.get(name)
        if entry is None:
            problems.append((REASON_TRIGGER_PENDING, f"{name}: no trigger dispatcher has reported it yet"))
        elif entry.get("status") != "True":
            problems.append((str(entry.get("reason") or "NotReady"), f"{name}: {entry.get('message') or ''}"))
    if not problems:
        return condition(
            previous,
            TRIGGERS_READY,
            True,
            TRIGGERS_READY,
            f"{len(names)} trigger(s) ready",
            generation=generation,
            now=now,
        )
    message = "; ".join(m for _, m in problems)
    return condition(previous, TRIGGERS_READY, False, problems[0][0], message, generation=generation, now=now)
