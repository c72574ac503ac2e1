"""Functions and broker URLs from the cluster, for ``voltgrid triggers`` running in it.

The Functions of every namespace are followed by the access layer's LIST+WATCH loop
(:class:`voltgrid.registry.kubeapi.Reflector`): one paged LIST, then WATCHes with bookmarks that
continue from the last version, so a Function added, changed or deleted reaches the dispatcher in
about a round trip, and no replica lists the cluster every few seconds. An expired watch (410 Gone),
an error or a silent connection relists, and deletions meanwhile are noticed. Each change (or each
complete LIST) yields the whole set of Functions once more, with the Secrets their queue triggers
name read again (one GET per Secret); the runner then restarts only the triggers that changed.
Secrets are not watched: a rotated broker URL is picked up by the next change or by the safety
relist every ``resync`` seconds. An invalid Function is skipped and named in the log.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import AsyncIterator
from typing import Any, Final

import aiohttp
from pydantic import ValidationError

from voltgrid.api import constants
from voltgrid.api.function import Function
from voltgrid.api.triggers import SecretKeyRef, TriggerType
from voltgrid.registry.kubeapi import RETRY_BACKOFF_S, Json, Key, KubeApi, KubeApiError, Reflector, key_of
from voltgrid.triggers.report import SECRET_KEY_MISSING, SECRET_MISSING, Reporter
from voltgrid.triggers.runner import Missing, SecretLookup

log = logging.getLogger(__name__)

PATH: Final = f"/apis/{constants.API_VERSION}/functions"

Secrets = dict[tuple[str, str, str], str]  # (namespace, secret, key) -> value
Found = dict[tuple[str, str], int]  # (namespace, secret) -> 200 when read, else the refusal's status


class KubeSource:
    """The cluster's Functions, kept by a :class:`Reflector`, and their Secrets read per change."""

    def __init__(self, api: KubeApi, reporter: Reporter | None = None) -> None:
        self._api = api
        self._reporter = reporter
        self._functions: dict[Key, Function] = {}
        self._changed = asyncio.Event()
        self.reflector = Reflector(api, PATH, self._handle, name="trigger Functions", listed=self._changed.set)

    @property
    def functions(self) -> list[Function]:
        """The Functions known now, in (namespace, name) order."""
        return [self._functions[key] for key in sorted(self._functions)]

    async def _handle(self, event_type: str | None, body: Json) -> None:
        key = key_of(body)
        if event_type == "DELETED":
            self._functions.pop(key, None)
            if self._reporter is not None:
                self._reporter.accepted(key)
        else:
            try:
                self._functions[key] = Function.model_validate(body)
            except ValidationError as e:
                log.error("Function %s/%s skipped: %s", key[0], key[1], e)
                self._functions.pop(key, None)
                if self._reporter is not None:
                    self._reporter.rejected(body, e)
            else:
                if self._reporter is not None:
                    self._reporter.accepted(key)
        if event_type is not None:  # a watch event; a LIST reports once, when complete (``listed``)
            self._changed.set()

    async def follow(self, stop: asyncio.Event, resync: float) -> AsyncIterator[tuple[list[Function], SecretLookup]]:
        """The Functions and a lookup over their Secrets after the first LIST and after every change,
        until ``stop`` is set; with no change for ``resync`` seconds, a safety relist is asked for.
        A Secret read that fails (not 403/404) keeps the running triggers and is tried again."""
        reflecting = asyncio.create_task(self.reflector.run(), name="trigger Functions")
        try:
            while not stop.is_set():
                if not await _either(self._changed, stop, resync):
                    self.reflector.resync()
                    continue
                if stop.is_set():
                    return
                self._changed.clear()
                functions = self.functions
                try:
                    secrets, found = await self._secrets(functions)
                except (KubeApiError, aiohttp.ClientError, TimeoutError) as e:
                    log.error("cannot read the Secrets of queue triggers, the running triggers stay: %s", e)
                    await _either(asyncio.Event(), stop, RETRY_BACKOFF_S)
                    self._changed.set()
                    continue
                yield functions, lookup(secrets, found)
        finally:
            reflecting.cancel()
            await asyncio.gather(reflecting, return_exceptions=True)

    async def _secrets(self, functions: list[Function]) -> tuple[Secrets, Found]:
        wanted = {
            (fn.metadata.namespace or "default", t.queue.url_from.name)
            for fn in functions
            for t in fn.spec.triggers
            if t.type is TriggerType.QUEUE and t.queue is not None
        }
        out: Secrets = {}
        found: Found = {}
        for namespace, name in sorted(wanted):
            try:
                secret: Any = await self._api.request("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")
            except KubeApiError as e:
                if e.status not in (403, 404):
                    raise
                log.error("Secret %s/%s cannot be read (%s): its queue triggers wait", namespace, name, e.status)
                found[(namespace, name)] = e.status
                continue
            found[(namespace, name)] = 200
            for key, value in (secret.get("data") or {}).items():
                try:
                    out[(namespace, name, key)] = base64.b64decode(value, validate=True).decode().strip()
                except (binascii.Error, UnicodeDecodeError):
                    log.error("Secret %s/%s key %s is not text", namespace, name, key)
        return out, found


async def _either(event: asyncio.Event, stop: asyncio.Event, within: float) -> bool:
    """Wait for ``event`` or ``stop`` at most ``within`` seconds; whether either was set."""
    waits = [asyncio.create_task(event.wait()), asyncio.create_task(stop.wait())]
    try:
        done, _ = await asyncio.wait(waits, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
    return bool(done)


def lookup(secrets: Secrets, found: Found) -> SecretLookup:
    """The runner's secret lookup over one load's Secrets; a miss says which part is missing."""

    def get(namespace: str, ref: SecretKeyRef) -> str | Missing:
        value = secrets.get((namespace, ref.name, ref.key))
        if value:
            return value
        where = f"Secret {namespace}/{ref.name}"
        status = found.get((namespace, ref.name))
        if status == 200:
            return Missing(SECRET_KEY_MISSING, f"{where} has no key {ref.key!r} (or its value is not text)")
        if status == 403:
            return Missing(
                SECRET_MISSING,
                f"{where} cannot be read: the dispatcher may read Secrets only in the"
                " namespaces of the chart's triggers.secretNamespaces",
            )
        return Missing(SECRET_MISSING, f"{where} does not exist")

    return get
