"""``voltgrid triggers``: the dispatcher process (cron timers, queue consumers, the CloudEvents ingress).

Functions come from ``--functions`` (a YAML file of Function objects, re-read when it changes) and
broker URLs from ``--secrets`` (a directory laid out like mounted Secrets:
``<dir>/<namespace>/<secret>/<key>``). One HTTP port serves the ingress (``POST /events/<ns>``),
``/metrics`` and ``/healthz``. SIGTERM stops it: messages in flight stay unacknowledged, so the
brokers hand them to another replica.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import aiohttp
import yaml
from aiohttp import web
from prometheus_client import generate_latest
from pydantic import ValidationError

from voltgrid.api.function import Function
from voltgrid.api.triggers import SecretKeyRef
from voltgrid.triggers.dispatch import Dispatcher
from voltgrid.triggers.ingress import Ingress, ingress_app
from voltgrid.triggers.runner import Runner, plan

log = logging.getLogger(__name__)

DEFAULT_PORT: Final = 8090
#: How often the Functions file is checked for changes.
RELOAD_INTERVAL: Final = 2.0


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="voltgrid triggers", description="The trigger dispatcher: cron, queues, ingress.")
    p.add_argument("--gateway", required=True, help="the gateway's base URL, e.g. http://voltgrid-gateway:8080")
    p.add_argument("--functions", type=Path, required=True, help="YAML file of Function objects (multi-document)")
    p.add_argument("--secrets", type=Path, default=None, help="directory <namespace>/<secret>/<key> of broker URLs")
    p.add_argument("--host", default="0.0.0.0", help="address of the ingress and metrics port")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"ingress and metrics port (default {DEFAULT_PORT})")
    p.add_argument("--replica", default=socket.gethostname(), help="this replica's consumer name (default: hostname)")
    return p.parse_args(argv)


def load_functions(path: Path) -> list[Function]:
    """Every Function in the file; other kinds are ignored, an invalid Function is a named error."""
    out = []
    for doc in yaml.safe_load_all(path.read_text()):
        if isinstance(doc, dict) and doc.get("kind") == "Function":
            out.append(Function.model_validate(doc))
    return out


def secret_files(root: Path | None) -> Callable[[str, SecretKeyRef], str | None]:
    def lookup(namespace: str, ref: SecretKeyRef) -> str | None:
        if root is None:
            return None
        path = root / namespace / ref.name / ref.key
        return path.read_text().strip() if path.is_file() else None

    return lookup


async def serve(args: argparse.Namespace, stop: asyncio.Event) -> None:
    async with aiohttp.ClientSession() as http:
        dispatcher = Dispatcher(http)
        ingress = Ingress(dispatcher)
        runner = Runner(dispatcher, ingress, args.replica)
        app = ingress_app(ingress)

        async def metrics(_: web.Request) -> web.Response:
            return web.Response(body=generate_latest(dispatcher.metrics.registry), content_type="text/plain")

        async def healthz(_: web.Request) -> web.Response:
            return web.json_response({"triggers": runner.running})

        app.router.add_get("/metrics", metrics)
        app.router.add_get("/healthz", healthz)
        site_runner = web.AppRunner(app, shutdown_timeout=5.0)
        await site_runner.setup()
        await web.TCPSite(site_runner, args.host, args.port).start()
        log.info("voltgrid triggers: listening on %s:%d, gateway %s", args.host, args.port, args.gateway)
        seen: float | None = None
        try:
            while not stop.is_set():
                mtime = args.functions.stat().st_mtime if args.functions.exists() else None
                if mtime != seen:
                    seen = mtime
                    await reload(args, runner)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), RELOAD_INTERVAL)
        finally:
            await runner.close()
            await site_runner.cleanup()


async def reload(args: argparse.Namespace, runner: Runner) -> None:
    try:
        functions = load_functions(args.functions) if args.functions.exists() else []
    except (OSError, yaml.YAMLError, ValidationError) as e:
        log.error("voltgrid triggers: %s not loaded, keeping the triggers running: %s", args.functions, e)
        return
    jobs, routes, problems = plan(args.gateway, functions, secret_files(args.secrets))
    for problem in problems:
        log.error("voltgrid triggers: %s", problem)
    await runner.apply(jobs, routes)
    log.info("voltgrid triggers: %d jobs, %d ingress routes", len(jobs), len(routes))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(args, stop)

    asyncio.run(run())
    return 0
