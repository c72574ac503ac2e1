"""gRPC through the gateway with the official grpcio client: the four kinds of call, a session kept on
its instance across two replicas, deadlines and cancellation passed through, failures as gRPC status.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from gwhelpers import function
from test_examples import example_function

SERVICE = "/voltgrid.test.Echo/"


def metadata(session: str | None = None, fn: str = "default/grpc") -> tuple[tuple[str, str], ...]:
    pairs = [("x-voltgrid-function", fn)]
    if session is not None:
        pairs.append(("x-voltgrid-session", session))
    return tuple(pairs)


def channel(url: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(url.removeprefix("http://"))


async def unary(ch: grpc.aio.Channel, method: str, payload: bytes, **kwargs: Any) -> bytes:
    call = ch.unary_unary(SERVICE + method)
    answer: bytes = await call(payload, **kwargs)
    return answer


@pytest.fixture
async def two(replicas) -> AsyncIterator[tuple[grpc.aio.Channel, grpc.aio.Channel]]:
    a, b = await replicas([function("grpc", "grpc_echo.py", affinity="Header")], n=2)
    async with channel(a.url) as ca, channel(b.url) as cb:
        yield ca, cb


async def test_a_session_stays_on_its_instance_through_either_replica(two) -> None:
    ca, cb = two
    first = (await unary(ca, "Unary", b"hi", metadata=metadata("s-grpc"))).decode()
    instance, n, _ = first.split(":")
    assert n == "1"
    second = (await unary(cb, "Unary", b"again", metadata=metadata("s-grpc"))).decode()
    assert second == f"{instance}:2:again"
    other = (await unary(cb, "Unary", b"x", metadata=metadata("s-other"))).decode()
    assert other.split(":")[0] != instance


async def test_the_streaming_kinds(two) -> None:
    ca, cb = two
    md = metadata("s-streams")
    replies = [r async for r in cb.unary_stream(SERVICE + "Stream")(b"3", metadata=md)]
    assert len(replies) == 3

    async def parts() -> AsyncIterator[bytes]:
        for p in (b"a", b"b", b"c"):
            yield p

    assert await ca.stream_unary(SERVICE + "Collect")(parts(), metadata=md) == b"a+b+c"
    call = cb.stream_stream(SERVICE + "Chat")(metadata=md)
    for word in (b"one", b"two"):
        await call.write(word)
        assert (await call.read()).endswith(b":" + word)
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF


async def test_a_deadline_reaches_the_instance_and_comes_back_as_deadline_exceeded(two) -> None:
    ca, _ = two
    md = metadata("s-deadline")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await unary(ca, "Sleep", b"5", metadata=md, timeout=0.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    for _ in range(50):  # the instance's handler was cancelled, not left running
        if await unary(ca, "Cancelled", b"", metadata=md) == b"5":
            break
    else:
        pytest.fail("the instance never saw the call cancelled")


async def test_gateway_failures_are_grpc_status(two) -> None:
    ca, _ = two
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await unary(ca, "Unary", b"x", metadata=metadata("s-1", fn="default/nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await unary(ca, "Unary", b"x", metadata=metadata("Not A Session Id!"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_the_grpc_example_through_two_replicas(replicas) -> None:
    a, b = await replicas([example_function("grpc-echo.yaml")], n=2)
    md = metadata("s-example", fn="default/grpc-echo")
    async with channel(a.url) as ca, channel(b.url) as cb:
        first = (await ca.unary_unary("/voltgrid.example.Echo/Unary")(b"hi", metadata=md)).decode()
        instance = first.split(":")[0]
        assert first == f"{instance}:1:hi"
        assert (await cb.unary_unary("/voltgrid.example.Echo/Unary")(b"yo", metadata=md)).decode() == f"{instance}:2:yo"
        call = cb.stream_stream("/voltgrid.example.Echo/Chat")(metadata=md)
        await call.write(b"ping")
        assert await call.read() == instance.encode() + b":ping"
        await call.done_writing()


async def test_a_call_whose_owner_replica_died_is_served_by_the_survivor(replicas) -> None:
    a, b = await replicas([function("grpc", "grpc_echo.py", affinity="Header")], n=2)
    session = next(f"s-{i}" for i in range(100) if a.gateway.membership.owner(f"s-{i}") == b.url)
    await b.kill()
    async with channel(a.url) as ca:
        answer = (await unary(ca, "Unary", b"still", metadata=metadata(session), timeout=30)).decode()
    assert answer.endswith(":1:still")  # woken here, on a new instance, after one failed connect
    assert b.url not in a.gateway.membership.members  # suspected, as the HTTP hop does
