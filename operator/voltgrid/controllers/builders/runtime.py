"""Secure-by-default runtime selection: the first RuntimeClass of the policy that can run a pod.

A RuntimeClass counts when it exists as an object AND its ``scheduling.nodeSelector`` matches at
least one node (a RuntimeClass without scheduling counts as present on every node). An explicit
``runtimeClassName`` is a one-element policy. When nothing qualifies the pod is not started
(reason ``NoSandboxRuntime``) unless the object opted in with ``allowUnsandboxed``: then it runs on
the node's default runtime and says so (``sandboxed: false``). A RuntimeClass whose handler is
plain runc/crun is not a sandbox: choosing it also needs the opt-in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from voltgrid.api.common import Isolation
from voltgrid.api.gpu import runtime_can_use_gpu

REASON_SELECTED: Final = "RuntimeSelected"
REASON_UNSANDBOXED: Final = "Unsandboxed"
REASON_NO_RUNTIME: Final = "NoSandboxRuntime"
UNSANDBOXED_HANDLERS: Final = frozenset({"runc", "crun"})


@dataclass(frozen=True)
class RuntimeClassInfo:
    """What selection needs of a RuntimeClass object."""

    handler: str
    node_selector: Mapping[str, str] | None = None


@dataclass(frozen=True)
class RuntimeChoice:
    """The outcome: ``runnable`` False means do not start pods (the reason says why)."""

    runnable: bool
    runtime_class_name: str | None
    sandboxed: bool
    reason: str
    message: str


def runtime_class_info(obj: Mapping[str, object]) -> RuntimeClassInfo:
    """The selection-relevant part of a ``node.k8s.io/v1`` RuntimeClass object."""
    scheduling = obj.get("scheduling")
    selector = scheduling.get("nodeSelector") if isinstance(scheduling, Mapping) else None
    return RuntimeClassInfo(
        handler=str(obj.get("handler", "")),
        node_selector=dict(selector) if isinstance(selector, Mapping) and selector else None,
    )


def on_some_node(info: RuntimeClassInfo, node_labels: Iterable[Mapping[str, str]]) -> bool:
    if not info.node_selector:
        return True
    wanted = info.node_selector.items()
    return any(all(labels.get(k) == v for k, v in wanted) for labels in node_labels)


def is_sandboxed(runtime_class_name: str | None, runtime_classes: Mapping[str, RuntimeClassInfo]) -> bool:
    """Whether a pod of this RuntimeClass runs in a sandbox (what a pool pod's binding reports: the pool
    chose the class by its template's policy; an unknown class counts as none)."""
    info = runtime_classes.get(runtime_class_name) if runtime_class_name else None
    return info is not None and info.handler not in UNSANDBOXED_HANDLERS


def select_runtime(
    isolation: Isolation,
    runtime_classes: Mapping[str, RuntimeClassInfo],
    node_labels: Iterable[Mapping[str, str]],
    gpu: float = 0,
) -> RuntimeChoice:
    """Pick the runtime for a pod of an object with this ``isolation`` (see module docstring).
    A fractional ``gpu`` skips VM runtimes (Kata), which can only take whole cards."""
    nodes = list(node_labels)
    candidates = [isolation.runtime_class_name] if isolation.runtime_class_name else list(isolation.policy)
    missing: list[str] = []
    for name in candidates:
        info = runtime_classes.get(name)
        if info is None or not on_some_node(info, nodes):
            missing.append(name if info is None else f"{name} (no matching node)")
            continue
        if not runtime_can_use_gpu(gpu, name):
            missing.append(f"{name} (a VM cannot take a fraction of a GPU)")
            continue
        if info.handler in UNSANDBOXED_HANDLERS:
            if isolation.allow_unsandboxed:
                return RuntimeChoice(
                    True,
                    name,
                    False,
                    REASON_UNSANDBOXED,
                    f"RuntimeClass {name} (handler {info.handler}) is not a sandbox;"
                    " allowed by isolation.allowUnsandboxed",
                )
            missing.append(f"{name} (handler {info.handler} is not a sandbox)")
            continue
        return RuntimeChoice(True, name, True, REASON_SELECTED, f"running under RuntimeClass {name}")
    tried = ", ".join(missing) or "an empty policy"
    if isolation.allow_unsandboxed:
        return RuntimeChoice(
            True,
            None,
            False,
            REASON_UNSANDBOXED,
            f"no sandboxed runtime available (tried {tried}); running on the node's"
            " default runtime because isolation.allowUnsandboxed is set",
        )
    return RuntimeChoice(
        False,
        None,
        False,
        REASON_NO_RUNTIME,
        f"no sandboxed runtime available (tried {tried}); install one (see"
        " runtimeclasses/) or set isolation.allowUnsandboxed to run without a sandbox",
    )
