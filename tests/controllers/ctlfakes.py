"""Test data and helpers for the controller tests (objects as the apiserver would store them)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import kmock

EPOCH = datetime(2030, 1, 1, tzinfo=UTC)
NS = "team-a"
FUNCTIONS = "voltgrid.dev/v1alpha1/functions"
SANDBOXES = "voltgrid.dev/v1alpha1/sandboxes"
SESSIONS = "voltgrid.dev/v1alpha1/sessions"
TEMPLATES = "voltgrid.dev/v1alpha1/sandboxtemplates"
SECRETS = "v1/secrets"
PODS = "v1/pods"
NETPOLS = "networking.k8s.io/v1/networkpolicies"
RUNTIMECLASSES = "node.k8s.io/v1/runtimeclasses"
NODES = "v1/nodes"
EVENTS = "v1/events"
#: Seconds (loop time) a condition awaited by :func:`eventually` may take.
EVENTUALLY_S = 30.0


def virtual_now() -> datetime:
    """Wall time that follows the event loop's (virtual, with looptime) clock."""
    return EPOCH + timedelta(seconds=asyncio.get_running_loop().time())


def function(name: str = "echo", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "voltgrid.dev/v1alpha1",
        "kind": "Function",
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 1},
        "spec": {"image": "echo:1", **spec},
    }


def sandbox(name: str = "sbx", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "voltgrid.dev/v1alpha1",
        "kind": "Sandbox",
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": f"uid-{name}",
            "generation": 1,
            "creationTimestamp": EPOCH.isoformat(),
        },
        "spec": {"image": "python:3.12", "port": 8888, **spec},
    }


def add_node(api: kmock.KubernetesEmulator, name: str = "node-1", **labels: str) -> None:
    api.objects[NODES, None, name] = {"metadata": {"name": name, "labels": labels}}


def add_runtime_class(api: kmock.KubernetesEmulator, name: str, handler: str, **selector: str) -> None:
    body: dict[str, Any] = {"metadata": {"name": name}, "handler": handler}
    if selector:
        body["scheduling"] = {"nodeSelector": selector}
    api.objects[RUNTIMECLASSES, None, name] = body


def stored(api: kmock.KubernetesEmulator, resource: str, name: str, namespace: str | None = NS) -> dict[str, Any]:
    return dict(api.objects[resource, namespace, name])


def names(api: kmock.KubernetesEmulator, resource: str) -> list[str]:
    return sorted(
        name for (res, _, name), obj in api.objects.items() if res == kmock.resource(resource) and not obj.deleted
    )


async def eventually(check: Callable[[], bool]) -> None:
    """Wait (in the loop's time) until ``check()`` holds; fail the test when it never does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + EVENTUALLY_S
    while not check():
        assert loop.time() < deadline, "condition never held"
        await asyncio.sleep(0.05)
