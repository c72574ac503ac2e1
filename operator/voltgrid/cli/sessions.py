"""``voltgrid sessions``: create, get, list, renew and delete sessions through the Session API.

Talks to a gateway (``--gateway``, or $VOLTGRID_GATEWAY, default http://127.0.0.1:8080) with an
optional bearer token (``--token`` or $VOLTGRID_TOKEN) and prints the JSON answers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

DEFAULT_GATEWAY = "http://127.0.0.1:8080"
TIMEOUT = 30.0


def gateway_url(value: str) -> str:
    """``--gateway`` (or $VOLTGRID_GATEWAY) as a base URL; argparse reports the error with usage."""
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{value!r} is not a gateway URL: expected http(s)://HOST[:PORT]")
    return value.rstrip("/")


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("sessions", help="manage sessions through the gateway's Session API")
    p.add_argument(
        "--gateway",
        type=gateway_url,
        default=os.environ.get("VOLTGRID_GATEWAY", DEFAULT_GATEWAY),
        help="gateway base URL",
    )
    p.add_argument("--token", default=os.environ.get("VOLTGRID_TOKEN"), help="bearer token")
    p.add_argument("-f", "--function", required=True, help="the function, as namespace/name (or name in default)")
    actions = p.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a session")
    create.add_argument("session_id", nargs="?", help="the id to use (minted when left out)")
    create.add_argument("--idle-timeout", help="e.g. 15m")
    create.add_argument("--max-lifetime", help="e.g. 6h")
    actions.add_parser("list", help="list the function's sessions with their usage")
    for name in ("get", "delete"):
        actions.add_parser(name, help=f"{name} a session").add_argument("session_id")
    renew = actions.add_parser("renew", help="reset the idle timer and extend the lifetime")
    renew.add_argument("session_id")
    renew.add_argument("--max-lifetime", help="new lifetime from now, e.g. 2h")
    p.set_defaults(handler=run)


def quote(part: str) -> str:
    """One path segment, never more (a session id or name with ``/`` or ``?`` stays inside it)."""
    return urllib.parse.quote(part, safe="")


def request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None]:
    """(method, path, body) of the Session API call for ``args``."""
    namespace, _, name = args.function.rpartition("/")
    base = f"/_voltgrid/v1/functions/{quote(namespace or 'default')}/{quote(name)}/sessions"
    action = args.action
    if action == "create":
        body = {
            k: v
            for k, v in {
                "sessionId": args.session_id,
                "idleTimeout": args.idle_timeout,
                "maxLifetime": args.max_lifetime,
            }.items()
            if v
        }
        return "POST", base, body
    if action == "list":
        return "GET", base, None
    if action == "get":
        return "GET", f"{base}/{quote(args.session_id)}", None
    if action == "delete":
        return "DELETE", f"{base}/{quote(args.session_id)}", None
    renewal = {"maxLifetime": args.max_lifetime} if args.max_lifetime else {}
    return "POST", f"{base}/{quote(args.session_id)}/renew", renewal


def run(args: argparse.Namespace) -> int:
    method, path, body = request(args)
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"
    req = urllib.request.Request(args.gateway + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            answer = resp.read()
    except urllib.error.HTTPError as e:
        try:
            error = json.loads(e.read())["error"]
            print(f"error {e.code} ({error['code']}): {error['message']}", file=sys.stderr)
        except (ValueError, KeyError, TypeError):
            print(f"error {e.code}: {e.reason}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as e:
        print(f"error: cannot reach the gateway at {args.gateway}: {e}", file=sys.stderr)
        return 1
    try:
        print(json.dumps(json.loads(answer or b"{}"), indent=2))
    except ValueError:
        print(f"error: {args.gateway} answered with something not JSON: is it a Voltgrid gateway?", file=sys.stderr)
        return 1
    return 0
