"""JWT bearer validation (PyJWT) for functions and the Session API.

Keys are split by type so that an asymmetric public key can never be used as an HMAC secret
(the classic algorithm-confusion attack): PEM keys verify RS/ES/PS/EdDSA tokens only, other keys
HS tokens only. A PEM key is tried only for the algorithms of its own type (RSA: RS/PS, EC: ES,
Ed25519/Ed448: EdDSA), so that a policy may mix key types: a token is checked against the keys
that fit its ``alg``. Missing or invalid token: 401 with ``WWW-Authenticate``; valid but lacking the
required scope: 403.
"""

from __future__ import annotations

from typing import Any, Final

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

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
                self._keys.append((key, _pem_algorithms(key)))
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
        try:
            alg = jwt.get_unverified_header(token).get("alg")
        except jwt.PyJWTError:
            raise GatewayError(401, "invalid_token", "invalid token: malformed header", invalid) from None
        candidates = [(key, algorithms) for key, algorithms in self._keys if alg in algorithms]
        if not candidates:
            error = f"no key of this policy verifies algorithm {alg!r}"
        for key, algorithms in candidates:
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
            except (jwt.InvalidAlgorithmError, jwt.InvalidKeyError):
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


def _pem_algorithms(pem: str) -> list[str]:
    """The algorithms a PEM public key can verify (all asymmetric ones if its type is not recognised)."""
    try:
        key = load_pem_public_key(pem.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return ASYMMETRIC_ALGORITHMS
    if isinstance(key, rsa.RSAPublicKey):
        return [a for a in ASYMMETRIC_ALGORITHMS if a.startswith(("RS", "PS"))]
    if isinstance(key, ec.EllipticCurvePublicKey):
        return [a for a in ASYMMETRIC_ALGORITHMS if a.startswith("ES")]
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return ["EdDSA"]
    return ASYMMETRIC_ALGORITHMS
