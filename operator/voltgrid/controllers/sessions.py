"""Session controller: declarative sessions (kubectl/GitOps), reflected coarsely.

The binding of a Session is its pod: an instance pod labelled with the session id is what the
gateway routes to and rebuilds its registry from, so "binding through the registry" needs no write
beyond creating that pod. ``keepWarm`` keeps such a pod (co-owned by the Session, never reaped
for idleness). Status (phase, instance, last activity, expiry) is refreshed from the pod index by
the shared sweep, so a request never causes a status write. Deleting a Session runs the Function's
preStop on the bound instance (bounded by its timeout) and deletes the session's pod: that is the
finalizer kopf holds for the ``on.delete`` handler.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, Final

import aiohttp
import kopf

from voltgrid.api import podspec
from voltgrid.api.function import Function
from voltgrid.api.session import Session, SessionPhase
from voltgrid.controllers.builders import session as session_builder
from voltgrid.controllers.builders import status as status_builder
from voltgrid.controllers.builders.pods import PodInfo
from voltgrid.controllers.builders.runtime import select_runtime
from voltgrid.controllers.events import NORMAL, WARNING
from voltgrid.controllers.kube import core_path, voltgrid_path
from voltgrid.controllers.state import Context, Key, spec_only

logger = logging.getLogger(__name__)

Json = dict[str, Any]
#: Retry delay while the referenced Function does not exist or cannot run.
FUNCTION_RETRY: Final = 30.0


class SessionController:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        #: Live Session objects: (session, function, last status). Bounded by declarative sessions.
        self.live: dict[Key, tuple[Session, Function, Json]] = {}
        #: (namespace, function, session id) -> Session key, to map pod changes to Sessions.
        self.by_session_id: dict[tuple[str, str, str], Key] = {}

    async def reconcile(self, body: Mapping[str, Any]) -> None:
        """kopf create/update/resume handler body; raises kopf.TemporaryError to retry later."""
        session = Session.model_validate(spec_only(body))
        ns, name = str(session.metadata.namespace), str(session.metadata.name)
        current = dict(body.get("status") or {})
        fn_body = await self.ctx.client.get(voltgrid_path("functions", ns, session.spec.function_ref))
        if fn_body is None:
            msg = f"Function {session.spec.function_ref} not found in {ns}"
            await self._write(
                (ns, name),
                current,
                {
                    "conditions": [
                        status_builder.condition(
                            current.get("conditions"),
                            status_builder.READY,
                            False,
                            "FunctionNotFound",
                            msg,
                            generation=session.metadata.generation,
                            now=self.ctx.clock(),
                        )
                    ]
                },
            )
            raise kopf.TemporaryError(msg, delay=FUNCTION_RETRY)
        function = Function.model_validate(spec_only(fn_body))
        sid = session_builder.session_id(session)
        self.by_session_id[(ns, function.metadata.name or "", sid)] = (ns, name)
        if session.spec.keep_warm:
            await self._keep_warm(session, function, sid)
        expires = session_builder.expires_at(session, function)
        if expires is not None:
            self.ctx.scheduler.schedule(("session", ns, name), expires)
        self.live[(ns, name)] = (session, function, current)
        await self.refresh((ns, name))

    async def _keep_warm(self, session: Session, function: Function, sid: str) -> None:
        ns = str(session.metadata.namespace)
        if any(p.alive for p in self.ctx.pods.for_session(ns, str(function.metadata.name), sid)):
            return
        rt = self.ctx.runtimes
        choice = select_runtime(function.spec.isolation, rt.classes, rt.nodes.values(), function.spec.resources.gpu)
        if not choice.runnable:
            raise kopf.TemporaryError(choice.message, delay=FUNCTION_RETRY)
        manifest = podspec.build_instance_pod(
            function, sid, runtime_class_name=choice.runtime_class_name, session_owner=session
        )
        created = await self.ctx.client.create(core_path("pods", ns), manifest)
        self.ctx.pods.upsert(PodInfo.from_pod(created or manifest))

    async def refresh(self, key: Key) -> None:
        """Recompute the coarse status from the pod index; write only when it changed."""
        remembered = self.live.get(key)
        if remembered is None:
            return
        session, function, current = remembered
        ns = key[0]
        sid = session_builder.session_id(session)
        pods = self.ctx.pods.for_session(ns, str(function.metadata.name), sid)
        expiry = session_builder.expires_at(session, function)
        previous = current.get("phase")
        phase = session_builder.phase(
            pods,
            now=self.ctx.clock(),
            idle=session_builder.idle_timeout(session, function),
            expiry=expiry,
            previous=SessionPhase(previous) if previous else None,
        )
        live = [p for p in pods if p.alive]
        patch: Json = {
            "phase": phase,
            "sessionId": sid,
            "instance": live[0].name if live else None,
            "observedGeneration": session.metadata.generation,
        }
        last = max((p.last_active for p in live if p.last_active), default=None)
        if last is not None:
            patch["lastActivity"] = status_builder.rfc3339(last)
        if expiry is not None:
            patch["expiresAt"] = status_builder.rfc3339(expiry)
        if function.spec.storage is not None:
            patch["storagePath"] = f"{ns}/{function.metadata.name}/{sid}"
        patch["conditions"] = [
            status_builder.condition(
                current.get("conditions"),
                status_builder.READY,
                phase != SessionPhase.EXPIRED,
                str(phase),
                f"session {sid} is {phase}",
                generation=session.metadata.generation,
                now=self.ctx.clock(),
            )
        ]
        self.live[key] = (session, function, await self._write(key, current, patch))
        if phase == SessionPhase.EXPIRED and live:
            await self.release(session, function, live, reason="expired")
            await self.ctx.events.post(self._ref(session), NORMAL, "Expired", f"session {sid} reached maxLifetime")

    async def on_pod(self, pod: PodInfo) -> None:
        key = self.by_session_id.get((pod.namespace, str(pod.function), str(pod.session)))
        if key is not None:
            self.ctx.dirty_sessions.add(key)

    async def on_deadline(self, key: Key) -> None:
        await self.refresh(key)

    async def finalize(self, body: Mapping[str, Any]) -> None:
        """kopf on.delete handler body: preStop on the bound instance, then delete its pod."""
        session = Session.model_validate(spec_only(body))
        ns, name = str(session.metadata.namespace), str(session.metadata.name)
        self.ctx.scheduler.cancel(("session", ns, name))
        remembered = self.live.pop((ns, name), None)
        function = remembered[1] if remembered else None
        if function is None:
            fn_body = await self.ctx.client.get(voltgrid_path("functions", ns, session.spec.function_ref))
            function = Function.model_validate(spec_only(fn_body)) if fn_body else None
        sid = session_builder.session_id(session)
        self.by_session_id.pop((ns, session.spec.function_ref, sid), None)
        if function is None:
            return  # the Function is gone: its pods went with it (owner references)
        pods = [p for p in self.ctx.pods.for_session(ns, str(function.metadata.name), sid) if p.alive]
        await self.release(session, function, pods, reason="deleted")

    async def release(self, session: Session, function: Function, pods: list[PodInfo], *, reason: str) -> None:
        sid = session_builder.session_id(session)
        for pod in pods:
            call = session_builder.prestop_call(function, pod, sid, reason, self.ctx.settings.prestop_timeout_cap)
            if call is not None:
                url, payload, timeout = call
                try:
                    async with (
                        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
                        http.post(url, json=payload) as resp,
                    ):
                        await resp.read()
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    await self.ctx.events.post(
                        self._ref(session), WARNING, "PreStopFailed", f"preStop {url} failed: {exc!r}; releasing anyway"
                    )
                except asyncio.CancelledError:
                    raise
            await self.ctx.client.delete(core_path("pods", pod.namespace, pod.name))
            self.ctx.pods.remove(pod.namespace, pod.name)

    async def _write(self, key: Key, current: Json, patch: Json) -> Json:
        if not status_builder.changed(current, patch):
            return current
        await self.ctx.client.patch(voltgrid_path("sessions", *key) + "/status", {"status": patch})
        return {**current, **patch}

    @staticmethod
    def _ref(session: Session) -> Json:
        meta = session.metadata
        return {
            "apiVersion": session.api_version,
            "kind": "Session",
            "name": meta.name,
            "namespace": meta.namespace,
            "uid": meta.uid,
        }
