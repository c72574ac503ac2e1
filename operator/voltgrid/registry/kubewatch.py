"""How long the data plane's kubernetes_asyncio watches run, and when a silent one counts as dead.

kubernetes_asyncio sets no client timeout of its own, so a watch whose connection was dropped
without a FIN (a node or NAT failure) would wait forever and leave what it follows stale. Every
data-plane watch (the registry's EndpointSlices, the gateway's Functions) asks the server to end it
after ``WATCH_TIMEOUT_S`` and gives up on a connection silent for that plus ``WATCH_SILENCE_SLACK_S``.
It lives here, the lowest data-plane layer that talks to the apiserver, so the gateway reuses it.
"""

from __future__ import annotations

from typing import Final

import aiohttp

#: Seconds the apiserver keeps one watch open (the watcher then watches or lists again).
WATCH_TIMEOUT_S: Final = 300
#: Seconds of silence past the watch's own timeout before its connection counts as dead.
WATCH_SILENCE_SLACK_S: Final = 30.0
#: Seconds to connect, and for one LIST request (or page) to answer.
REQUEST_TIMEOUT_S: Final = 60.0
#: The client timeouts of a watch request (``_request_timeout=`` of a kubernetes_asyncio call).
WATCH_TIMEOUTS: Final = aiohttp.ClientTimeout(
    total=None, sock_connect=REQUEST_TIMEOUT_S, sock_read=WATCH_TIMEOUT_S + WATCH_SILENCE_SLACK_S
)
