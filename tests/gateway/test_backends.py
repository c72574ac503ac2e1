"""Instance backends: the pod builder (pure, table-style) and the local backend's shared state."""

from __future__ import annotations

from pathlib import Path

import pytest
from gwhelpers import function

from voltgrid.api import constants as c
from voltgrid.backends.base import InstanceBackend
from voltgrid.backends.kubernetes import instance_pod
from voltgrid.backends.local import LocalProcessBackend


@pytest.mark.parametrize(("warm", "role"), [(False, "instance"), (True, "warm")])
def test_instance_pod_labels_env_and_owner(warm: bool, role: str) -> None:
    fn = function("agent")
    fn.metadata.uid = "uid-1"
    fn.spec.isolation.runtime_class_name = "kata-fc"
    pod = instance_pod(fn, "s-abc", warm)
    assert pod["metadata"]["labels"] == {c.LABEL_MANAGED: "true", c.LABEL_FUNCTION: "agent",
                                         c.LABEL_SESSION: "s-abc", c.LABEL_ROLE: role}
    (container,) = pod["spec"]["containers"]
    assert {"name": "VOLTGRID_SESSION_ID", "value": "s-abc"} in container["env"]
    assert pod["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert pod["spec"]["runtimeClassName"] == "kata-fc" and pod["spec"]["automountServiceAccountToken"] is False
    assert pod["metadata"]["name"].startswith("agent-") and len(pod["metadata"]["name"]) <= 63


async def test_a_second_backend_object_lists_and_deletes_instances_it_did_not_start(tmp_path: Path) -> None:
    first = LocalProcessBackend(tmp_path / "state", tmp_path / "storage")
    second = LocalProcessBackend(tmp_path / "state", tmp_path / "storage")  # another gateway process
    assert isinstance(first, InstanceBackend)
    try:
        instance = await first.create(function("echo"), "s-1")
        assert (tmp_path / "storage" / "default" / "echo" / "s-1").is_dir()
        (found,) = await second.list(function="default/echo", session="s-1")
        assert (found.id, found.url) == (instance.id, instance.url)
        assert await second.list(session="s-2") == []
        await second.delete(found)
        assert await first.list() == []
    finally:
        await first.stop_all()
