"""The `voltgrid` command: one entry point whose subcommands start each Voltgrid component.

Subcommands import their component lazily, so `voltgrid crds` does not pay for aiohttp or kopf
and a component's missing optional dependency breaks only its own subcommand.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from voltgrid.api import crdgen
from voltgrid.cli import run

DEFAULT_CRD_DIR = Path("crds")


def _crds(args: argparse.Namespace) -> int:
    directory = Path(args.out)
    if args.check:
        stale = crdgen.drift(directory)
        if stale:
            print(
                f"error: {directory}/ differs from the models: {', '.join(stale)}; run `voltgrid crds`", file=sys.stderr
            )
            return 1
        print(f"{directory}/ matches the models")
        return 0
    for path in crdgen.write(directory):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voltgrid", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    crds = sub.add_parser("crds", help="generate crds/*.yaml from the API models")
    crds.add_argument("--out", default=str(DEFAULT_CRD_DIR), help="output directory (default: crds)")
    crds.add_argument("--check", action="store_true", help="fail if the directory differs from the models")
    crds.set_defaults(handler=_crds)
    run.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
