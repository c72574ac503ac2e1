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
) -> Json:
    """The Function's status: Ready when its pods can run (a runtime is available). A Function
    with no pods is Ready: it scales from zero on the first request."""
    conditions = (previous or {}).get("conditions")
    reason = REASON_READY if choice.runnable and choice.sandboxed else choice.reason
    ready = condition(conditions, READY, choice.runnable, reason, choice.message, generation=generation, now=now)
    return {
        "conditions": [ready],
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
