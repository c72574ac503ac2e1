"""The operator's in-memory state: indexes of what EXISTS (pods, runtime classes, nodes).

Memory is bounded by the pods and the cluster's nodes, never by the number of Functions: an idle
Function leaves nothing here. Indexes are fed by kopf's watch events and rebuilt by one LIST at
startup (adoption after a restart) and whenever this replica becomes the active peer.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from voltgrid.controllers.builders.pods import PodInfo
from voltgrid.controllers.builders.runtime import RuntimeClassInfo, on_some_node, runtime_class_info
from voltgrid.controllers.events import EventRecorder
from voltgrid.controllers.kube import KubeClient, voltgrid_path
from voltgrid.controllers.metrics import OperatorMetrics
from voltgrid.controllers.scheduler import Scheduler
from voltgrid.controllers.settings import OperatorSettings
from voltgrid.sandbox_claims import load_signing_key

Key = tuple[str, str]  # (namespace, name)
Clock = Callable[[], datetime]


def key_of(body: Mapping[str, Any]) -> Key:
    """(namespace, name) of an object body."""
    meta = body.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def spec_only(body: Mapping[str, Any]) -> dict[str, Any]:
    """The object without its status, for validating with the API models: a status written by
    another version of the operator must never make a valid spec look invalid."""
    return {k: v for k, v in body.items() if k != "status"}


def utcnow() -> datetime:
    return datetime.now(UTC)


class PodIndex:
    """Voltgrid pods by name, by Function and by Sandbox."""

    def __init__(self) -> None:
        self._pods: dict[Key, PodInfo] = {}
        self._by_function: dict[Key, set[str]] = defaultdict(set)
        self._by_sandbox: dict[Key, str] = {}

    def __len__(self) -> int:
        return len(self._pods)

    def upsert(self, pod: PodInfo) -> PodInfo | None:
        key = (pod.namespace, pod.name)
        old = self._pods.get(key)
        self._pods[key] = pod
        if pod.function and pod.sandbox is None:
            self._by_function[(pod.namespace, pod.function)].add(pod.name)
        if pod.sandbox:
            self._by_sandbox[(pod.namespace, pod.sandbox)] = pod.name
        return old

    def remove(self, namespace: str, name: str) -> PodInfo | None:
        pod = self._pods.pop((namespace, name), None)
        if pod is not None and pod.function:
            names = self._by_function.get((namespace, pod.function))
            if names is not None:
                names.discard(name)
                if not names:
                    del self._by_function[(namespace, pod.function)]
        if pod is not None and pod.sandbox and self._by_sandbox.get((namespace, pod.sandbox)) == name:
            del self._by_sandbox[(namespace, pod.sandbox)]
        return pod

    def replace_all(self, pods: Iterable[PodInfo]) -> None:
        self._pods.clear()
        self._by_function.clear()
        self._by_sandbox.clear()
        for pod in pods:
            self.upsert(pod)

    def get(self, namespace: str, name: str) -> PodInfo | None:
        return self._pods.get((namespace, name))

    def for_function(self, namespace: str, function: str) -> list[PodInfo]:
        return [self._pods[(namespace, n)] for n in sorted(self._by_function.get((namespace, function), ()))]

    def for_session(self, namespace: str, function: str, session: str) -> list[PodInfo]:
        return [p for p in self.for_function(namespace, function) if p.session == session]

    def for_sandbox(self, namespace: str, sandbox: str) -> PodInfo | None:
        name = self._by_sandbox.get((namespace, sandbox))
        return None if name is None else self._pods.get((namespace, name))

    def all(self) -> list[PodInfo]:
        return list(self._pods.values())

    def for_template(self, namespace: str, template: str) -> list[PodInfo]:
        """The pool pods of a SandboxTemplate (a scan: pools are few pods next to instances)."""
        return [p for p in self._pods.values() if p.namespace == namespace and p.template == template]


class RuntimeInventory:
    """RuntimeClasses (name -> handler, node selector) and node labels."""

    def __init__(self) -> None:
        self.classes: dict[str, RuntimeClassInfo] = {}
        self.nodes: dict[str, Mapping[str, str]] = {}

    def set_class(self, name: str, obj: Mapping[str, Any] | None) -> bool:
        """Record (or forget, when ``obj`` is None) a RuntimeClass; True when that changed anything."""
        new = None if obj is None else runtime_class_info(obj)
        old = self.classes.pop(name, None) if new is None else self.classes.get(name)
        if new is not None:
            self.classes[name] = new
        return old != new

    def set_node(self, name: str, labels: Mapping[str, str] | None) -> bool:
        old = self.nodes.pop(name, None) if labels is None else self.nodes.get(name)
        if labels is not None:
            self.nodes[name] = dict(labels)
        return old != labels

    def available(self) -> frozenset[str]:
        """The RuntimeClasses that could run a pod now (exist and have a node)."""
        nodes = list(self.nodes.values())
        return frozenset(n for n, info in self.classes.items() if on_some_node(info, nodes))


@dataclass
class Context:
    """Everything the controllers share; one per operator process."""

    client: KubeClient
    settings: OperatorSettings
    events: EventRecorder
    scheduler: Scheduler
    clock: Clock = utcnow
    pods: PodIndex = field(default_factory=PodIndex)
    runtimes: RuntimeInventory = field(default_factory=RuntimeInventory)
    dirty_functions: set[Key] = field(default_factory=set)
    dirty_sessions: set[Key] = field(default_factory=set)
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    #: Sandboxes with a ``templateRef`` waiting for a warm pod, per template: the pool adds them to
    #: its size (creation on demand), as it adds the claims the gateway notes on the template.
    pool_waiting: dict[Key, set[Key]] = field(default_factory=dict)
    claim_key: Ed25519PrivateKey | None = field(init=False)
    """The sandbox claim key (``sandbox_claim_key_file``), read once: the pools give its public half
    to their pods; the Sandbox controller signs the claims of ``templateRef`` Sandboxes with it."""

    def __post_init__(self) -> None:
        key_file = self.settings.sandbox_claim_key_file
        self.claim_key = load_signing_key(Path(key_file).read_bytes()) if key_file else None

    def served_paths(self, plural: str) -> list[str]:
        """Collection paths of a Voltgrid resource in the served namespaces (all when none given;
        namespace patterns are listed cluster-wide and filtered with ``settings.serves``)."""
        if self.settings.watches_cluster:
            return [voltgrid_path(plural)]
        return [voltgrid_path(plural, n) for n in self.settings.namespaces]
