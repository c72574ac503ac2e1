"""A2A affinity, the protocol layer: which key a JSON-RPC body routes on, what an answer teaches
(JSON, or SSE cut anywhere), the bounded task map; hostile bodies are a 400, never a crash.

The cases follow what the a2a-sdk 1.x client and server put on the wire (both method generations);
test_a2a_agent.py checks the same functions against the bytes of a real SDK conversation.
"""

from __future__ import annotations

import json

import pytest
from a2a.utils.errors import JSON_RPC_ERROR_CODE_MAP, TaskNotFoundError
from hypothesis import given, settings, strategies

from voltgrid.gateway.a2a import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    PARSE_ERROR,
    TASK_NOT_FOUND,
    A2ARequest,
    A2ARequestError,
    Learned,
    StreamScanner,
    TaskContexts,
    jsonrpc_error_body,
    learn_from_result,
    request_routing,
)

C, T = "92f465c7-ae9f-4358-8d96-0474c1d24db2", "cf1ffb09-be15-4e50-855a-564b61300957"


def rpc(method: str, params: object) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": "r1", "method": method, "params": params}).encode()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (rpc("SendMessage", {"message": {"messageId": "m", "parts": []}}), A2ARequest("SendMessage")),
        (rpc("SendMessage", {"message": {"contextId": C}}), A2ARequest("SendMessage", C)),
        (
            rpc("SendStreamingMessage", {"message": {"contextId": C, "taskId": T}}),
            A2ARequest("SendStreamingMessage", C, T),
        ),
        (rpc("SendMessage", {"message": {"taskId": T}}), A2ARequest("SendMessage", task_id=T)),
        (rpc("SendMessage", {"message": {"contextId": "", "taskId": ""}}), A2ARequest("SendMessage")),
        (rpc("message/send", {"message": {"kind": "message", "contextId": C}}), A2ARequest("message/send", C)),
        (rpc("message/stream", {"message": {"taskId": T}}), A2ARequest("message/stream", task_id=T)),
        (rpc("GetTask", {"id": T, "historyLength": 2}), A2ARequest("GetTask", task_id=T)),
        (rpc("CancelTask", {"id": T}), A2ARequest("CancelTask", task_id=T)),
        (rpc("SubscribeToTask", {"id": T}), A2ARequest("SubscribeToTask", task_id=T)),
        (rpc("tasks/get", {"id": T}), A2ARequest("tasks/get", task_id=T)),
        (rpc("tasks/cancel", {"id": T}), A2ARequest("tasks/cancel", task_id=T)),
        (rpc("tasks/resubscribe", {"id": T}), A2ARequest("tasks/resubscribe", task_id=T)),
        (rpc("tasks/pushNotificationConfig/get", {"id": T}), A2ARequest("tasks/pushNotificationConfig/get", task_id=T)),
        (
            rpc("tasks/pushNotificationConfig/set", {"taskId": T}),
            A2ARequest("tasks/pushNotificationConfig/set", task_id=T),
        ),
        (
            rpc("CreateTaskPushNotificationConfig", {"taskId": T}),
            A2ARequest("CreateTaskPushNotificationConfig", task_id=T),
        ),
        (
            rpc("DeleteTaskPushNotificationConfig", {"taskId": T, "id": "p"}),
            A2ARequest("DeleteTaskPushNotificationConfig", task_id=T),
        ),
        (rpc("ListTasks", {"contextId": C}), A2ARequest("ListTasks", C)),
        (rpc("ListTasks", {}), A2ARequest("ListTasks")),
        (rpc("GetExtendedAgentCard", {}), A2ARequest("GetExtendedAgentCard")),
        (
            json.dumps({"jsonrpc": "2.0", "id": 7, "method": "GetExtendedAgentCard"}).encode(),
            A2ARequest("GetExtendedAgentCard"),
        ),
    ],
)
def test_request_routing(body: bytes, expected: A2ARequest) -> None:
    assert request_routing(body) == expected


@pytest.mark.parametrize(
    ("body", "rpc_code", "words"),
    [
        (b"", PARSE_ERROR, "not JSON"),
        (b"{", PARSE_ERROR, "not JSON"),
        (b"\xff\xfe\x00", PARSE_ERROR, "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, PARSE_ERROR, "nested too deeply"),
        (b'{"a": 1' + b"1" * 5000 + b"}", PARSE_ERROR, "not JSON"),  # beyond int's digit limit
        (b"[]", INVALID_REQUEST, "one JSON-RPC request object"),
        (b'[{"jsonrpc": "2.0", "method": "SendMessage"}]', INVALID_REQUEST, "one JSON-RPC request object"),
        (b'"SendMessage"', INVALID_REQUEST, "one JSON-RPC request object"),
        (b'{"jsonrpc": "2.0", "id": 1}', INVALID_REQUEST, "no method"),
        (b'{"jsonrpc": "2.0", "id": 1, "method": 3}', INVALID_REQUEST, "no method"),
        (rpc("SendMessage", []), INVALID_PARAMS, "params must be an object"),
        (rpc("SendMessage", {}), INVALID_PARAMS, "params.message must be an object"),
        (rpc("SendMessage", {"message": "hi"}), INVALID_PARAMS, "params.message must be an object"),
        (rpc("SendMessage", {"message": {"contextId": 5}}), INVALID_PARAMS, "contextId must be a string"),
        (rpc("SendMessage", {"message": {"contextId": ["x"]}}), INVALID_PARAMS, "contextId must be a string"),
        (rpc("SendMessage", {"message": {"contextId": "a b"}}), INVALID_PARAMS, "visible ASCII"),
        (rpc("SendMessage", {"message": {"contextId": "x" * 257}}), INVALID_PARAMS, "visible ASCII"),
        (rpc("message/send", {"message": {"taskId": {"id": T}}}), INVALID_PARAMS, "taskId must be a string"),
        (rpc("GetTask", {}), INVALID_PARAMS, "params.id (the task id) is required"),
        (rpc("GetTask", {"id": 12}), INVALID_PARAMS, "id must be a string"),
        (rpc("CreateTaskPushNotificationConfig", {"id": T}), INVALID_PARAMS, "params.taskId"),
        (rpc("ListTasks", {"contextId": True}), INVALID_PARAMS, "contextId must be a string"),
    ],
)
def test_unroutable_bodies_are_a_400_with_a_jsonrpc_error(body: bytes, rpc_code: int, words: str) -> None:
    with pytest.raises(A2ARequestError) as caught:
        request_routing(body)
    error = caught.value
    assert (error.status, error.code, error.rpc_code) == (400, "bad_a2a_request", rpc_code)
    assert words in error.message
    answer = json.loads(error.jsonrpc_body())
    assert answer["jsonrpc"] == "2.0" and answer["error"] == {"code": rpc_code, "message": error.message}
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        document = None
    assert answer["id"] == (document.get("id") if isinstance(document, dict) else None)


def test_a_task_the_gateway_never_saw_can_be_answered_as_the_agent_would() -> None:
    answer = json.loads(jsonrpc_error_body("r9", TASK_NOT_FOUND, "Task not found"))
    assert answer == {"jsonrpc": "2.0", "id": "r9", "error": {"code": TASK_NOT_FOUND, "message": "Task not found"}}
    assert JSON_RPC_ERROR_CODE_MAP[TaskNotFoundError] == TASK_NOT_FOUND  # the SDK client's TaskNotFoundError


JSON_VALUES = strategies.recursive(
    strategies.none() | strategies.booleans() | strategies.integers() | strategies.floats() | strategies.text(),
    lambda inner: strategies.lists(inner, max_size=4) | strategies.dictionaries(strategies.text(), inner, max_size=4),
    max_leaves=20,
)
METHODS = strategies.sampled_from(
    ["SendMessage", "message/stream", "GetTask", "tasks/pushNotificationConfig/set", "ListTasks"]
)


@settings(max_examples=300, deadline=None)
@given(
    strategies.binary(max_size=200)
    | strategies.builds(rpc, METHODS, JSON_VALUES)
    | JSON_VALUES.map(lambda v: json.dumps(v).encode())
)
def test_any_body_routes_or_is_a_bad_a2a_request(body: bytes) -> None:
    try:
        routing = request_routing(body)
    except A2ARequestError as error:
        assert error.status == 400 and error.rpc_code in (PARSE_ERROR, INVALID_REQUEST, INVALID_PARAMS)
    else:
        assert all(v is None or (isinstance(v, str) and v) for v in (routing.context_id, routing.task_id))


@settings(max_examples=300, deadline=None)
@given(strategies.binary(max_size=200) | JSON_VALUES.map(lambda v: json.dumps({"result": v}).encode()))
def test_any_answer_teaches_usable_ids_or_nothing(body: bytes) -> None:
    learned = learn_from_result(body)
    assert learned.context_id is None or learned.context_id.isprintable()
    assert all(context == learned.context_id for _, context in learned.tasks)


def result(value: object) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": "r1", "result": value}).encode()


TASK = {"id": T, "contextId": C, "status": {"state": "TASK_STATE_SUBMITTED"}}
MESSAGE = {"messageId": "m", "contextId": C, "role": "ROLE_AGENT", "parts": []}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (result({"task": TASK}), Learned(C, ((T, C),))),  # 1.x SendMessage
        (result(TASK), Learned(C, ((T, C),))),  # 1.x GetTask, CancelTask
        (result({"message": MESSAGE}), Learned(C)),  # a Message outside any task
        (result({"message": {**MESSAGE, "taskId": T}}), Learned(C, ((T, C),))),
        (result({"statusUpdate": {"taskId": T, "contextId": C, "status": {}}}), Learned(C, ((T, C),))),
        (result({"artifactUpdate": {"taskId": T, "contextId": C, "artifact": {}}}), Learned(C, ((T, C),))),
        (result({"artifacts": [], "contextId": C, "id": T, "kind": "task"}), Learned(C, ((T, C),))),  # 0.3, sorted keys
        (result({"kind": "message", **MESSAGE}), Learned(C)),
        (result({"kind": "status-update", "taskId": T, "contextId": C}), Learned(C, ((T, C),))),
        (result({"task": {"id": T}}), Learned()),  # no context: nothing to map the task to
        (result({"task": {**TASK, "id": "bad id"}}), Learned(C)),
        (result({"task": {**TASK, "contextId": 3}}), Learned()),
        (result({"tasks": [TASK]}), Learned()),  # ListTasks
        (
            json.dumps({"jsonrpc": "2.0", "id": "r1", "error": {"code": -32001, "message": "Task not found"}}).encode(),
            Learned(),
        ),
        (b"<html>", Learned()),
        (b"[1]", Learned()),
        (result(None), Learned()),
    ],
)
def test_learn_from_result(body: bytes, expected: Learned) -> None:
    assert learn_from_result(body) == expected


def sse(*results: object, newline: bytes = b"\r\n") -> bytes:
    return b"".join(b"data: " + result(r) + newline + newline for r in results)


STREAM = [
    {"task": TASK},
    {"statusUpdate": {"taskId": T, "contextId": C, "status": {"state": "TASK_STATE_WORKING"}}},
    {"artifactUpdate": {"taskId": T, "contextId": C, "artifact": {"parts": [{"text": "x" * 1000}]}}},
    {"statusUpdate": {"taskId": "t2", "contextId": "c2", "status": {"state": "TASK_STATE_COMPLETED"}}},
]


def scan(stream: bytes, sizes: list[int], max_event_bytes: int = 64 * 1024) -> Learned:
    """Feed ``stream`` in chunks of ``sizes`` (cycled): all that was reported, in order."""
    scanner, context, at, i = StreamScanner(max_event_bytes), None, 0, 0
    tasks: list[tuple[str, str]] = []
    while at < len(stream):
        learned = scanner.feed(stream[at : at + sizes[i % len(sizes)]])
        assert context is None or learned.context_id is None  # the context is reported once
        context = context or learned.context_id
        tasks.extend(learned.tasks)
        at, i = at + sizes[i % len(sizes)], i + 1
    return Learned(context, tuple(tasks))


@pytest.mark.parametrize("newline", [b"\r\n", b"\n", b"\r"], ids=["crlf", "lf", "cr"])
@pytest.mark.parametrize("sizes", [[1], [1, 0], [2], [3, 7], [64], [1 << 20]], ids=str)
def test_the_stream_scanner_finds_the_ids_however_the_stream_is_cut(newline: bytes, sizes: list[int]) -> None:
    assert scan(sse(*STREAM, newline=newline), sizes) == Learned(C, ((T, C), ("t2", "c2")))


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (b": ping\r\n\r\n" + sse(*STREAM[:1]), Learned(C, ((T, C),))),  # comments are skipped
        (b"event: x\nid: 1\nretry: 5\ndata:" + result({"task": TASK}) + b"\n\n", Learned(C, ((T, C),))),  # no space
        (
            b'data: {"jsonrpc": "2.0", "result":\ndata: {"task": ' + json.dumps(TASK).encode() + b"}}\n\n",
            Learned(C, ((T, C),)),
        ),
        (b"data: " + result({"task": TASK}) + b"\n", Learned()),  # an event is complete at its blank line only
        (b"data: not json\n\n" + sse(*STREAM[:2]), Learned(C, ((T, C),))),
        (
            sse({"artifactUpdate": {"taskId": T, "contextId": C, "artifact": {"x": "y" * 300}}}) + sse(STREAM[3]),
            Learned("c2", (("t2", "c2"),)),
        ),
        (
            b"data: " + b"z" * 1000 + b"\n" + b"data: " + result({"task": TASK}) + b"\n\n" + sse(STREAM[3]),
            Learned("c2", (("t2", "c2"),)),
        ),
    ],
)
def test_the_stream_scanner_reads_events_as_sse_defines_them(stream: bytes, expected: Learned) -> None:
    assert scan(stream, [5], max_event_bytes=256) == expected


def test_the_stream_scanner_keeps_a_bounded_amount_of_a_huge_event() -> None:
    scanner = StreamScanner(max_event_bytes=1024)
    scanner.feed(b"data: " + b"a" * 4096)
    for _ in range(1000):
        scanner.feed(b"b" * 4096 + b"\ndata: " + b"c" * 4096)
    assert len(scanner._line) + len(scanner._data) <= 2 * 1024 + 16
    assert scanner.feed(b"\n\n" + sse(STREAM[0])) == Learned(C, ((T, C),))


def test_task_contexts_forget_the_least_recently_used_task() -> None:
    tasks = TaskContexts(capacity=2)
    tasks.remember(Learned("c1", (("t1", "c1"),)))
    tasks.remember(Learned("c2", (("t2", "c2"),)))
    assert tasks.context_of("t1") == "c1"  # t1 is now the most recently used
    tasks.remember(Learned("c3", (("t3", "c3"),)))
    assert (tasks.context_of("t1"), tasks.context_of("t2"), tasks.context_of("t3"), len(tasks)) == ("c1", None, "c3", 2)
    with pytest.raises(ValueError, match="capacity"):
        TaskContexts(capacity=0)
