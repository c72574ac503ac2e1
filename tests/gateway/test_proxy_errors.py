"""How the relay classifies upstream failures: only a failure before anything was sent may be retried."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from voltgrid.gateway.errors import GatewayError
from voltgrid.gateway.proxy import Traffic, UpstreamConnectError, relay


class FailingSession:
    """Stands in for the pooled client session: every request fails with ``error``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    async def request(self, *args: Any, **kwargs: Any) -> Any:
        raise self.error


async def call(error: BaseException) -> None:
    await relay(
        FailingSession(error),  # type: ignore[arg-type]
        make_mocked_request("GET", "/"),
        "http://10.0.0.1:8080/",
        CIMultiDict(),
        Traffic(),
        max_body=1024,
        header_timeout=60.0,
        max_stream=60.0,
    )


async def test_connect_timeout_to_a_gone_instance_is_retryable() -> None:
    # A pod that is gone leaves an IP that answers nothing: the connect times out, nothing was sent.
    with pytest.raises(UpstreamConnectError):
        await call(aiohttp.ConnectionTimeoutError("connect timed out"))


async def test_no_response_in_time_is_a_504() -> None:
    with pytest.raises(GatewayError) as caught:
        await call(TimeoutError())
    assert caught.value.status == 504 and not isinstance(caught.value, UpstreamConnectError)
