"""The `voltgrid` command: one entry point whose subcommands start each Voltgrid component.

Subcommands import their component lazily, so `voltgrid crds` does not pay for aiohttp or kopf
and a component's missing optional dependency breaks only its own subcommand.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from voltgrid.api import crdgen, crdref
from voltgrid.cli import dev, gateway, run, sessions

DEFAULT_CRD_DIR = Path("crds")
DEFAULT_REFERENCE = Path("docs") / "crd-reference.md"


def _crds(args: argparse.Namespace) -> int:
    directory, reference = Path(args.out), Path(args.reference)
    if args.check:
        stale = crdgen.drift(directory)
        if not reference.is_file() or reference.read_text() != crdref.render():
            stale.append(str(reference))
        if stale:
            print(
                f"error: {directory}/ differs from the models: {', '.join(stale)}; run `voltgrid crds`", file=sys.stderr
            )
            return 1
        print(f"{directory}/ and {reference} match the models")
        return 0
    for path in crdgen.write(directory):
        print(path)
    reference.parent.mkdir(parents=True, exist_ok=True)
    reference.write_text(crdref.render())
    print(reference)
    return 0


def _operator(args: argparse.Namespace) -> int:
    from voltgrid.controllers.main import check_credentials, run_operator  # noqa: PLC0415 (lazy: kopf only here)
    from voltgrid.controllers.settings import OperatorSettings  # noqa: PLC0415
    from voltgrid.errors import VoltgridError  # noqa: PLC0415

    try:
        settings = OperatorSettings.load(config=args.config, env=os.environ, flags=OperatorSettings.flags_from(args))
        check_credentials()
    except VoltgridError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # kopf run as a library configures no logging; its per-object INFO lines would be one per event.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kopf").setLevel(logging.WARNING)
    run_operator(settings)
    return 0


DELEGATED = {
    "webhook": ("voltgrid.webhooks.server", "admission webhooks: session storage and isolation policy (TLS)"),
    "janitor": ("voltgrid.webhooks.janitor", "remove session directories past their retention"),
    "gpu-slicer": ("voltgrid.gpu_slicer.main", "kubelet device plugin for fractional GPUs"),
    "triggers": ("voltgrid.triggers.main", "the trigger dispatcher: cron, queues, the CloudEvents ingress"),
}


def build_parser() -> argparse.ArgumentParser:
    from voltgrid.controllers.settings import OperatorSettings  # noqa: PLC0415 (its flags; no kopf there)

    parser = argparse.ArgumentParser(prog="voltgrid", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    crds = sub.add_parser("crds", help="generate crds/*.yaml and docs/crd-reference.md from the API models")
    crds.add_argument("--out", default=str(DEFAULT_CRD_DIR), help="output directory (default: crds)")
    crds.add_argument(
        "--reference", default=str(DEFAULT_REFERENCE), help="the Markdown reference (default: docs/crd-reference.md)"
    )
    crds.add_argument("--check", action="store_true", help="fail if the CRDs or the reference differ from the models")
    crds.set_defaults(handler=_crds)
    run.add_parser(sub)
    dev.add_parser(sub)
    gateway.add_parser(sub)
    sessions.add_parser(sub)
    operator = sub.add_parser("operator", help="run the kopf controllers for Function, Session, Sandbox")
    OperatorSettings.add_arguments(operator)
    operator.set_defaults(handler=_operator)
    for name, (_module, text) in DELEGATED.items():
        sub.add_parser(name, help=f"{text} (own flags: voltgrid {name} --help)", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        # These components parse their own flags; hand them the rest of the command line.
        component: Callable[[Sequence[str]], int] = importlib.import_module(DELEGATED[argv[0]][0]).main
        return component(argv[1:])
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
