"""What the gateway believes: JWT policies with keys of several types, and ``X-Forwarded-*``."""

from __future__ import annotations

import time

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from gwhelpers import FakeBackend, function

from voltgrid.gateway.auth import JwtVerifier
from voltgrid.gateway.errors import GatewayError
from voltgrid.gateway.settings import JwtPolicy

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> str:
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return public.decode()


def token(key: object, algorithm: str) -> str:
    return jwt.encode({"exp": int(time.time()) + 60}, key, algorithm=algorithm)  # type: ignore[arg-type]


MIXED = JwtPolicy(keys=[pem(RSA_KEY), pem(EC_KEY), pem(ED_KEY), "an-hmac-secret-of-thirty-two-bytes!"])


@pytest.mark.parametrize(
    ("key", "algorithm"),
    [(RSA_KEY, "RS256"), (RSA_KEY, "PS384"), (EC_KEY, "ES256"), (ED_KEY, "EdDSA"), (MIXED.keys[3], "HS256")],
)
def test_a_policy_with_keys_of_mixed_types_accepts_each_kind(key: object, algorithm: str) -> None:
    assert "exp" in JwtVerifier(MIXED).verify(f"Bearer {token(key, algorithm)}")


@pytest.mark.parametrize("keys", [[pem(RSA_KEY)], [pem(EC_KEY)], [pem(RSA_KEY), pem(ED_KEY)]])
def test_a_token_no_key_fits_is_401_with_a_readable_message(keys: list[str]) -> None:
    other = ec.generate_private_key(ec.SECP256R1()) if pem(EC_KEY) not in keys else RSA_KEY
    algorithm = "ES256" if isinstance(other, ec.EllipticCurvePrivateKey) else "RS256"
    with pytest.raises(GatewayError) as caught:
        JwtVerifier(JwtPolicy(keys=keys)).verify(f"Bearer {token(other, algorithm)}")
    assert caught.value.status == 401
    assert "generator" not in caught.value.message and " at 0x" not in caught.value.message


SPOOFED = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "bank.example", "X-Forwarded-For": "6.6.6.6"}


async def test_client_sent_forwarded_headers_are_replaced(replicas, upstream: str) -> None:
    (gw,) = await replicas([function("echo")], backend=FakeBackend(upstream))
    async with aiohttp.ClientSession() as http, http.get(f"{gw.url}/fn/default/echo/x", headers=SPOOFED) as r:
        seen = (await r.json())["headers"]
    host = gw.url.removeprefix("http://")
    assert (seen["X-Forwarded-Proto"], seen["X-Forwarded-Host"], seen["X-Forwarded-For"]) == ("http", host, "127.0.0.1")


async def test_a_trusted_proxy_keeps_its_forwarded_headers(replicas, upstream: str) -> None:
    (gw,) = await replicas([function("echo")], backend=FakeBackend(upstream), trusted_proxies=["127.0.0.0/8"])
    async with aiohttp.ClientSession() as http, http.get(f"{gw.url}/fn/default/echo/x", headers=SPOOFED) as r:
        seen = (await r.json())["headers"]
    assert (seen["X-Forwarded-Proto"], seen["X-Forwarded-Host"]) == ("https", "bank.example")
    assert seen["X-Forwarded-For"] == "6.6.6.6, 127.0.0.1"


async def test_the_owner_relays_what_the_first_replica_saw(replicas, upstream: str) -> None:
    a, b = await replicas([function("echo")], n=2, backend=FakeBackend(upstream))
    session = next(f"s-{i}" for i in range(100) if a.gateway.membership.owner(f"s-{i}") == b.url)
    headers = {**SPOOFED, "X-Voltgrid-Session": session}
    async with aiohttp.ClientSession() as http, http.get(f"{a.url}/fn/default/echo/x", headers=headers) as r:
        seen = (await r.json())["headers"]
    host = a.url.removeprefix("http://")
    assert (seen["X-Forwarded-Proto"], seen["X-Forwarded-Host"], seen["X-Forwarded-For"]) == ("http", host, "127.0.0.1")


async def test_headers_the_client_names_hop_by_hop_stop_at_the_gateway(replicas, upstream: str) -> None:
    (gw,) = await replicas([function("echo")], backend=FakeBackend(upstream))
    sent = {"Connection": "X-Hop-One, x-hop-two", "X-Hop-One": "1", "X-Hop-Two": "2", "X-Kept": "3", "TE": "trailers"}
    async with aiohttp.ClientSession() as http, http.get(f"{gw.url}/fn/default/echo/x", headers=sent) as r:
        seen = (await r.json())["headers"]
    assert seen["X-Kept"] == "3"
    assert not {"X-Hop-One", "X-Hop-Two", "TE"} & set(seen)
