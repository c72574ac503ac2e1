"""Session controller: keep-warm pod, coarse status, finalizer with preStop (kmock plays the instance)."""

from __future__ import annotations

from typing import Any

import kmock
import kopf
import pytest
from ctlfakes import FUNCTIONS, NS, PODS, SESSIONS, add_node, names, stored

from voltgrid.controllers.core import Controllers


def session(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "voltgrid.dev/v1alpha1",
        "kind": "Session",
        "metadata": {"name": "agent", "namespace": NS, "uid": "uid-agent", "generation": 1},
        "spec": {"functionRef": "echo", **spec},
    }


async def test_keep_warm_session_and_delete_with_prestop(api: kmock.KubernetesEmulator, ctl: Controllers) -> None:
    add_node(api)
    port = api.url.port
    api.objects[FUNCTIONS, NS, "echo"] = {
        "metadata": {"name": "echo", "namespace": NS, "uid": "uid-echo", "generation": 1},
        "spec": {
            "image": "echo:1",
            "port": port,
            "isolation": {"allowUnsandboxed": True},
            "sessions": {"preStop": {"path": "/prestop", "timeout": "2s"}},
        },
    }
    api.objects[SESSIONS, NS, "agent"] = session(keepWarm=True, sessionId="s-42")
    api["post /prestop"] << {"ok": True}
    await ctl.resync()
    await ctl.sessions.reconcile(stored(api, SESSIONS, "agent"))
    assert names(api, PODS) == ["echo-s-42"]
    pod = stored(api, PODS, "echo-s-42")
    assert [o["kind"] for o in pod["metadata"]["ownerReferences"]] == ["Function", "Session"]
    await ctl.sessions.reconcile(stored(api, SESSIONS, "agent"))  # idempotent
    assert names(api, PODS) == ["echo-s-42"]
    # The pod comes up; the sweep reflects it coarsely.
    pod["status"] = {"phase": "Running", "podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}
    await ctl.on_pod(pod, "MODIFIED")
    await ctl.sweep_once()
    status = stored(api, SESSIONS, "agent")["status"]
    assert (status["phase"], status["instance"], status["sessionId"]) == ("Active", "echo-s-42", "s-42")
    await ctl.sessions.finalize(stored(api, SESSIONS, "agent"))
    assert api["post /prestop"][0].data == {"sessionId": "s-42", "reason": "deleted"}
    assert names(api, PODS) == []


async def test_missing_function_is_retried_not_crashed(api: kmock.KubernetesEmulator, ctl: Controllers) -> None:
    api.objects[SESSIONS, NS, "agent"] = session()
    with pytest.raises(kopf.TemporaryError, match="not found"):
        await ctl.sessions.reconcile(stored(api, SESSIONS, "agent"))
    assert stored(api, SESSIONS, "agent")["status"]["conditions"][0]["reason"] == "FunctionNotFound"
