"""A small JSON client for the Kubernetes API, authenticated with kopf's own credentials.

kopf logs in once (``@kopf.on.login``) and hands us the same :class:`kopf.ConnectionInfo`, so the
operator has one identity and one auth path. Dicts in, dicts out: at 100,000 objects the generated
model classes of the official clients cost more memory and CPU than the work itself, and every
manifest already comes from a pure builder as a dict. Idempotence is built in: create answers
``None`` on 409 (the object exists: a retried create after a crash), delete and patch answer
``None``/``False`` on 404.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

import aiohttp
import kopf

from voltgrid.api import constants as c
from voltgrid.errors import VoltgridError

Json = dict[str, Any]

REQUEST_TIMEOUT: Final = 30.0
LIST_PAGE_SIZE: Final = 500
MAX_CONNECTIONS: Final = 64
MERGE_PATCH: Final = "application/merge-patch+json"
#: Also the field manager the apiserver records in ``managedFields`` for the operator's writes.
USER_AGENT: Final = "voltgrid-operator"
#: Seconds past a WATCH's own ``timeoutSeconds`` that a silent connection is given before it counts as dead.
WATCH_SILENCE_SLACK: Final = 30.0


class KubeApiError(VoltgridError):
    """The apiserver refused a request; ``status`` is the HTTP code, ``reason`` its Status reason."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason


def _payload(text: str) -> Json:
    try:
        payload = json.loads(text) if text else {}
    except ValueError:  # e.g. "404 page not found" for a resource that is not served
        payload = {"message": text[:200]}
    return payload if isinstance(payload, dict) else {}


def _refusal(status: int, reason: str, payload: Json) -> KubeApiError:
    return KubeApiError(status, str(payload.get("reason", reason)), str(payload.get("message", "")))


def core_path(plural: str, namespace: str | None = None, name: str | None = None) -> str:
    return _path("/api/v1", plural, namespace, name)


def group_path(group_version: str, plural: str, namespace: str | None = None, name: str | None = None) -> str:
    return _path(f"/apis/{group_version}", plural, namespace, name)


def voltgrid_path(plural: str, namespace: str | None = None, name: str | None = None) -> str:
    return group_path(c.API_VERSION, plural, namespace, name)


def _path(prefix: str, plural: str, namespace: str | None, name: str | None) -> str:
    path = f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"
    return f"{path}/{name}" if name else path


class KubeClient:
    """One aiohttp session to the apiserver; (re)configured by the operator's login handler."""

    def __init__(self, info: kopf.ConnectionInfo | None = None) -> None:
        self._info = info
        self._session: aiohttp.ClientSession | None = None

    def configure(self, info: kopf.ConnectionInfo) -> None:
        """Use new credentials from the next request on (kopf re-logs in when they expire)."""
        self._info = info

    @property
    def configured(self) -> bool:
        return self._info is not None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            ssl_context: ssl.SSLContext | bool = True
            if self._info is not None and self._info.server.startswith("https"):
                ssl_context = False if self._info.insecure else self._info.as_ssl_context()
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS, ssl=ssl_context),
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
            )
        return self._session

    def _url_and_headers(self, path: str) -> tuple[str, dict[str, str]]:
        if self._info is None:
            raise KubeApiError(0, "NotLoggedIn", "the operator has no credentials yet")
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT, **self._info.as_http_headers()}
        return self._info.server.rstrip("/") + path, headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Json | None = None,
        content_type: str = "application/json",
    ) -> Json:
        url, headers = self._url_and_headers(path)
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        session = self._get_session()
        async with session.request(method, url, params=params, headers=headers, data=data) as resp:
            payload = _payload(await resp.text())
            if resp.status >= 400:
                raise _refusal(resp.status, str(resp.reason), payload)
            return payload

    async def watch(self, path: str, params: Mapping[str, str]) -> AsyncIterator[Json]:
        """The events of one WATCH request (a JSON object per line) until the server ends it.

        The server ends it after ``timeoutSeconds`` (required here); a read that stays silent for
        longer than that is a dead connection and raises :class:`asyncio.TimeoutError`.
        """
        url, headers = self._url_and_headers(path)
        silent = float(params["timeoutSeconds"]) + WATCH_SILENCE_SLACK
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=REQUEST_TIMEOUT, sock_read=silent)
        session = self._get_session()
        async with session.get(url, params={**params, "watch": "true"}, headers=headers, timeout=timeout) as resp:
            if resp.status >= 400:
                raise _refusal(resp.status, str(resp.reason), _payload(await resp.text()))
            rest = b""
            async for chunk in resp.content.iter_any():
                *lines, rest = (rest + chunk).split(b"\n")
                for line in lines:
                    if line.strip():
                        event = json.loads(line)
                        if isinstance(event, dict):
                            yield event

    async def get(self, path: str) -> Json | None:
        """The object, or None when it does not exist."""
        try:
            return await self.request("GET", path)
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list(self, path: str, label_selector: str | None = None) -> list[Json]:
        """Every item, paged (``limit``/``continue``) so a large list never arrives as one body."""
        items: list[Json] = []
        async for page in self.list_pages(path, label_selector):
            items.extend(page.get("items") or [])
        return items

    async def list_pages(self, path: str, label_selector: str | None = None) -> AsyncIterator[Json]:
        """The pages of a LIST, one request per page; the last one carries the list's resourceVersion."""
        params = {"limit": str(LIST_PAGE_SIZE)}
        if label_selector:
            params["labelSelector"] = label_selector
        while True:
            page = await self.request("GET", path, params=params)
            yield page
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return
            params["continue"] = token

    async def create(self, path: str, body: Json) -> Json | None:
        """The created object, or None when one of that name already exists (409)."""
        try:
            return await self.request("POST", path, body=body)
        except KubeApiError as exc:
            if exc.status == 409:
                return None
            raise

    async def patch(self, path: str, body: Json) -> Json | None:
        """JSON merge patch; None when the object is gone."""
        try:
            return await self.request("PATCH", path, body=body, content_type=MERGE_PATCH)
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def delete(self, path: str) -> bool:
        """Delete (background propagation); False when it was already gone."""
        try:
            await self.request("DELETE", path, body={"propagationPolicy": "Background"})
        except KubeApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True
