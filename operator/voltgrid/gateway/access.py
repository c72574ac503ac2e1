"""Who may use the Session API, and whose sessions a caller sees.

The Session API is closed by default, for every Function. A caller is one of:

* an **operator**: ``Authorization: Bearer <token>`` with one of the gateway's API tokens
  (settings ``api_tokens`` / ``api_token_files``, e.g. a mounted Secret). It sees and ends every
  session of every Function.
* a **client** of a Function with a JWT policy (the Session API's own ``api_jwt``, else the
  Function's): its valid token names a *principal* (issuer and subject). It sees, renews and ends
  only the sessions created with that principal, through the Session API or by invoking the
  Function, and may not invoke through another principal's session (404, as for an unknown id).

Anything else gets 401: a Function without a JWT policy has no per-client identity, so only an
operator may list or end its sessions. docs/operations.md says how a platform hands these out.
"""

from __future__ import annotations

import hmac
from typing import Any, Final

from voltgrid.gateway.auth import JwtVerifier
from voltgrid.gateway.errors import GatewayError

CHALLENGE: Final = {"WWW-Authenticate": 'Bearer realm="voltgrid"'}


class Caller:
    """An authenticated Session API caller: an operator (sees everything) or one principal."""

    __slots__ = ("principal",)

    def __init__(self, principal: str | None) -> None:
        #: None for an operator (API token); else the JWT principal whose sessions it may see.
        self.principal = principal

    def may_see(self, owner: str | None) -> bool:
        return self.principal is None or self.principal == owner


def principal_of(claims: dict[str, Any]) -> str:
    """The principal a JWT names: its issuer and subject (a token without ``sub`` is its issuer's)."""
    return f"{claims.get('iss', '')}|{claims.get('sub', '')}"


def bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def is_operator(authorization: str | None, tokens: list[str]) -> bool:
    """Whether the header carries one of the gateway's API tokens (constant-time comparison)."""
    token = bearer(authorization)
    if token is None:
        return False
    presented = token.encode()
    return any(hmac.compare_digest(presented, t.encode()) for t in tokens)


def session_api_caller(authorization: str | None, tokens: list[str], verifier: JwtVerifier | None) -> Caller:
    """The caller of a Session API request, or 401/403."""
    if is_operator(authorization, tokens):
        return Caller(None)
    if verifier is not None:
        return Caller(principal_of(verifier.verify(authorization)))
    raise GatewayError(
        401,
        "unauthenticated",
        "the Session API needs a credential: a gateway API token, or a token of the Function's JWT policy",
        CHALLENGE,
    )
