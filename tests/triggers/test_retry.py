"""The redelivery policy as a table: exponential backoff capped, the verdict per attempt and status."""

from __future__ import annotations

import pytest

from voltgrid.api.triggers import Retry
from voltgrid.triggers.retry import Backoff, Verdict

POLICY = Backoff.of(Retry(max_retries=3, min_backoff="1s", max_backoff="5s"))


@pytest.mark.parametrize(("attempt", "delay"), [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (10, 5.0)])
def test_delay_doubles_up_to_the_cap(attempt: int, delay: float) -> None:
    assert POLICY.delay(attempt) == delay


@pytest.mark.parametrize(
    ("attempt", "status", "verdict"),
    [
        (1, 200, Verdict.ACK),
        (1, 204, Verdict.ACK),
        (4, 202, Verdict.ACK),  # a late success is still a success
        (1, 500, Verdict.RETRY),
        (1, 404, Verdict.RETRY),  # e.g. the Function is being created: the gateway answers 404 for now
        (1, None, Verdict.RETRY),  # no answer at all
        (3, 429, Verdict.RETRY),
        (4, 500, Verdict.DEAD_LETTER),  # the first delivery plus maxRetries=3 retries
        (4, None, Verdict.DEAD_LETTER),
        (1, 302, Verdict.RETRY),  # a redirect is not a delivery
    ],
)
def test_verdict(attempt: int, status: int | None, verdict: Verdict) -> None:
    assert POLICY.verdict(attempt, status) is verdict


def test_zero_retries_dead_letters_at_once() -> None:
    assert Backoff.of(Retry(max_retries=0)).verdict(1, 500) is Verdict.DEAD_LETTER
