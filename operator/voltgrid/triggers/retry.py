"""Redelivery policy: exponential backoff between attempts, the dead letter after ``maxRetries``.

Pure arithmetic so it is table-tested; the consumers own the sleeping. A message is retried in
place (held unacknowledged by this replica) rather than requeued at the tail: that keeps the
order of events sharing a session key, which a requeue would break.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final

from voltgrid.api.common import parse_duration
from voltgrid.api.triggers import Retry

BACKOFF_FACTOR: Final = 2.0


class Verdict(Enum):
    ACK = "ack"  # the Function answered 2xx: acknowledge to the broker
    RETRY = "retry"  # sleep backoff.delay(attempt), then POST again
    DEAD_LETTER = "dead-letter"  # retries exhausted: move to the dead letter, then acknowledge


@dataclass(frozen=True, slots=True)
class Backoff:
    max_retries: int
    min_delay: float
    max_delay: float

    @classmethod
    def of(cls, retry: Retry) -> Backoff:
        return cls(
            retry.max_retries,
            parse_duration(retry.min_backoff).total_seconds(),
            parse_duration(retry.max_backoff).total_seconds(),
        )

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1 = the first delivery)."""
        return min(self.max_delay, self.min_delay * BACKOFF_FACTOR ** (attempt - 1))

    def verdict(self, attempt: int, status: int | None) -> Verdict:
        """What to do after attempt ``attempt`` got ``status`` (None: no answer at all)."""
        if status is not None and 200 <= status < 300:
            return Verdict.ACK
        return Verdict.RETRY if attempt <= self.max_retries else Verdict.DEAD_LETTER
