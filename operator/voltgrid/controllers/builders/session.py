"""Session builders: the id, the coarse phase from the session's pods, expiry, the preStop call."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from voltgrid.api.common import parse_duration
from voltgrid.api.function import Function
from voltgrid.api.session import Session, SessionPhase
from voltgrid.controllers.builders.pods import PodInfo

Json = dict[str, Any]


def session_id(session: Session) -> str:
    return session.spec.session_id or str(session.metadata.name)


def idle_timeout(session: Session, function: Function) -> timedelta:
    return parse_duration(session.spec.idle_timeout or function.spec.sessions.idle_timeout)


def expires_at(session: Session, function: Function) -> datetime | None:
    created = session.metadata.creation_timestamp
    if created is None:
        return None
    return created + parse_duration(session.spec.max_lifetime or function.spec.sessions.max_lifetime)


def phase(
    pods: Iterable[PodInfo], *, now: datetime, idle: timedelta, expiry: datetime | None, previous: SessionPhase | None
) -> SessionPhase:
    """Coarse phase: Expired past maxLifetime; Active/Idle by the pod's last activity; Released
    once a session that had an instance has none; Pending before it ever had one."""
    if expiry is not None and now >= expiry:
        return SessionPhase.EXPIRED
    live = [p for p in pods if p.alive]
    if not live:
        seen = previous in (SessionPhase.ACTIVE, SessionPhase.IDLE, SessionPhase.RELEASED)
        return SessionPhase.RELEASED if seen else SessionPhase.PENDING
    stamps = [t for p in live for t in (p.last_active or p.created,) if t is not None]
    last = max(stamps, default=None)
    if last is not None and now - last > idle:
        return SessionPhase.IDLE
    return SessionPhase.ACTIVE


def prestop_call(function: Function, pod: PodInfo, sid: str, reason: str, cap: float) -> tuple[str, Json, float] | None:
    """(url, JSON body, timeout) of the preStop POST to the session's instance, if it has one."""
    hook = function.spec.sessions.pre_stop
    if hook is None or not pod.pod_ip:
        return None
    host = f"[{pod.pod_ip}]" if ":" in pod.pod_ip else pod.pod_ip
    timeout = min(parse_duration(hook.timeout).total_seconds(), cap)
    return f"http://{host}:{function.spec.port}{hook.path}", {"sessionId": sid, "reason": reason}, timeout
