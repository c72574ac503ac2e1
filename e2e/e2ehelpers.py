"""Helpers shared by the end-to-end tests (a plain module: pytest's prepend import mode puts e2e/ on
sys.path, as tests/gateway/gwhelpers.py is for the gateway tests)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

#: Seconds a wait gives the real cluster unless the caller says otherwise.
DEFAULT_WAIT_S: Final = 120.0
#: Seconds between two checks of a wait.
POLL_S: Final = 0.5
#: Seconds to build and import the Voltgrid image; a cold build installs its dependencies (~1 min).
IMAGE_BUILD_TIMEOUT_S: Final = 300
#: Seconds to build and import the sandbox image: a cold build (~2-3 min) and ~1.2 GB to import.
SANDBOX_IMAGE_BUILD_TIMEOUT_S: Final = 900


def wait_for(what: str, check: Callable[[], Any], timeout: float = DEFAULT_WAIT_S, interval: float = POLL_S) -> Any:
    """Call ``check`` until it returns something truthy, and return that; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
