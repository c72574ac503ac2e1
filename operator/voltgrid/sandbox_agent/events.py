"""The events of an execution, shared by every language's context (one NDJSON line each)."""

from __future__ import annotations

import time
from typing import Any, Final

Event = dict[str, Any]
INTERRUPT_GRACE: Final = 5.0
"""How long an interrupted execution may take to stop before its context is restarted."""


def end(status: str, count: int, started: float) -> Event:
    """The last event of every execution."""
    return {
        "type": "end",
        "status": status,
        "execution_count": count,
        "duration_ms": round((time.monotonic() - started) * 1000, 3),
    }


def timeout_error(limit: float) -> Event:
    return {
        "type": "error",
        "name": "TimeoutError",
        "value": f"execution exceeded its timeout of {limit:g} s and was interrupted",
        "traceback": [],
    }
