"""A2A (Agent2Agent, JSON-RPC binding) session affinity: the protocol half, free of any HTTP framework.

An A2A conversation is a *context*: its ``contextId`` rides inside the JSON-RPC body (in
``params.message``), not in a header, and an agent keeps the context's history in its memory. So a
Function with affinity ``A2A`` makes one session per context, and the gateway must read the body to
route. Three kinds of request exist (:func:`request_routing`):

- a message that names a ``contextId``: that context's session;
- a request that names only a task (get, cancel, subscribe, push-notification configs, or a message
  continuing a task without its context): the context the task was seen in (:class:`TaskContexts`);
- anything else (a message opening a conversation, the extended agent card): no key, a new session.

The agent mints a new context's id, and every task id, in its answer, so the gateway learns them as
the answer passes: :func:`learn_from_result` reads a JSON answer, :class:`StreamScanner` an SSE one
chunk by chunk. Both are fed *before* the bytes go on to the client, so an id is known by the time the
client can use it. Both the 1.x method names (``SendMessage``, ``GetTask``, ...; answers wrapped as
``{"task": ...}``/``{"message": ...}``/``{"statusUpdate": ...}``) and the 0.3 ones (``message/send``,
``tasks/get``, ...; answers tagged with ``kind``) are understood: the a2a-sdk 1.x server speaks both.

Ids are opaque to the gateway, checked only as learned keys (:func:`is_learned_key`: visible ASCII, at
most 256 characters). An unusable body is an :class:`A2ARequestError` (HTTP 400, ``bad_a2a_request``)
that also carries the JSON-RPC error an A2A client understands; an unusable answer teaches nothing.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from voltgrid.gateway.errors import GatewayError
from voltgrid.registry.ids import is_learned_key

#: JSON-RPC error codes (JSON-RPC 2.0, section 5.1).
PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
INVALID_PARAMS: Final = -32602
#: A2A's code for an unknown task id (what the gateway answers for a task it never saw, if it answers).
TASK_NOT_FOUND: Final = -32001

#: Methods whose ``params.message`` carries ``contextId`` and ``taskId``.
MESSAGE_METHODS: Final = frozenset({"SendMessage", "SendStreamingMessage", "message/send", "message/stream"})
#: Methods whose ``params.id`` is a task id (1.x task calls; 0.3 task calls and push configs).
TASK_ID_METHODS: Final = frozenset(
    {
        "GetTask",
        "CancelTask",
        "SubscribeToTask",
        "tasks/get",
        "tasks/cancel",
        "tasks/resubscribe",
        "tasks/pushNotificationConfig/get",
        "tasks/pushNotificationConfig/list",
        "tasks/pushNotificationConfig/delete",
    }
)
#: Methods whose ``params.taskId`` is a task id (1.x push configs; 0.3 ``set``).
TASK_ID_FIELD_METHODS: Final = frozenset(
    {
        "CreateTaskPushNotificationConfig",
        "GetTaskPushNotificationConfig",
        "ListTaskPushNotificationConfigs",
        "DeleteTaskPushNotificationConfig",
        "tasks/pushNotificationConfig/set",
    }
)
#: Methods whose ``params.contextId`` (optional) filters by context.
CONTEXT_METHODS: Final = frozenset({"ListTasks"})
#: The wrappers of the 1.x answers (``SendMessageResponse``, ``StreamResponse``: one of these keys).
RESULT_WRAPPERS: Final = ("task", "message", "statusUpdate", "artifactUpdate")

#: Bytes of one SSE event's data a :class:`StreamScanner` looks at; a larger event is passed on unread.
MAX_EVENT_BYTES: Final = 64 * 1024
#: Task ids a :class:`TaskContexts` remembers by default (per Function): about 6 MB with UUID ids.
DEFAULT_TASK_CAPACITY: Final = 20_000


class A2ARequestError(GatewayError):
    """A request body the gateway cannot route: HTTP 400 ``bad_a2a_request``, plus the JSON-RPC
    error (``rpc_code``, echoing ``request_id``) for answering in the protocol the client speaks."""

    def __init__(self, message: str, rpc_code: int, request_id: str | int | None = None) -> None:
        super().__init__(400, "bad_a2a_request", message)
        self.rpc_code = rpc_code
        self.request_id = request_id

    def jsonrpc_body(self) -> bytes:
        """The JSON-RPC 2.0 error response for this request."""
        return jsonrpc_error_body(self.request_id, self.rpc_code, self.message)


def jsonrpc_error_body(request_id: str | int | None, code: int, message: str) -> bytes:
    """A JSON-RPC 2.0 error response: A2A clients read an error from it (the SDK maps ``code`` to its
    exception types, e.g. :data:`TASK_NOT_FOUND`), where a gateway error body is only an HTTP failure."""
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}).encode()


@dataclass(frozen=True, slots=True)
class A2ARequest:
    """Where a JSON-RPC request goes: its context when it names one, else its task's context, else
    a new session (``context_id`` and ``task_id`` both None)."""

    method: str
    context_id: str | None = None
    task_id: str | None = None


@dataclass(frozen=True, slots=True)
class Learned:
    """What an answer taught: the first ``contextId`` in it, and each task with its context."""

    context_id: str | None = None
    tasks: tuple[tuple[str, str], ...] = ()


NOTHING: Final = Learned()


def request_routing(body: bytes) -> A2ARequest:
    """The routing of one A2A JSON-RPC request body (a single request: A2A has no batches).

    Raises :class:`A2ARequestError` for a body that is not JSON, not a JSON-RPC request object, or
    carries an id of the wrong type or shape; methods it does not know route as new sessions.
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        reason = "nested too deeply" if isinstance(exc, RecursionError) else "not JSON"
        raise A2ARequestError(f"the A2A request body is {reason}", PARSE_ERROR) from None
    if not isinstance(document, dict):
        raise A2ARequestError("an A2A request is one JSON-RPC request object", INVALID_REQUEST)
    request_id = document.get("id")
    if not isinstance(request_id, (str, int)) or isinstance(request_id, bool):
        request_id = None
    method = document.get("method")
    if not isinstance(method, str):
        raise A2ARequestError("the JSON-RPC request has no method name", INVALID_REQUEST, request_id)
    params = document.get("params", {})
    if not isinstance(params, dict):
        raise A2ARequestError(f"{method}: params must be an object", INVALID_PARAMS, request_id)
    if method in MESSAGE_METHODS:
        message = params.get("message")
        if not isinstance(message, dict):
            raise A2ARequestError(f"{method}: params.message must be an object", INVALID_PARAMS, request_id)
        context_id = _request_id_field(message, "contextId", method, request_id)
        task_id = _request_id_field(message, "taskId", method, request_id)
        return A2ARequest(method, context_id, task_id)
    if method in TASK_ID_METHODS:
        return A2ARequest(method, task_id=_required_task(params, "id", method, request_id))
    if method in TASK_ID_FIELD_METHODS:
        return A2ARequest(method, task_id=_required_task(params, "taskId", method, request_id))
    if method in CONTEXT_METHODS:
        return A2ARequest(method, context_id=_request_id_field(params, "contextId", method, request_id))
    return A2ARequest(method)


def _request_id_field(obj: dict[str, object], field: str, method: str, request_id: str | int | None) -> str | None:
    """An optional id of a request: absent or empty is None (proto3 JSON omits empty strings)."""
    value = obj.get(field)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not is_learned_key(value):
        raise A2ARequestError(
            f"{method}: {field} must be a string of 1 to 256 visible ASCII characters", INVALID_PARAMS, request_id
        )
    return value


def _required_task(params: dict[str, object], field: str, method: str, request_id: str | int | None) -> str:
    task_id = _request_id_field(params, field, method, request_id)
    if task_id is None:
        raise A2ARequestError(f"{method}: params.{field} (the task id) is required", INVALID_PARAMS, request_id)
    return task_id


def learn_from_result(body: bytes) -> Learned:
    """What one JSON-RPC response body teaches (a Task, a Message or a stream event as its result).

    The gateway buffers a JSON answer to call this, so it should only do so up to a bound (e.g. its
    ``max_body_bytes``) and learn before the last bytes reach the client; anything unusable (an error
    response, bad JSON, ids of the wrong shape) teaches nothing.
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return NOTHING
    if not isinstance(document, dict):
        return NOTHING
    return _learn(document.get("result"))


def _learn(result: object) -> Learned:
    if not isinstance(result, dict):
        return NOTHING
    for wrapper in RESULT_WRAPPERS:  # 1.x: a one-of object around the Task, Message or event
        inner = result.get(wrapper)
        if isinstance(inner, dict):
            result = inner
            break
    context_id = result.get("contextId")
    if not isinstance(context_id, str) or not is_learned_key(context_id):
        return NOTHING
    task_id = result.get("taskId")  # a Message or a status/artifact update names its task so
    if task_id is None and "messageId" not in result:
        task_id = result.get("id")  # a Task is its own id
    if isinstance(task_id, str) and is_learned_key(task_id):
        return Learned(context_id, ((task_id, context_id),))
    return Learned(context_id)


class StreamScanner:
    """Learns the ids of an SSE answer (``SendStreamingMessage``, ``SubscribeToTask``) as it passes.

    Feed each chunk to :meth:`feed` before relaying it unchanged; events may split anywhere and end
    lines with CRLF, LF or CR. Memory is bounded: of each event at most :data:`MAX_EVENT_BYTES` of data
    is kept, and a larger event (a big artifact) is not read at all (its task was announced by an
    earlier, small event). The first ``contextId`` is reported once, and each task id when it first
    appears (or appears again after another task's event).
    """

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        self._line = bytearray()
        self._line_overflow = False
        self._data = bytearray()
        self._has_data = False
        self._event_overflow = False
        self._after_cr = False
        self._context_seen = False
        self._last_task: str | None = None

    def feed(self, chunk: bytes) -> Learned:
        """What the events completed by ``chunk`` taught that was not reported before."""
        if not chunk:
            return NOTHING
        context_id: str | None = None
        tasks: list[tuple[str, str]] = []
        start = 0
        if self._after_cr and chunk[:1] == b"\n":
            start = 1  # the LF of a CRLF split between chunks
        self._after_cr = False
        size = len(chunk)
        next_lf, next_cr = chunk.find(b"\n", start), chunk.find(b"\r", start)
        while start < size:
            if 0 <= next_lf < start:
                next_lf = chunk.find(b"\n", start)
            if 0 <= next_cr < start:
                next_cr = chunk.find(b"\r", start)
            end = min(next_lf if next_lf >= 0 else size, next_cr if next_cr >= 0 else size)
            self._append_line(chunk, start, end)
            if end == size:
                break
            learned = self._line_done()
            if learned is not None:
                if learned.context_id is not None and not self._context_seen:
                    self._context_seen = True
                    context_id = learned.context_id
                for task in learned.tasks:
                    if task[0] != self._last_task:
                        self._last_task = task[0]
                        tasks.append(task)
            start = end + 1
            if end == next_cr:
                if start == size:
                    self._after_cr = True
                elif start == next_lf:
                    start += 1
        return Learned(context_id, tuple(tasks)) if context_id is not None or tasks else NOTHING

    def _append_line(self, chunk: bytes, start: int, end: int) -> None:
        """Add ``chunk[start:end]`` to the current line, keeping at most what an event may hold."""
        room = self._max + len(b"data: ") - len(self._line)
        if end - start > room:
            self._line_overflow = True
            end = start + max(room, 0)
        if end > start:
            self._line += chunk[start:end]

    def _line_done(self) -> Learned | None:
        """End the current line; at a blank line, the event it ends and what its data teaches."""
        line, overflow = bytes(self._line), self._line_overflow
        self._line.clear()
        self._line_overflow = False
        if not line and not overflow:
            return self._event_done()
        field, _, value = line.partition(b":")
        if field != b"data":
            return None
        if value.startswith(b" "):
            value = value[1:]
        separator = b"\n" if self._has_data else b""
        self._has_data = True
        if self._event_overflow:
            return None
        if overflow or len(self._data) + len(separator) + len(value) > self._max:
            self._event_overflow = True
            self._data.clear()
        else:
            self._data += separator + value
        return None

    def _event_done(self) -> Learned | None:
        data, usable = bytes(self._data), self._has_data and not self._event_overflow
        self._data.clear()
        self._has_data = self._event_overflow = False
        return learn_from_result(data) if usable else None


class TaskContexts:
    """Task id -> context id for the requests that name only a task, least recently used out first.

    Bounded by ``capacity`` rather than by time: a task outlives no context, and a forgotten task
    only costs its caller a new session (where the agent answers "task not found"). One per
    Function, in one replica: a replica learns only the tasks whose answers it relayed, so across
    replicas the entries must travel with the context's session (its backup and hand-off) or be
    registered with the owner of the task id.
    """

    def __init__(self, capacity: int = DEFAULT_TASK_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._contexts: OrderedDict[str, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._contexts)

    def remember(self, learned: Learned) -> None:
        """Record each task of ``learned`` with its context, evicting the least recently used."""
        for task_id, context_id in learned.tasks:
            self._contexts[task_id] = context_id
            self._contexts.move_to_end(task_id)
        while len(self._contexts) > self._capacity:
            self._contexts.popitem(last=False)

    def context_of(self, task_id: str) -> str | None:
        """The context ``task_id`` was seen in, or None when it is unknown (or was evicted)."""
        context_id = self._contexts.get(task_id)
        if context_id is not None:
            self._contexts.move_to_end(task_id)
        return context_id
