"""``python -m voltgrid.sandbox_agent``: serve the agent API in a sandbox.

The token comes from ``VOLTGRID_SANDBOX_TOKEN`` or the file ``VOLTGRID_SANDBOX_TOKEN_FILE`` names —
never a flag, which any process could read from ``ps``. A warm pool's sandbox has no token yet:
it gets the gateway's public claim key (``VOLTGRID_SANDBOX_CLAIM_KEY``) and its pre-minted id
(``VOLTGRID_SANDBOX_ID``) and waits for one signed claim. Flags take precedence over the other
``VOLTGRID_SANDBOX_*`` variables.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from aiohttp import web

from voltgrid.sandbox_agent.agent import CLAIM_KEY_ENV, SANDBOX_ID_ENV, TOKEN_ENV, AgentSettings
from voltgrid.sandbox_agent.server import build_app

DEFAULT_PORT: Final = 49999
DEFAULT_WORKSPACE: Final = "/workspace"


def settings_from(argv: Sequence[str], environ: Mapping[str, str]) -> tuple[AgentSettings, str, int]:
    """Settings, host and port from flags over the environment."""
    parser = argparse.ArgumentParser(prog="python -m voltgrid.sandbox_agent", description=__doc__)
    parser.add_argument("--host", default=environ.get("VOLTGRID_SANDBOX_HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(environ.get("VOLTGRID_SANDBOX_PORT", DEFAULT_PORT)))
    parser.add_argument("--workspace", default=environ.get("VOLTGRID_SANDBOX_WORKSPACE", DEFAULT_WORKSPACE))
    parser.add_argument(
        "--prewarm",
        default=environ.get("VOLTGRID_SANDBOX_PREWARM", ""),
        help="comma-separated languages whose default context starts before serving (e.g. python)",
    )
    args = parser.parse_args(argv)
    prewarm = tuple(lang for lang in args.prewarm.split(",") if lang)
    settings = AgentSettings(
        workspace=args.workspace,
        token=_secret(TOKEN_ENV, environ),
        claim_key=environ.get(CLAIM_KEY_ENV, ""),
        sandbox_id=environ.get(SANDBOX_ID_ENV, ""),
        prewarm=prewarm,
    )
    return settings, args.host, args.port


def _secret(name: str, environ: Mapping[str, str]) -> str:
    """``$NAME``, else the content of the file ``$NAME_FILE`` names (a mounted Secret)."""
    if value := environ.get(name, ""):
        return value
    path = environ.get(f"{name}_FILE")
    return Path(path).read_text().strip() if path else ""


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings, host, port = settings_from(sys.argv[1:] if argv is None else argv, os.environ)
    except ValueError as exc:
        sys.exit(f"voltgrid sandbox agent: {exc}")
    # handler_cancellation: a client that goes away stops its execution or command at once, not at
    # the next line of output.
    web.run_app(build_app(settings, os.environ), host=host, port=port, print=None, handler_cancellation=True)


if __name__ == "__main__":
    main()
