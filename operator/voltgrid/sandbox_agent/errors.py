"""The agent's errors as HTTP answers: a status, a stable code and a message meant for the caller.

Handlers raise :class:`AgentError`; the outermost middleware turns it into the JSON body
``{"error": {"code", "message"}}`` (the gateway's shape, so a client sees one error format whether
the gateway or the agent refused it). Anything else is a bug and answers 500 with a log line.
"""

from __future__ import annotations

from voltgrid.errors import VoltgridError


class AgentError(VoltgridError):
    """A request the agent refuses, answered with ``status`` and ``code``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def bad_request(message: str) -> AgentError:
    return AgentError(400, "bad_request", message)


def not_found(message: str) -> AgentError:
    return AgentError(404, "not_found", message)


def forbidden_path(message: str) -> AgentError:
    return AgentError(403, "path_forbidden", message)


def conflict(message: str) -> AgentError:
    return AgentError(409, "conflict", message)


def unauthorized(message: str) -> AgentError:
    return AgentError(401, "unauthorized", message)
