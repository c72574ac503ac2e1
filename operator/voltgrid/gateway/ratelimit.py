"""Per-client limits on minting sessions, so one client cannot spend a Function's instance budget.

Every new session (a request without a session id, an unknown id that would start one, a Session
API create) takes a token from the bucket of its (Function, client); a bucket holds
``session_mint_burst`` tokens and refills at ``session_mint_rate`` per second. An empty bucket
answers 429 with ``Retry-After``. The client is the JWT principal where the Function has a policy,
else the peer address of the connection (behind a proxy that is the proxy's: docs/operations.md).
Requests of existing sessions never take a token.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

from voltgrid.gateway.errors import GatewayError

#: Buckets kept before full (idle) ones are dropped: bounds memory under many distinct clients.
MAX_BUCKETS: Final = 100_000


class MintLimiter:
    """Token buckets by (function, client)."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._buckets: dict[tuple[str, str], tuple[float, float]] = {}

    def take(self, function: str, client: str) -> None:
        """Spend one token of ``client`` on ``function``, or raise 429 when none is left."""
        if self._burst == 0:
            return
        now = self._clock()
        key = (function, client)
        tokens, last = self._buckets.get(key, (float(self._burst), now))
        tokens = min(float(self._burst), tokens + (now - last) * self._rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            wait = math.ceil((1.0 - tokens) / self._rate)
            raise GatewayError(
                429,
                "too_many_sessions",
                f"this client started too many sessions of {function}; retry in {wait}s or reuse a session",
                {"Retry-After": str(wait)},
            )
        self._buckets[key] = (tokens - 1.0, now)
        if len(self._buckets) > MAX_BUCKETS:
            self._prune(now)

    def _prune(self, now: float) -> None:
        full = [k for k, (t, last) in self._buckets.items() if t + (now - last) * self._rate >= self._burst]
        for key in full:
            del self._buckets[key]
