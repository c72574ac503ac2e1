"""``voltgrid triggers``: the dispatcher process (cron timers, queue consumers, the CloudEvents ingress).

In a cluster (no ``--functions``) it follows the Functions with one LIST then WATCHes (the access
layer's Reflector; ``--resync`` is only a safety relist, which also re-reads the Secrets), reads the
Secrets their queue triggers name on every change, and shares cron ticks with the other replicas through one Lease
per cron trigger in ``--lease-namespace``. Outside one (``voltgrid dev``, tests) Functions come
from ``--functions`` (a YAML file, re-read when it changes) and broker URLs from ``--secrets`` (a
directory laid out like mounted Secrets: ``<dir>/<namespace>/<secret>/<key>``); cron ticks are then
this process's own. One HTTP port serves the ingress (``POST /events/<ns>``), ``/metrics`` and
``/healthz``. SIGTERM stops it: messages in flight stay unacknowledged, so the brokers hand them
to another replica.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Final

import aiohttp
import yaml
from aiohttp import web
from kubernetes_asyncio import client, config
from prometheus_client import generate_latest
from pydantic import ValidationError

from voltgrid.api.function import Function
from voltgrid.api.triggers import SecretKeyRef
from voltgrid.errors import CredentialsError
from voltgrid.registry.kubeapi import ConfigurationCredentials, KubeApi
from voltgrid.triggers.cron import MemoryLedger, TickLedger
from voltgrid.triggers.dispatch import Dispatcher
from voltgrid.triggers.ingress import Ingress, ingress_app
from voltgrid.triggers.kubesource import KubeSource
from voltgrid.triggers.leases import LeaseLedger
from voltgrid.triggers.report import SECRET_KEY_MISSING, SECRET_MISSING, Reporter
from voltgrid.triggers.runner import Missing, Runner, SecretLookup, plan

log = logging.getLogger(__name__)

DEFAULT_PORT: Final = 8090
#: How often the Functions file is checked for changes.
FILE_RELOAD_INTERVAL: Final = 2.0
#: Seconds without a Function change before a safety relist (changes arrive by WATCH; this also
#: picks up a rotated Secret, which is not watched).
DEFAULT_RESYNC: Final = 300.0
#: Seconds the last write of states and Events may take as the replica stops (its grace is 30s).
FINAL_FLUSH_S: Final = 5.0


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="voltgrid triggers", description="The trigger dispatcher: cron, queues, ingress.")
    p.add_argument("--gateway", required=True, help="the gateway's base URL, e.g. http://voltgrid-gateway:8080")
    p.add_argument("--functions", type=Path, default=None, help="YAML file of Functions (default: the cluster's)")
    p.add_argument("--secrets", type=Path, default=None, help="with --functions: <namespace>/<secret>/<key> files")
    p.add_argument(
        "--resync",
        type=float,
        default=DEFAULT_RESYNC,
        help="seconds without a change before a safety relist (re-reads Secrets too)",
    )
    p.add_argument(
        "--lease-namespace",
        default=os.environ.get("POD_NAMESPACE", "voltgrid-system"),
        help="namespace of the cron Leases (default: $POD_NAMESPACE, else voltgrid-system)",
    )
    p.add_argument("--host", default="0.0.0.0", help="address of the ingress and metrics port")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"ingress and metrics port (default {DEFAULT_PORT})")
    p.add_argument("--replica", default=socket.gethostname(), help="this replica's consumer name (default: hostname)")
    return p.parse_args(argv)


def load_functions(path: Path) -> list[Function]:
    """Every Function in the file; other kinds are ignored, an invalid Function is a named error."""
    return [
        Function.model_validate(doc)
        for doc in yaml.safe_load_all(path.read_text())
        if isinstance(doc, dict) and doc.get("kind") == "Function"
    ]


def secret_files(root: Path | None) -> SecretLookup:
    def lookup(namespace: str, ref: SecretKeyRef) -> str | Missing:
        where = f"Secret {namespace}/{ref.name}"
        if root is None:
            return Missing(SECRET_MISSING, f"{where}: no --secrets directory")
        path = root / namespace / ref.name / ref.key
        if path.is_file():
            return path.read_text().strip()
        if path.parent.is_dir():
            return Missing(SECRET_KEY_MISSING, f"{where} has no key {ref.key!r}")
        return Missing(SECRET_MISSING, f"{where} does not exist (no {path.parent})")

    return lookup


Loaded = tuple[list[Function], SecretLookup]


async def from_file(args: argparse.Namespace, stop: asyncio.Event) -> AsyncIterator[Loaded]:
    """The file's Functions each time it changes (a file that does not load keeps the last ones)."""
    seen: float | None = None
    while not stop.is_set():
        mtime = args.functions.stat().st_mtime if args.functions.exists() else None
        if mtime != seen:
            seen = mtime
            try:
                yield (load_functions(args.functions) if mtime is not None else []), secret_files(args.secrets)
            except (OSError, yaml.YAMLError, ValidationError) as e:
                log.error("%s not loaded, the running triggers stay: %s", args.functions, e)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), FILE_RELOAD_INTERVAL)


async def serve(
    args: argparse.Namespace,
    stop: asyncio.Event,
    loads: AsyncIterator[Loaded],
    ledger: TickLedger,
    reporter: Reporter | None = None,
) -> None:
    reporter = reporter or Reporter()
    async with aiohttp.ClientSession() as http:
        dispatcher = Dispatcher(http, reporter=reporter)
        ingress = Ingress(dispatcher)
        runner = Runner(dispatcher, ingress, args.replica, ledger)
        app = ingress_app(ingress)

        async def metrics(_: web.Request) -> web.Response:
            return web.Response(body=generate_latest(dispatcher.metrics.registry), content_type="text/plain")

        async def healthz(_: web.Request) -> web.Response:
            return web.json_response({"triggers": runner.running, "states": reporter.snapshot()})

        app.router.add_get("/metrics", metrics)
        app.router.add_get("/healthz", healthz)
        site_runner = web.AppRunner(app, shutdown_timeout=5.0)
        await site_runner.setup()
        await web.TCPSite(site_runner, args.host, args.port).start()
        log.info("listening on %s:%d, delivering to %s", args.host, args.port, args.gateway)
        reporting = asyncio.create_task(reporter.run(), name="trigger reports")
        try:
            async for functions, secrets in loads:
                jobs, routes, problems = plan(args.gateway, functions, secrets)
                for problem in problems:
                    log.error("%s: %s", problem.trigger, problem.message)
                reporter.functions(functions)
                await runner.apply(jobs, routes, problems)
                log.info("%d jobs, %d ingress routes", len(jobs), len(routes))
        finally:
            await runner.close()
            reporting.cancel()
            await asyncio.gather(reporting, return_exceptions=True)
            with contextlib.suppress(TimeoutError):  # the last states and Events, within the grace period
                await asyncio.wait_for(reporter.flush(), FINAL_FLUSH_S)
            await site_runner.cleanup()


async def kube_api() -> KubeApi:
    """The in-cluster service account, else the kubeconfig; CredentialsError names why neither works."""
    conf = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=conf)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        try:
            await config.load_kube_config(client_configuration=conf)
        except (config.ConfigException, OSError, ValueError) as e:
            raise CredentialsError(
                "without --functions, voltgrid triggers reads the cluster's Functions and needs Kubernetes"
                f" credentials: not in a cluster, and the kubeconfig cannot be used: {e}"
            ) from None
    return KubeApi(ConfigurationCredentials(conf), user_agent="voltgrid-triggers")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if args.functions is not None:
            await serve(args, stop, from_file(args, stop), MemoryLedger())
            return
        api = await kube_api()
        try:
            ledger = LeaseLedger(api, args.lease_namespace, args.replica)
            reporter = Reporter(api)
            await serve(args, stop, KubeSource(api, reporter).follow(stop, args.resync), ledger, reporter)
        finally:
            await api.close()

    try:
        asyncio.run(run())
    except CredentialsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
