"""Project-wide pytest fixtures (tests/ and e2e/).

``_no_stray_event_loop`` works around looptime 0.9 with pytest-asyncio 1.x: looptime's
``pytest_pyfunc_call`` calls ``policy.get_event_loop()`` for *sync* tests too, which creates an event
loop nobody closes; with ``filterwarnings = error`` its ResourceWarning fails the run. Giving each
sync test a loop that we close ourselves keeps the run clean.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _no_stray_event_loop(request: pytest.FixtureRequest) -> Iterator[None]:
    if inspect.iscoroutinefunction(request.function):
        yield
        return
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield
    finally:
        asyncio.set_event_loop(None)
        loop.close()
