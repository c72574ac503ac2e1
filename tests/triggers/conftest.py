"""Trigger fixtures: an HTTP sink standing in for the gateway, and real brokers (tests/brokers.py)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from trighelpers import Sink

from brokers import INSTALL_HINT, Broker, rabbitmq_available, rabbitmq_server, redis_available, redis_server
from voltgrid.triggers.dispatch import Dispatcher


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    s = Sink()
    app = web.Application()
    app.router.add_post("/{tail:.*}", s.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    s.url = f"http://127.0.0.1:{port}"
    try:
        yield s
    finally:
        if s.hold is not None:
            s.hold.set()
        await runner.cleanup()


@pytest.fixture
async def dispatcher() -> AsyncIterator[Dispatcher]:
    async with aiohttp.ClientSession() as http:
        yield Dispatcher(http, attempt_timeout=10)


def _broker_or_skip(available: bool) -> None:
    if not available:
        if os.environ.get("CI"):
            pytest.fail(f"the trigger tests need real brokers: {INSTALL_HINT}")
        pytest.skip(f"no broker installed: {INSTALL_HINT}")


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    _broker_or_skip(rabbitmq_available())
    with rabbitmq_server(Path(tmp_path_factory.mktemp("rabbitmq"))) as broker:
        yield broker


@pytest.fixture(scope="session")
def redis_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    _broker_or_skip(redis_available())
    with redis_server(Path(tmp_path_factory.mktemp("redis"))) as broker:
        yield broker
