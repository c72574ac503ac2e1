"""A gRPC instance for gateway tests: the four kinds of call, answered with the instance's id.

Run as ``python grpc_echo.py``; listens (h2c) on $PORT. Methods of ``voltgrid.test.Echo``, bytes in
and out (generic handlers: no generated code): ``Unary`` answers ``<instance>:<n>:<payload>`` where n
counts this instance's calls of the session; ``Stream`` answers its payload's count of messages;
``Collect`` joins the messages it got; ``Chat`` echoes each message; ``Sleep`` sleeps for the payload's
seconds (a deadline test) and records whether it was cancelled in ``/cancelled`` (``Cancelled``).
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import AsyncIterator

import grpc

INSTANCE = os.environ.get("VOLTGRID_INSTANCE_ID", "?")
SERVICE = "voltgrid.test.Echo"
calls: Counter[str] = Counter()
cancelled: list[str] = []


def _session(context: grpc.aio.ServicerContext) -> str:
    return dict(context.invocation_metadata() or ()).get("x-voltgrid-session-id", "")


async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    session = _session(context)
    calls[session] += 1
    return f"{INSTANCE}:{calls[session]}:{request.decode()}".encode()


async def stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for i in range(int(request)):
        yield f"{INSTANCE}:{i}".encode()


async def collect(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
    return b"+".join([r async for r in requests])


async def chat(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    async for r in requests:
        yield INSTANCE.encode() + b":" + r


async def sleep(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    try:
        await asyncio.sleep(float(request))
    except asyncio.CancelledError:
        cancelled.append(request.decode())
        raise
    return b"woke"


async def was_cancelled(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return ",".join(cancelled).encode()


async def main() -> None:
    server = grpc.aio.server()
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Collect": grpc.stream_unary_rpc_method_handler(collect),
        "Chat": grpc.stream_stream_rpc_method_handler(chat),
        "Sleep": grpc.unary_unary_rpc_method_handler(sleep),
        "Cancelled": grpc.unary_unary_rpc_method_handler(was_cancelled),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"127.0.0.1:{os.environ['PORT']}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main())
