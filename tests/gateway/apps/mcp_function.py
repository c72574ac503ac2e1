"""An MCP server (official SDK, ``MCPServer``) used as a function in gateway tests.

Transport from $MCP_TRANSPORT: ``streamable-http`` (default) or ``sse`` (legacy HTTP+SSE).
Its ``whoami`` tool tells which instance and storage served the call; ``remember``/``recall``
keep per-MCP-session state in memory, so a call that reached another instance would notice.
"""

from __future__ import annotations

import os
from typing import Any

from mcp.server.mcpserver import MCPServer

server = MCPServer("voltgrid-test")
_memory: dict[str, str] = {}


@server.tool()
def whoami() -> dict[str, Any]:
    """Identity of the instance that serves this call."""
    return {"instance": os.environ.get("VOLTGRID_INSTANCE_ID"), "session": os.environ.get("VOLTGRID_SESSION_ID")}


@server.tool()
def remember(key: str, value: str) -> str:
    _memory[key] = value
    return "ok"


@server.tool()
def recall(key: str) -> str:
    return _memory.get(key, "")


if __name__ == "__main__":
    transport = os.environ.get("MCP_TRANSPORT", "streamable-http")
    port = int(os.environ["PORT"])
    if transport == "sse":
        server.run("sse", host="127.0.0.1", port=port)
    else:
        server.run("streamable-http", host="127.0.0.1", port=port)
