"""The kopf handlers: thin, each one line into :mod:`voltgrid.controllers.core`.

Sandboxes use an event handler made idempotent by comparing the computed status with the stored one
(``observedGeneration`` and counts), so kopf writes no bookkeeping annotation on them. Functions are
not kopf's: the startup handler starts the operator's own Function informer (100,000 Functions cost
one status write each, and a restart re-lists them with zero writes).
Sessions (few, with a cleanup to run) use kopf's create/update/resume/delete with its finalizer.
Pods are watched with a server-side label selector: only Voltgrid's own pods reach the operator.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any, Final

import kopf
from aiohttp import web

from voltgrid.api import constants
from voltgrid.controllers import metrics
from voltgrid.controllers.core import MANAGED_SELECTOR, Controllers

logger = logging.getLogger(__name__)

LoginFn = Callable[..., kopf.ConnectionInfo | None]
#: Concurrent per-object workers kopf may run (bounds memory while many pods or Sandboxes are listed).
WORKER_LIMIT: Final = 1000
#: Seconds a per-object worker lingers for more events of its object. kopf's 5 s default holds a
#: worker slot for 5 s per object: with the limit above that caps throughput at 200 objects/s.
WORKER_IDLE_TIMEOUT: Final = 0.5


def in_cluster_server(info: kopf.ConnectionInfo, environ: Mapping[str, str]) -> kopf.ConnectionInfo:
    """The service account's login pointed at the apiserver address the kubelet injects.

    kopf names the apiserver ``https://kubernetes.default.svc``, which needs cluster DNS; like client-go's
    in-cluster config, ``KUBERNETES_SERVICE_HOST``/``_PORT`` work without it (and are always set in a pod).
    """
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return info
    return dataclasses.replace(info, server=f"https://{f'[{host}]' if ':' in host else host}:{port}")


def default_login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In-cluster service account first, then the kubeconfig (``$KUBECONFIG`` or ~/.kube/config)."""
    info: kopf.ConnectionInfo | None = kopf.login_with_service_account(**kwargs)
    if info is not None:
        return in_cluster_server(info, os.environ)
    return kopf.login_with_kubeconfig(**kwargs)


def _report_stop(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("%s crashed", task.get_name(), exc_info=task.exception())


def build_registry(ctl: Controllers, *, login: LoginFn = default_login) -> kopf.OperatorRegistry:
    """A kopf registry with every Voltgrid handler bound to ``ctl`` (no module-global state)."""
    registry = kopf.OperatorRegistry()
    tasks: list[asyncio.Task[None]] = []
    servers: list[web.AppRunner] = []

    @kopf.on.login(registry=registry)
    def _login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        info = login(**kwargs)
        if info is not None:
            ctl.ctx.client.login(info)
        return info

    @kopf.on.startup(registry=registry)
    async def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.watching.label_selectors["v1", "pods"] = MANAGED_SELECTOR
        settings.queueing.worker_limit = WORKER_LIMIT
        settings.queueing.idle_timeout = WORKER_IDLE_TIMEOUT
        settings.posting.level = logging.WARNING
        settings.scanning.disabled = True  # CRDs are installed before the operator (chart, crds/)
        settings.persistence.finalizer = f"{constants.GROUP}/finalizer"
        if not ctl.ctx.client.configured:  # kopf logs in lazily, after the startup handlers
            info = login(logger=logger, settings=settings)
            if info is not None:
                ctl.ctx.client.login(info)
        if ctl.ctx.settings.metrics:
            servers.append(await metrics.serve(ctl.ctx.metrics, ctl.ctx.settings.metrics))
        await ctl.resync()
        for work, name in (
            (ctl.run_scheduler(), "voltgrid deadlines"),
            (ctl.run_sweep(), "voltgrid sweep"),
            (ctl.run_functions(), "voltgrid functions"),
        ):
            tasks.append(asyncio.create_task(work, name=name))
            tasks[-1].add_done_callback(_report_stop)

    @kopf.on.probe(id="background", registry=registry)
    def _background_alive(**_: Any) -> str:
        """The liveness endpoint fails (and the kubelet restarts the pod) if a background task ended:
        each runs until cancelled, so one that ended crashed."""
        stopped = [task.get_name() for task in tasks if task.done()]
        if stopped:
            raise kopf.PermanentError(f"stopped: {', '.join(stopped)}")
        return "running"

    @kopf.on.cleanup(registry=registry)
    async def _cleanup(**_: Any) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        tasks.clear()
        for server in servers:
            await server.cleanup()
        servers.clear()
        await ctl.ctx.client.close()

    @kopf.on.event(constants.GROUP, constants.VERSION, "sandboxes", registry=registry)
    async def _sandbox(body: kopf.Body, type: str | None, **_: Any) -> None:
        await ctl.sandboxes.on_event(body, type)

    @kopf.on.event(constants.GROUP, constants.VERSION, "sandboxtemplates", registry=registry)
    async def _sandbox_template(body: kopf.Body, type: str | None, **_: Any) -> None:
        await ctl.pools.on_event(body, type)

    @kopf.on.resume(constants.GROUP, constants.VERSION, "sessions", registry=registry)
    @kopf.on.create(constants.GROUP, constants.VERSION, "sessions", registry=registry)
    @kopf.on.update(constants.GROUP, constants.VERSION, "sessions", field="spec", registry=registry)
    async def _session(body: kopf.Body, **_: Any) -> None:
        await ctl.sessions.reconcile(body)

    @kopf.on.delete(constants.GROUP, constants.VERSION, "sessions", registry=registry)
    async def _session_deleted(body: kopf.Body, **_: Any) -> None:
        await ctl.sessions.finalize(body)

    @kopf.on.event("v1", "pods", labels={constants.LABEL_MANAGED: "true"}, registry=registry)
    async def _pod(body: kopf.Body, type: str | None, **_: Any) -> None:
        await ctl.on_pod(body, type)

    @kopf.on.event("node.k8s.io", "v1", "runtimeclasses", registry=registry)
    async def _runtime_class(body: kopf.Body, name: str, type: str | None, **_: Any) -> None:
        await ctl.on_runtime_class(name, None if type == "DELETED" else body)

    @kopf.on.event("v1", "nodes", registry=registry)
    async def _node(body: kopf.Body, name: str, type: str | None, **_: Any) -> None:
        await ctl.on_node(name, None if type == "DELETED" else dict(body.metadata.labels))

    return registry
