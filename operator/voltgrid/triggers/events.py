"""Pure builders: the HTTP request that delivers one event, and where its session key comes from.

Delivery is CloudEvents 1.0 in binary mode (the cloudevents SDK writes the ``ce-*`` headers), so a
handler reads its body as the raw payload and its metadata from headers; the distributed-tracing
extension's ``traceparent`` becomes the W3C header the gateway continues its trace from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings.http import HTTPMessage, from_binary_event, to_binary_event
from cloudevents.core.exceptions import BaseCloudEventException
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from voltgrid.api import constants
from voltgrid.api.function import Affinity, SessionPolicy
from voltgrid.api.triggers import SessionFrom, SessionSource
from voltgrid.errors import MalformedEventError

#: The longest session key the gateway accepts as is (its affinity middleware refuses longer ones).
MAX_SESSION_KEY: Final = 256
#: Prefix of a session key derived by hashing a value the gateway would refuse (too long, not ASCII).
HASHED_KEY_PREFIX: Final = "evt-"
MCP_SESSION_HEADER: Final = "Mcp-Session-Id"
TRACEPARENT: Final = "traceparent"


@dataclass(frozen=True, slots=True)
class Message:
    """What a broker handed us, broker-neutral: body, headers (AMQP headers, stream fields), key."""

    id: str
    body: bytes
    headers: Mapping[str, str]
    key: str | None = None
    content_type: str | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
    """One HTTP request to the gateway."""

    url: str
    headers: dict[str, str]
    body: bytes


def invoke_url(gateway: str, namespace: str, function: str, path: str) -> str:
    """``<gateway>/fn/<namespace>/<function><path>``: the same URL a client calls."""
    quoted = quote(path, safe="/:@!$&()*+,;=-._~%")
    return f"{gateway.rstrip('/')}{constants.INVOKE_PATH_PREFIX}{namespace}/{function}{quoted}"


def usable_key(value: str) -> str:
    """A session key the gateway accepts: the value itself, or a stable hash of it.

    Hashing keeps "same value, same session" for values the gateway's affinity would refuse
    (longer than 256 characters, not printable ASCII), instead of dropping the event.
    """
    if value and len(value) <= MAX_SESSION_KEY and value.isascii() and value.isprintable():
        return value
    return HASHED_KEY_PREFIX + hashlib.sha256(value.encode()).hexdigest()[:40]


def session_key(source: SessionFrom | None, attributes: Mapping[str, Any], message: Message | None) -> str | None:
    """The event's session key per its trigger's ``session``, or None (delivered session-less)."""
    if source is None:
        return None
    raw: Any = None
    if source.source is SessionSource.FIXED:
        raw = source.name
    elif source.source is SessionSource.ATTRIBUTE:
        raw = attributes.get(source.name or "")
    elif message is not None and source.source is SessionSource.HEADER:
        raw = message.headers.get(source.name or "")
    elif message is not None and source.source is SessionSource.KEY:
        raw = message.key
    return usable_key(str(raw)) if raw not in (None, "") else None


def affinity_headers(policy: SessionPolicy, key: str | None) -> dict[str, str]:
    """The header(s) that carry ``key`` the way the Function's affinity reads it (none for ``A2A``:
    its key is the ``contextId`` inside a JSON-RPC body, which an event does not have)."""
    if key is None or policy.affinity in (Affinity.NONE, Affinity.A2A):
        return {}
    if policy.affinity is Affinity.HEADER:
        return {policy.header: key}
    if policy.affinity is Affinity.COOKIE:
        return {"Cookie": f"{policy.cookie}={key}"}
    return {MCP_SESSION_HEADER: key}


def message_event(message: Message, source: str, event_type: str) -> CloudEvent:
    """A queue message as a CloudEvent: its id, the broker as source, its bytes as data."""
    attributes: dict[str, Any] = {"id": message.id, "source": source, "type": event_type}
    if message.content_type:
        attributes["datacontenttype"] = message.content_type
    if message.key:
        attributes["subject"] = message.key
    if traceparent := message.headers.get(TRACEPARENT):
        attributes[TRACEPARENT] = traceparent
    return CloudEvent(attributes, message.body)


def delivery(url: str, event: BaseCloudEvent, policy: SessionPolicy, key: str | None) -> Delivery:
    """The binary-mode POST of ``event`` to ``url`` with the session key where affinity reads it."""
    message = to_binary_event(event)
    headers = dict(message.headers)
    if traceparent := event.get_attributes().get(TRACEPARENT):
        headers[TRACEPARENT] = str(traceparent)  # the W3C header: the gateway's span continues it
    headers.update(affinity_headers(policy, key))
    return Delivery(url, headers, message.body)


STRUCTURED: Final = "application/cloudevents+json"
BATCH: Final = "application/cloudevents-batch+json"
REQUIRED: Final = ("specversion", "id", "source", "type")
#: Events in one batch request: each is a delivery the request waits for.
MAX_BATCH: Final = 1000


def _media_type(headers: Mapping[str, str]) -> str:
    return headers.get("content-type", "").split(";")[0].strip().lower()


def _structured(obj: Any, where: str) -> BaseCloudEvent:
    if not isinstance(obj, dict):
        raise MalformedEventError(f"{where}: a structured CloudEvent is a JSON object, not {type(obj).__name__}")
    missing = [a for a in REQUIRED if obj.get(a) in (None, "")]
    if missing:
        raise MalformedEventError(f"{where}: missing required attribute(s) {', '.join(missing)}")
    try:
        return JSONFormat().read(CloudEvent, json.dumps(obj).encode())
    except (BaseCloudEventException, ValueError) as e:
        raise MalformedEventError(f"{where}: {e}") from None


def parse(headers: Mapping[str, str], body: bytes) -> list[BaseCloudEvent]:
    """The request's events (one, or a batch); MalformedEventError names the first problem.

    ``headers`` must have lower-case names. The SDK alone would fill in a missing ``id`` or accept
    an array as one event, so the required attributes and the shapes are checked here first.
    """
    media = _media_type(headers)
    if media in (STRUCTURED, BATCH):
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise MalformedEventError(f"body is not JSON: {e}") from None
        if media == STRUCTURED:
            return [_structured(doc, "event")]
        if not isinstance(doc, list):
            raise MalformedEventError(f"a batch is a JSON array of events, not {type(doc).__name__}")
        if len(doc) > MAX_BATCH:
            raise MalformedEventError(f"a batch holds at most {MAX_BATCH} events, not {len(doc)}")
        return [_structured(item, f"event {i}") for i, item in enumerate(doc)]
    if "ce-specversion" not in headers:
        raise MalformedEventError(
            f"not a CloudEvent: no ce-specversion header (binary mode) and content type {media or 'none'!r} is"
            f" neither {STRUCTURED} nor {BATCH}"
        )
    missing = [a for a in REQUIRED if not headers.get(f"ce-{a}")]
    if missing:
        raise MalformedEventError(f"missing required header(s) {', '.join('ce-' + a for a in missing)}")
    try:
        return [from_binary_event(HTTPMessage(dict(headers), body))]
    except (BaseCloudEventException, ValueError) as e:
        raise MalformedEventError(str(e)) from None


def reply_event(headers: Mapping[str, str], body: bytes) -> BaseCloudEvent | None:
    """The CloudEvent a Function answered with, in binary or structured mode (``headers`` with
    lower-case names); None when the answer is not a CloudEvent at all, MalformedEventError when it
    tries to be one (a ``ce-specversion`` header, a CloudEvents content type) and is not."""
    media = _media_type(headers)
    if media != STRUCTURED and "ce-specversion" not in headers:
        return None
    return parse(headers, body)[0]
