"""``voltgrid gateway``: the data-plane entry point (in a cluster, or on a host next to one).

With ``--backend kubernetes`` instances are pods (in-cluster config, else ``$KUBECONFIG``) and the
served Functions follow the cluster's Function objects; with ``--backend local`` instances are local
processes (not isolated) for the Function files given. Settings: flags > ``VOLTGRID_GATEWAY_*`` env >
``--config`` YAML (see :mod:`voltgrid.gateway.settings`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from voltgrid.gateway.settings import GatewaySettings

BACKENDS = ("kubernetes", "local")


def add_parser(subparsers: Any) -> None:
    from voltgrid.gateway.settings import FILE_ONLY, GatewaySettings  # noqa: PLC0415 (pydantic only here)

    p = subparsers.add_parser(
        "gateway",
        help="run the gateway (session affinity, cold start, Session API)",
        description="Settings: flag > environment variable > --config YAML (keys as the setting names) > default.",
        epilog=f"Only in the --config file: {', '.join(FILE_ONLY)} (JWT policies, see docs/operations.md).",
    )
    p.add_argument("--backend", choices=BACKENDS, default="kubernetes", help="where instances run")
    p.add_argument("--functions", nargs="*", type=Path, default=[], help="Function YAML files to serve as well")
    p.add_argument("--namespace", default=None, help="serve only this namespace's Functions (default: all)")
    p.add_argument("--state-dir", type=Path, default=Path(".voltgrid/state"), help="local backend: instance state")
    p.add_argument("--storage-dir", type=Path, default=Path(".voltgrid/storage"), help="local backend: sessions")
    GatewaySettings.add_arguments(p.add_argument_group("gateway settings"), dest_prefix="setting_")
    p.set_defaults(handler=run)


async def _kube_client() -> Any:
    """The in-cluster service account, else the kubeconfig; :class:`CredentialsError` names why neither works."""
    from kubernetes_asyncio import client, config  # noqa: PLC0415 (lazy: see voltgrid.cli.main)

    from voltgrid.errors import CredentialsError  # noqa: PLC0415

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        try:
            await config.load_kube_config()
        except (config.ConfigException, OSError, ValueError) as e:
            raise CredentialsError(
                f"--backend kubernetes needs Kubernetes credentials: not in a cluster, and the kubeconfig"
                f" ($KUBECONFIG or ~/.kube/config) cannot be used: {e}"
            ) from None
    return client.ApiClient()


def _supervise(settings: GatewaySettings) -> int:
    """Run this same command once per worker, and keep the workers running (voltgrid.gateway.workers)."""
    from voltgrid.gateway.settings import ENV_PREFIX  # noqa: PLC0415
    from voltgrid.gateway.workers import Supervisor  # noqa: PLC0415

    command = [sys.executable, "-m", "voltgrid.cli.main", *sys.argv[1:]]
    # Workers forward to each other: they share the internal token (generated if none was set).
    shared = {f"{ENV_PREFIX}INTERNAL_TOKEN": settings.internal_token}
    return Supervisor(command, settings.worker_count(), shared).run()


def run(args: argparse.Namespace) -> int:
    import uvloop  # noqa: PLC0415

    from voltgrid.backends.local import NOT_ISOLATED_WARNING, LocalProcessBackend  # noqa: PLC0415
    from voltgrid.errors import VoltgridError  # noqa: PLC0415
    from voltgrid.gateway.app import GatewayServer, run_gateway  # noqa: PLC0415
    from voltgrid.gateway.functions import load_functions  # noqa: PLC0415
    from voltgrid.gateway.settings import GatewaySettings, load_settings  # noqa: PLC0415

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        functions = load_functions(args.functions) if args.functions else []
        # In a cluster the operator keeps the warm pools; the gateway claims what it created.
        defaults = {"manage_warm_pool": False} if args.backend == "kubernetes" else {}
        flags = GatewaySettings.flags_from(args, "setting_")
        settings = load_settings(args.config, os.environ, flags, defaults)
    except VoltgridError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.backend == "local" and not functions:
        print("error: --backend local needs --functions FILE...", file=sys.stderr)
        return 2
    if settings.worker_count() > 1:
        if settings.worker_index is None:
            return _supervise(settings)
        settings = settings.for_worker(settings.worker_index)

    async def main() -> None:
        from voltgrid.backends.kubernetes import KubernetesBackend  # noqa: PLC0415 (cluster only)
        from voltgrid.registry.kubeapi import ConfigurationCredentials, KubeApi  # noqa: PLC0415

        api = await _kube_client() if args.backend == "kubernetes" else None
        kube = None
        if api is not None:
            kube = KubeApi(ConfigurationCredentials(api.configuration), user_agent="voltgrid-gateway")
            backend: Any = KubernetesBackend(api, kube=kube, namespace=args.namespace)
        else:
            print(NOT_ISOLATED_WARNING, file=sys.stderr)
            backend = LocalProcessBackend(args.state_dir.resolve(), args.storage_dir.resolve())
        serving = asyncio.ensure_future(
            run_gateway(
                GatewayServer(
                    settings,
                    backend,
                    functions,
                    watcher_api=kube,
                    functions_api=kube,
                    functions_namespace=args.namespace,
                ),
                reuse_port=settings.worker_index is not None,
            )
        )
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, serving.cancel)
        try:
            await serving
        except asyncio.CancelledError:
            pass
        finally:
            if isinstance(backend, LocalProcessBackend):
                await backend.stop_all()
            if api is not None:
                await api.close()
            if kube is not None:
                await kube.close()

    try:
        with contextlib.suppress(KeyboardInterrupt):
            uvloop.run(main())  # the data path's event loop (libuv): see voltgrid.gateway.http1
    except VoltgridError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
