"""An object the operator creates for a resource, refused by the apiserver, shows on that resource:
``Ready=False`` with reason ``<Kind>Rejected`` and the apiserver's message, and one Warning Event;
no traceback in the operator's log. Table-tested over every child kind the operator creates."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import kmock
import pytest
from ctlfakes import (
    EVENTS,
    FUNCTIONS,
    NETPOLS,
    NS,
    PODS,
    SANDBOXES,
    add_node,
    add_runtime_class,
    function,
    names,
    sandbox,
    stored,
)

from voltgrid.controllers.children import ChildRejected
from voltgrid.controllers.core import Controllers

GV = {"voltgrid.dev/gvisor": "true"}
INVALID = 'spec.egress[0].to[0].ipBlock.cidr: Invalid value: "10.0.0.0/99": must be a valid CIDR value'

Reconcile = Callable[[kmock.KubernetesEmulator, Controllers], Awaitable[None]]


async def sandbox_started(api: kmock.KubernetesEmulator, ctl: Controllers) -> None:
    if not names(api, SANDBOXES):
        api.objects[SANDBOXES, NS, "sbx"] = sandbox("sbx")
        await ctl.resync()
    await ctl.sandboxes.on_event(stored(api, SANDBOXES, "sbx"), None)


async def warm_pool_sized(api: kmock.KubernetesEmulator, ctl: Controllers) -> None:
    if not names(api, FUNCTIONS):
        api.objects[FUNCTIONS, NS, "echo"] = function(scaling={"warmPool": 1})
        await ctl.resync()
    await ctl.functions.on_event(stored(api, FUNCTIONS, "echo"), None)


@dataclass(frozen=True)
class Child:
    owner: str  # the owner's collection
    name: str  # the owner's name
    collection: str  # the child's collection
    kind: str
    reconcile: Reconcile

    def __str__(self) -> str:
        return f"{self.owner.rsplit('/', 1)[1]}-{self.kind}"


CHILDREN = [
    Child(SANDBOXES, "sbx", NETPOLS, "NetworkPolicy", sandbox_started),
    Child(SANDBOXES, "sbx", PODS, "Pod", sandbox_started),
    Child(FUNCTIONS, "echo", PODS, "Pod", warm_pool_sized),
]


def refuse(api: kmock.KubernetesEmulator, child: Child, code: int, reason: str) -> None:
    message = f'{child.kind} "x" is invalid: {INVALID}'
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }
    api[kmock.method.POST, kmock.resource(child.collection)] << code << body


def forget_refused(api: kmock.KubernetesEmulator, child: Child) -> None:
    """kmock stores a created object even when a reaction answered with an error; the apiserver
    would not have it: drop it, so the next try is refused again rather than a 409 (exists)."""
    for key in [k for k in api.objects if k[0] == kmock.resource(child.collection)]:
        del api.objects[key]


def ready(api: kmock.KubernetesEmulator, child: Child) -> dict[str, Any]:
    return next(c for c in stored(api, child.owner, child.name)["status"]["conditions"] if c["type"] == "Ready")


def warnings(api: kmock.KubernetesEmulator) -> list[tuple[str, str]]:
    events = [e.data for e in api[kmock.resource(EVENTS)][kmock.method.POST]]
    return [(e["type"], e["reason"]) for e in events]


@pytest.fixture
def gvisor(api: kmock.KubernetesEmulator) -> None:
    add_node(api, **GV)
    add_runtime_class(api, "gvisor", "runsc", **GV)


@pytest.mark.usefixtures("gvisor")
@pytest.mark.parametrize("child", CHILDREN, ids=str)
async def test_a_refused_child_becomes_a_condition_and_an_event(
    api: kmock.KubernetesEmulator, ctl: Controllers, caplog: pytest.LogCaptureFixture, child: Child
) -> None:
    refuse(api, child, 422, "Invalid")
    with caplog.at_level(logging.DEBUG):
        await child.reconcile(api, ctl)
    forget_refused(api, child)
    cond = ready(api, child)
    assert (cond["status"], cond["reason"]) == ("False", f"{child.kind}Rejected")
    assert INVALID in cond["message"] and "422" in cond["message"]
    if child.owner == SANDBOXES:
        assert stored(api, SANDBOXES, "sbx")["status"]["phase"] == "NotStarted"
    if child.kind == "NetworkPolicy":
        assert names(api, PODS) == []  # no pod runs without its egress policy
    assert ("Warning", f"{child.kind}Rejected") in warnings(api)
    assert not [r for r in caplog.records if r.exc_info], "a refusal is the resource's status, not a traceback"
    # The same spec reconciled again: the same refusal, no second Event.
    events = len(warnings(api))
    await child.reconcile(api, ctl)
    assert len(warnings(api)) == events


@pytest.mark.usefixtures("gvisor")
@pytest.mark.parametrize("child", CHILDREN, ids=str)
async def test_an_overloaded_apiserver_is_shown_and_retried(
    api: kmock.KubernetesEmulator, ctl: Controllers, child: Child
) -> None:
    refuse(api, child, 503, "ServiceUnavailable")
    if child.owner == FUNCTIONS:  # raised again: the Function work queue retries it with backoff
        with pytest.raises(ChildRejected):
            await child.reconcile(api, ctl)
    else:  # a retry deadline in the shared scheduler
        await child.reconcile(api, ctl)
        assert ctl.ctx.scheduler.due_at(("sandbox", NS, child.name)) is not None
    cond = ready(api, child)
    assert (cond["status"], cond["reason"]) == ("False", f"{child.kind}Rejected")
