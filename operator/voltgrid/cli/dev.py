"""``voltgrid dev``: run the gateway locally for a Function YAML, instances as local processes.

For development only: the local-process backend does NOT isolate instances (they run as you, with
full access to this machine), which the command says loudly on start. Sessions, affinity, idle
release with preStop, wake and the Session API behave as in a cluster. The only (or first)
Function is also served at ``/``; every one at ``/fn/<namespace>/<name>/``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import Any

BANNER_WIDTH = 78


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("dev", help="run functions locally as processes behind the gateway (NOT isolated)")
    p.add_argument("functions", nargs="+", type=Path, help="Function YAML file(s)")
    p.add_argument("--port", type=int, default=None, help="port to listen on (default 8080)")
    p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    p.add_argument("--config", type=Path, default=None, help="gateway settings YAML")
    p.add_argument(
        "--state-dir", type=Path, default=Path(".voltgrid/state"), help="instance state (default .voltgrid/state)"
    )
    p.add_argument(
        "--storage-dir",
        type=Path,
        default=Path(".voltgrid/storage"),
        help="root of per-session directories (default .voltgrid/storage)",
    )
    p.set_defaults(handler=run)


def warning_banner(text: str) -> str:
    line = "!" * BANNER_WIDTH
    return f"{line}\n{text}\n{line}"


def run(args: argparse.Namespace) -> int:
    from voltgrid.backends.local import NOT_ISOLATED_WARNING, LocalProcessBackend  # noqa: PLC0415 (lazy: see voltgrid.cli.main)
    from voltgrid.errors import VoltgridError  # noqa: PLC0415 (lazy: see voltgrid.cli.main)
    from voltgrid.gateway.app import GatewayServer, run_gateway  # noqa: PLC0415 (lazy: see voltgrid.cli.main)
    from voltgrid.gateway.functions import load_functions  # noqa: PLC0415 (lazy: see voltgrid.cli.main)
    from voltgrid.gateway.settings import load_settings  # noqa: PLC0415 (lazy: see voltgrid.cli.main)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        functions = load_functions(args.functions)
        if not functions:
            print("error: no Function found in the given files", file=sys.stderr)
            return 2
        first = functions[0].metadata
        flags = {
            "port": args.port,
            "host": args.host or "127.0.0.1",
            "default_function": f"{first.namespace}/{first.name}",
        }
        settings = load_settings(args.config, os.environ, flags)
        if not settings.all_api_tokens():  # the Session API is closed without one: mint one for this run
            settings.api_tokens = [secrets.token_urlsafe(24)]
            print(
                f"Session API token for this run: {settings.api_tokens[0]} "
                "(voltgrid sessions --token ..., or set VOLTGRID_GATEWAY_API_TOKENS)",
                file=sys.stderr,
            )
    except VoltgridError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(warning_banner(NOT_ISOLATED_WARNING), file=sys.stderr)
    backend = LocalProcessBackend(args.state_dir.resolve(), args.storage_dir.resolve())
    for fn in functions:
        print(
            f"serving {fn.metadata.namespace}/{fn.metadata.name} at "
            f"http://{settings.host}:{settings.port}/fn/{fn.metadata.namespace}/{fn.metadata.name}/",
            file=sys.stderr,
        )

    async def main() -> None:
        serving = asyncio.ensure_future(run_gateway(GatewayServer(settings, backend, functions)))
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, serving.cancel)
        try:
            await serving
        except asyncio.CancelledError:
            pass
        finally:
            await backend.stop_all()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    return 0
