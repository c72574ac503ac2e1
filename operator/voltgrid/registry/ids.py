"""Session and sandbox ids: minted as DNS labels (they become pod labels and storage sub-paths) and validated."""

from __future__ import annotations

import re
import secrets
from typing import Final

from voltgrid.api import constants

SESSION_ID_RE: Final = re.compile(constants.SESSION_ID_PATTERN)
#: Bytes of randomness in a minted id: 96 bits, so ids cannot be guessed or collide.
MINTED_ID_BYTES: Final = 12
#: Opaque affinity keys learned from instances (MCP session ids): visible ASCII, bounded.
MAX_LEARNED_KEY_LENGTH: Final = 256
_LEARNED_KEY_RE: Final = re.compile(r"^[\x21-\x7e]+$")


def mint_session_id() -> str:
    """A fresh random session id such as ``s-3f9a0c...`` (a valid DNS label)."""
    return "s-" + secrets.token_hex(MINTED_ID_BYTES)


def mint_sandbox_id() -> str:
    """A fresh random sandbox id such as ``sb-3f9a0c...`` (a DNS label: it is a pod label)."""
    return "sb-" + secrets.token_hex(MINTED_ID_BYTES)


def is_session_id(value: str) -> bool:
    """Whether ``value`` is a session id Voltgrid accepts (a DNS label of at most 63 characters)."""
    return len(value) <= constants.SESSION_ID_MAX_LENGTH and SESSION_ID_RE.match(value) is not None


def is_learned_key(value: str) -> bool:
    """Whether ``value`` may be an id minted by an instance (MCP ``Mcp-Session-Id``, SSE session)."""
    return 0 < len(value) <= MAX_LEARNED_KEY_LENGTH and _LEARNED_KEY_RE.match(value) is not None
