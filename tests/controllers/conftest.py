"""Fixtures: a kmock Kubernetes emulator and the controllers wired to it, in virtual time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import kmock
import kopf
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from ctlfakes import (
    EVENTS,
    FUNCTIONS,
    NETPOLS,
    NODES,
    NS,
    PODS,
    RUNTIMECLASSES,
    SANDBOXES,
    SECRETS,
    SESSIONS,
    TEMPLATES,
    virtual_now,
)

from voltgrid.controllers.core import Controllers
from voltgrid.controllers.main import build_controllers
from voltgrid.controllers.settings import OperatorSettings

#: The gateway's sandbox claim key as the chart mounts it into the operator (only its public half is used).
CLAIM_KEY_PEM = Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


@pytest.fixture
def api(kmock: kmock.KubernetesEmulator) -> kmock.KubernetesEmulator:
    verbs = {"list", "watch", "get", "create", "patch", "delete"}
    for resource, kind in (
        (FUNCTIONS, "Function"),
        (SANDBOXES, "Sandbox"),
        (SESSIONS, "Session"),
        (PODS, "Pod"),
        (NETPOLS, "NetworkPolicy"),
        (EVENTS, "Event"),
        (TEMPLATES, "SandboxTemplate"),
        (SECRETS, "Secret"),
    ):
        kmock.resources[resource] = kmock.ResourceInfo(kind=kind, namespaced=True, verbs=verbs, subresources={"status"})
    for resource, kind in (
        (RUNTIMECLASSES, "RuntimeClass"),
        (NODES, "Node"),
        ("v1/namespaces", "Namespace"),
        ("apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinition"),
    ):
        kmock.resources[resource] = kmock.ResourceInfo(kind=kind, namespaced=False, verbs=verbs)
    return kmock


@pytest.fixture
async def ctl(api: kmock.KubernetesEmulator, tmp_path: Path) -> AsyncIterator[Controllers]:
    key_file = tmp_path / "claim-key.pem"
    key_file.write_bytes(CLAIM_KEY_PEM)
    settings = OperatorSettings(
        namespaces=(NS,),
        sweep_interval=5,
        reap_grace=60,
        sandbox_delete_grace=30,
        sandbox_claim_key_file=str(key_file),
    )
    controllers = build_controllers(settings, clock=virtual_now)
    controllers.ctx.client.login(kopf.ConnectionInfo(server=str(api.url)))
    yield controllers
    await controllers.ctx.client.close()
