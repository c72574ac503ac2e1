"""The one way Voltgrid reads Kubernetes: a JSON client, a paged LIST, and one LIST+WATCH loop.

Every follower of the apiserver (the operator's Function informer, the gateway's Function catalog,
gateway membership from EndpointSlices, the gateway's wait for a starting pod) runs the same
algorithm, client-go's reflector: a paged LIST (``limit``/``continue``: a large collection never
arrives as one body), then one WATCH from the list's resourceVersion with bookmarks; a WATCH the
server ends on its ``timeoutSeconds`` continues from the last version seen (bookmarks included), so
nothing is listed again every few minutes. 410 Gone (the version expired), any other failure, and a
connection silent past the watch's own timeout (dropped without a FIN by a node or NAT) all relist;
objects deleted while no watch was open are noticed across that relist and delivered as DELETED.

It lives here, the lowest layer that talks to the apiserver, so that the gateway, the backends and
the operator all import it, and the data plane never imports kopf: who the caller is comes from a
small :class:`Credentials` protocol (the operator adapts kopf's login, the gateway its kubeconfig
or service account), not from a framework's type. Dicts in, dicts out: at 100,000 objects the
generated model classes of the official clients cost more than the work itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import aiohttp

from voltgrid.errors import VoltgridError

logger = logging.getLogger(__name__)

Json = dict[str, Any]
#: ``(namespace, name)``; the namespace is "" for a cluster-scoped object.
Key = tuple[str, str]

#: Seconds to connect, and for one request (a LIST page included) to answer.
REQUEST_TIMEOUT_S: Final = 30.0
#: Seconds the apiserver keeps one WATCH open (the loop then watches again from the last version).
WATCH_TIMEOUT_S: Final = 300
#: Seconds of silence past a WATCH's own timeout before its connection counts as dead (and relists).
WATCH_SILENCE_SLACK_S: Final = 30.0
#: Seconds between attempts after a failed LIST or WATCH, or a WATCH that ended at once (410 relists at once).
RETRY_BACKOFF_S: Final = 2.0
#: Objects per LIST page.
LIST_PAGE_SIZE: Final = 500
#: Concurrent connections of one client to the apiserver.
MAX_CONNECTIONS: Final = 64
GONE: Final = 410


class KubeApiError(VoltgridError):
    """The apiserver refused a request; ``status`` is the HTTP code, ``reason`` its Status reason."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason


class Credentials(Protocol):
    """Who the client is and where the apiserver is: all the access layer needs of a login."""

    @property
    def server(self) -> str:
        """The apiserver's base URL (``https://host:port``)."""
        ...

    async def headers(self) -> Mapping[str, str]:
        """The authentication headers of the next request (a token may be refreshed in between)."""
        ...

    def ssl_context(self) -> ssl.SSLContext | bool:
        """How to verify the apiserver (and present a client certificate); True: the system default."""
        ...


@dataclass(frozen=True)
class StaticCredentials:
    """A fixed server and optional bearer token (a local apiserver, a test's fake, a benchmark)."""

    server: str
    token: str | None = None
    verify: ssl.SSLContext | bool = True

    async def headers(self) -> Mapping[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def ssl_context(self) -> ssl.SSLContext | bool:
        return self.verify


class ConfigurationCredentials:
    """The credentials of a ``kubernetes_asyncio`` ``Configuration`` (kubeconfig or service account):
    its token is asked for per request, so a refreshed service-account token is picked up."""

    def __init__(self, configuration: Any) -> None:
        self._conf = configuration

    @property
    def server(self) -> str:
        return str(self._conf.host)

    async def headers(self) -> Mapping[str, str]:
        auth = await self._conf.auth_settings()
        return {str(item["key"]): str(item["value"]) for item in auth.values() if item.get("value")}

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https"):
            return True
        context = ssl.create_default_context(cafile=self._conf.ssl_ca_cert)
        if self._conf.cert_file:
            context.load_cert_chain(self._conf.cert_file, keyfile=self._conf.key_file)
        if not self._conf.verify_ssl:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if getattr(self._conf, "disable_strict_ssl_verification", False):
            context.verify_flags &= ~ssl.VERIFY_X509_STRICT
        return context


def _payload(text: str) -> Json:
    try:
        payload = json.loads(text) if text else {}
    except ValueError:  # e.g. "404 page not found" for a resource that is not served
        payload = {"message": text[:200]}
    return payload if isinstance(payload, dict) else {}


def _refusal(status: int, reason: str, payload: Json) -> KubeApiError:
    return KubeApiError(status, str(payload.get("reason", reason)), str(payload.get("message", "")))


def key_of(body: Json) -> Key:
    meta = body.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


class KubeApi:
    """One aiohttp session to the apiserver with one set of timeouts; credentials may change later
    (:meth:`configure`: a re-login) and are read per request."""

    def __init__(self, credentials: Credentials | None = None, *, user_agent: str = "voltgrid") -> None:
        self._credentials = credentials
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None

    def configure(self, credentials: Credentials) -> None:
        """Use new credentials from the next request on."""
        self._credentials = credentials

    @property
    def configured(self) -> bool:
        return self._credentials is not None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self, credentials: Credentials) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS, ssl=credentials.ssl_context()),
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
            )
        return self._session

    async def _prepare(self, path: str) -> tuple[aiohttp.ClientSession, str, dict[str, str]]:
        credentials = self._credentials
        if credentials is None:
            raise KubeApiError(0, "NotLoggedIn", "no Kubernetes credentials yet")
        headers = {"Accept": "application/json", "User-Agent": self._user_agent, **await credentials.headers()}
        return self._get_session(credentials), credentials.server.rstrip("/") + path, headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Json | None = None,
        content_type: str = "application/json",
    ) -> Json:
        """One request; the answer's JSON object, or :class:`KubeApiError` for a refusal."""
        session, url, headers = await self._prepare(path)
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        async with session.request(method, url, params=params, headers=headers, data=data) as resp:
            payload = _payload(await resp.text())
            if resp.status >= 400:
                raise _refusal(resp.status, str(resp.reason), payload)
            return payload

    async def list_pages(self, path: str, params: Mapping[str, str] | None = None) -> AsyncIterator[Json]:
        """The pages of a LIST, one request per page; the last one carries the list's resourceVersion."""
        query = {**(params or {}), "limit": str(LIST_PAGE_SIZE)}
        while True:
            page = await self.request("GET", path, params=query)
            yield page
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return
            query["continue"] = str(token)

    async def list(self, path: str, params: Mapping[str, str] | None = None) -> list[Json]:
        """Every item of a paged LIST."""
        items: list[Json] = []
        async for page in self.list_pages(path, params):
            items.extend(page.get("items") or [])
        return items

    async def watch(self, path: str, params: Mapping[str, str]) -> AsyncIterator[Json]:
        """The events of one WATCH (a JSON object per line) until the server ends it after
        :data:`WATCH_TIMEOUT_S`; a read silent for longer than that plus :data:`WATCH_SILENCE_SLACK_S`
        is a dead connection and raises :class:`TimeoutError`."""
        session, url, headers = await self._prepare(path)
        query = {**params, "watch": "true", "timeoutSeconds": str(WATCH_TIMEOUT_S)}
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=REQUEST_TIMEOUT_S, sock_read=WATCH_TIMEOUT_S + WATCH_SILENCE_SLACK_S
        )
        async with session.get(url, params=query, headers=headers, timeout=timeout) as resp:
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


#: ``handle(event_type, body)``: event_type is None for an object delivered by a LIST, else
#: ADDED, MODIFIED or DELETED (a deletion noticed across a relist carries only the metadata).
Handler = Callable[[str | None, Json], Awaitable[None]]


class Reflector:
    """LIST+WATCH of one collection (see the module docstring), each object's change to ``handle``.

    ``params`` narrows the collection (``labelSelector``, ``fieldSelector``); ``accept`` leaves out
    objects (and their deletions) the caller does not serve; ``listed`` runs after every complete
    LIST, once the deletions it revealed were handled; ``relisting(reason)`` is told of every LIST
    (``start``, ``requested``, ``expired``, ``error``, ``silence``), for a metric.
    """

    def __init__(
        self,
        api: KubeApi,
        path: str,
        handle: Handler,
        *,
        name: str,
        params: Mapping[str, str] | None = None,
        accept: Callable[[Key], bool] | None = None,
        listed: Callable[[], None] | None = None,
        relisting: Callable[[str], None] | None = None,
    ) -> None:
        self._api = api
        self._path = path
        self._handle = handle
        self._name = name
        self._params = dict(params or {})
        self._accept = accept or (lambda _key: True)
        self._listed = listed
        self._relisting = relisting
        self._known: set[Key] = set()
        self._resync = asyncio.Event()
        #: Set once the collection was listed and every listed object handled.
        self.synced = asyncio.Event()

    def resync(self) -> None:
        """Relist now: every object is handled again, and deletions meanwhile are noticed."""
        self._resync.set()

    async def run(self) -> None:
        """Follow the collection until cancelled."""
        reason = "start"
        while True:
            self._resync.clear()
            if self._relisting is not None:
                self._relisting(reason)
            try:
                await self._until_resync()
                reason = "requested"
                continue
            except KubeApiError as exc:
                if exc.status == GONE:
                    logger.info("%s: watch expired (%s); relisting", self._name, exc)
                    reason = "expired"
                    continue
                reason = "error"
                logger.warning("%s: %s failed (%s); relisting in %ss", self._name, self._path, exc, RETRY_BACKOFF_S)
            except TimeoutError:
                reason = "silence"
                logger.warning("%s: %s went silent; relisting in %ss", self._name, self._path, RETRY_BACKOFF_S)
            except (aiohttp.ClientError, ValueError) as exc:
                reason = "error"
                logger.warning("%s: %s failed (%r); relisting in %ss", self._name, self._path, exc, RETRY_BACKOFF_S)
            except Exception:  # a bug in a handler: say so loudly, but keep following
                reason = "error"
                logger.exception("%s: following %s failed; relisting in %ss", self._name, self._path, RETRY_BACKOFF_S)
            await asyncio.sleep(RETRY_BACKOFF_S)

    async def _until_resync(self) -> None:
        """Follow until a resync is asked for (then return) or following fails (then raise)."""
        follow = asyncio.create_task(self._follow(), name=f"{self._name} follow")
        resync = asyncio.create_task(self._resync.wait(), name=f"{self._name} resync")
        try:
            await asyncio.wait([follow, resync], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (follow, resync):
                task.cancel()
            await asyncio.gather(follow, resync, return_exceptions=True)
        if not follow.cancelled():
            follow.result()

    async def _follow(self) -> None:
        version = await self._list()
        loop = asyncio.get_running_loop()
        while True:  # a WATCH the server ended on its timeout continues from the last version
            started = loop.time()
            version = await self._watch(version)
            if loop.time() - started < RETRY_BACKOFF_S:  # ended at once: not the server's timeout
                await asyncio.sleep(RETRY_BACKOFF_S)

    async def _list(self) -> str:
        seen: set[Key] = set()
        version = ""
        async for page in self._api.list_pages(self._path, self._params):
            for body in page.get("items") or []:
                key = key_of(body)
                if self._accept(key):
                    seen.add(key)
                    await self._handle(None, body)
            version = str((page.get("metadata") or {}).get("resourceVersion") or "")
        for namespace, name in sorted(self._known - seen):
            await self._handle("DELETED", {"metadata": {"namespace": namespace, "name": name}})
        self._known = seen
        self.synced.set()
        if self._listed is not None:
            self._listed()
        return version

    async def _watch(self, version: str) -> str:
        """One WATCH until the server ends it; the last resourceVersion seen (bookmarks included)."""
        params = {**self._params, "resourceVersion": version, "allowWatchBookmarks": "true"}
        async for event in self._api.watch(self._path, params):
            kind, body = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                raise KubeApiError(int(body.get("code") or 0), str(body.get("reason")), str(body.get("message")))
            version = str((body.get("metadata") or {}).get("resourceVersion") or version)
            if kind not in ("ADDED", "MODIFIED", "DELETED"):
                continue  # BOOKMARK: only its resourceVersion matters
            key = key_of(body)
            if not self._accept(key):
                continue
            if kind == "DELETED":
                self._known.discard(key)
            else:
                self._known.add(key)
            await self._handle(kind, body)
        return version
