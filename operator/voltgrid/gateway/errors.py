"""Gateway errors as HTTP answers: a status and a JSON body ``{"error": {"code", "message"}}``.

Handlers and middlewares raise :class:`GatewayError`; the outermost middleware turns it (and any
aiohttp HTTP error, and — as a last resort — any bug) into that body, so that a client always
gets a machine-readable reason and never an HTML page or a hang.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from aiohttp import web

from voltgrid.errors import VoltgridError


class GatewayError(VoltgridError):
    """An error answered to the client with ``status`` and a stable ``code``."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def error_response(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=error_body(code, message), content_type="application/json", headers=headers)


def bad_request(message: str, code: str = "bad_request") -> GatewayError:
    return GatewayError(400, code, message)


def not_found(message: str, code: str = "not_found") -> GatewayError:
    return GatewayError(404, code, message)


def unavailable(message: str, retry_after: int, code: str = "unavailable") -> GatewayError:
    return GatewayError(503, code, message, {"Retry-After": str(retry_after)})
