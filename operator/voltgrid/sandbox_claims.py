"""Signed claims: how the gateway hands a warm sandbox to a claimant without a shared secret.

A warm sandbox of a ``SandboxTemplate``'s pool waits for one claim. The claim must come from the
gateway, yet the gateway must not read the tenant's Secrets and nothing may be written to etcd on
the hot path. So the gateway signs each claim with an Ed25519 key of its own (a Secret in the
release's namespace, mounted into the gateway), and every warm sandbox is started with the matching
*public* key in its environment (harmless to anyone who can read the pod spec) and with the sandbox
id pre-minted for it. A claim names that id, the SHA-256 of the claimant's token, the env to add and
when it was signed; the agent accepts exactly one claim, for its own id, signed within
:data:`MAX_CLAIM_AGE`. Anyone else — a tenant reading the pod spec, another sandbox, a replayed
claim for another pod — holds nothing the agent accepts.

The format is two base64url parts joined by a dot (``payload.signature``), the payload compact
JSON. Both the gateway (signing) and the in-sandbox agent (verifying) import this module, which
needs only the standard library and ``cryptography``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

#: A claim older (or younger: clock skew) than this many seconds is refused.
MAX_CLAIM_AGE: Final = 300.0
#: Claims are small; anything larger is not one of ours.
MAX_CLAIM_CHARS: Final = 256 * 1024


class ClaimError(ValueError):
    """A claim that does not verify; the message says why (it is the client's, not a secret)."""


@dataclass(frozen=True)
class Claim:
    sandbox_id: str
    token_sha256: str
    env: dict[str, str]
    issued_at: float


def token_digest(token: str) -> str:
    """The hex SHA-256 of a sandbox token: what claims and pod annotations carry, never the token."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str, digest: str) -> bool:
    """Whether ``token`` hashes to ``digest`` (constant time)."""
    return hmac.compare_digest(token_digest(token).encode(), digest.encode())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_signing_key(pem: bytes) -> Ed25519PrivateKey:
    """The gateway's key from a PEM file (PKCS#8, as ``openssl genpkey -algorithm ed25519`` or Helm's
    ``genPrivateKey "ed25519"`` write it)."""
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ClaimError("the sandbox claim key must be an Ed25519 private key (PEM, PKCS#8)")
    return key


def public_key_text(key: Ed25519PrivateKey) -> str:
    """The public half as it goes into a warm sandbox's environment: 32 raw bytes, base64url."""
    return _b64(key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def load_verify_key(text: str) -> Ed25519PublicKey:
    try:
        raw = _unb64(text.strip())
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, binascii.Error) as exc:
        raise ClaimError(f"the claim key is not a base64url Ed25519 public key: {exc}") from None


def sign_claim(
    key: Ed25519PrivateKey, sandbox_id: str, token_sha256: str, env: Mapping[str, str], issued_at: float
) -> str:
    payload = json.dumps(
        {"sid": sandbox_id, "tok": token_sha256, "env": dict(env), "iat": issued_at}, separators=(",", ":")
    ).encode()
    return f"{_b64(payload)}.{_b64(key.sign(payload))}"


def verify_claim(key: Ed25519PublicKey, claim: str, sandbox_id: str, now: float) -> Claim:
    """The claim, if ``key`` signed it for ``sandbox_id`` within :data:`MAX_CLAIM_AGE` of ``now``."""
    if len(claim) > MAX_CLAIM_CHARS or claim.count(".") != 1:
        raise ClaimError("a claim is 'payload.signature', two base64url parts")
    payload_text, signature_text = claim.split(".")
    try:
        payload, signature = _unb64(payload_text), _unb64(signature_text)
    except (ValueError, binascii.Error):
        raise ClaimError("a claim's parts must be base64url") from None
    try:
        key.verify(signature, payload)
    except InvalidSignature:
        raise ClaimError("the claim's signature does not verify with this pool's claim key") from None
    fields = json.loads(payload)  # signed by the gateway: well-formed unless the key leaked
    if fields.get("sid") != sandbox_id:
        raise ClaimError(f"the claim is for sandbox {fields.get('sid')!r}, not this one")
    issued_at = float(fields["iat"])
    if abs(now - issued_at) > MAX_CLAIM_AGE:
        raise ClaimError(f"the claim was signed {now - issued_at:.0f} s ago; claims are good for {MAX_CLAIM_AGE:g} s")
    return Claim(sandbox_id, str(fields["tok"]), dict(fields.get("env") or {}), issued_at)
