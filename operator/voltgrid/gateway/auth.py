"""JWT bearer validation (PyJWT) for functions and the Session API.

Keys are split by type so that an asymmetric public key can never be used as an HMAC secret
(the classic algorithm-confusion attack): PEM keys verify RS/ES/PS/EdDSA tokens only, other keys
HS tokens only. Missing or invalid token: 401 with ``WWW-Authenticate``; valid but lacking the
required scope: 403.
"""

from __future__ import annotations

from typing import Any, Final

import jwt

from voltgrid.gateway.errors import GatewayError
from voltgrid.gateway.settings import JwtPolicy

ASYMMETRIC_ALGORITHMS: Final = [
    "RS256",
    "RS384",
    "RS512",
    "ES256",
    "ES384",
    "ES512",
    "PS256",
    "PS384",
    "PS512",
    "EdDSA",
]
HMAC_ALGORITHMS: Final = ["HS256", "HS384", "HS512"]
#: Longest Authorization header value considered (a token beyond it is rejected unparsed).
MAX_TOKEN_LENGTH: Final = 8192


class JwtVerifier:
    """Verifies bearer tokens against one :class:`JwtPolicy`."""

    def __init__(self, policy: JwtPolicy) -> None:
        self.policy = policy
        self._keys: list[tuple[Any, list[str]]] = []
        for key in policy.all_keys():
            if key.lstrip().startswith("-----BEGIN"):
                self._keys.append((key, ASYMMETRIC_ALGORITHMS))
            else:
                self._keys.append((key, HMAC_ALGORITHMS))
        if not self._keys:
            raise ValueError("a JWT policy needs at least one key")

    def verify(self, authorization: str | None) -> dict[str, Any]:
        """The token's claims, or a 401/403 :class:`GatewayError`."""
        challenge = {"WWW-Authenticate": 'Bearer realm="voltgrid"'}
        if not authorization:
            raise GatewayError(401, "unauthenticated", "a bearer token is required", challenge)
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_LENGTH:
            raise GatewayError(401, "unauthenticated", "expected 'Authorization: Bearer <token>'", challenge)
        invalid = {"WWW-Authenticate": 'Bearer realm="voltgrid", error="invalid_token"'}
        claims: dict[str, Any] | None = None
        error = "token signature does not match any key"
        for key, algorithms in self._keys:
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=algorithms,
                    audience=self.policy.audience,
                    issuer=self.policy.issuer,
                    leeway=self.policy.leeway,
                    options={"require": ["exp"], "verify_aud": self.policy.audience is not None},
                )
                break
            except jwt.InvalidSignatureError:
                continue
            except jwt.InvalidAlgorithmError:
                continue
            except jwt.PyJWTError as e:
                error = str(e) or type(e).__name__
                if not isinstance(e, jwt.DecodeError):
                    break
            except (ValueError, TypeError) as e:  # malformed key material or token parts
                error = f"malformed token: {type(e).__name__}"
        if claims is None:
            raise GatewayError(401, "invalid_token", f"invalid token: {error}", invalid)
        scope = self.policy.required_scope
        if scope is not None:
            granted = claims.get("scope", "")
            granted_set = set(granted.split()) if isinstance(granted, str) else set()
            if scope not in granted_set:
                raise GatewayError(403, "forbidden", f"the token lacks the scope {scope!r}")
        return claims
