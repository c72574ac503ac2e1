"""OpenTelemetry through opentelemetry-api only: spans are no-ops until an SDK is installed.

The server span of each request continues the caller's W3C ``traceparent``; the headers sent to
the instance carry the gateway span's context, so an instance's own spans join the same trace.
Cold start, queue wait and upstream time are span attributes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, MutableMapping
from typing import Final

from opentelemetry import context, propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

TRACER_NAME: Final = "voltgrid.gateway"
ATTR_FUNCTION: Final = "voltgrid.function"
ATTR_SESSION: Final = "voltgrid.session"
ATTR_COLD_START: Final = "voltgrid.cold_start"
ATTR_QUEUE_WAIT_MS: Final = "voltgrid.queue_wait_ms"
ATTR_UPSTREAM_MS: Final = "voltgrid.upstream_ms"
ATTR_FORWARDED_TO: Final = "voltgrid.forwarded_to"
SERVER_ERROR: Final = 500


_TRACER: Final = trace.get_tracer(TRACER_NAME)  # a proxy: it follows an SDK installed later


def tracer() -> trace.Tracer:
    return _TRACER


class _Enabled:
    """Whether an SDK is installed. Without one every span is a no-op, so the data path skips them;
    a caller's ``traceparent`` then reaches the instance unchanged with the other end-to-end headers,
    and the trace still joins up. An SDK installed later is noticed within :data:`RECHECK` seconds
    (asking OpenTelemetry reads the environment: too slow to do per request)."""

    RECHECK: Final = 1.0

    def __init__(self) -> None:
        self.value = False
        self.checked = float("-inf")

    def __call__(self) -> bool:
        if self.value:
            return True
        now = time.monotonic()
        if now - self.checked >= self.RECHECK:
            self.checked = now
            self.value = not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
        return self.value


enabled: Final = _Enabled()


def start_server_span(method: str, path: str, headers: Mapping[str, str]) -> tuple[Span, object]:
    """Start the request's span as a child of the caller's context; returns it and a detach token."""
    parent = propagate.extract(headers)
    span = tracer().start_span(
        f"{method} {path}",
        context=parent,
        kind=SpanKind.SERVER,
        attributes={"http.request.method": method, "url.path": path},
    )
    token = context.attach(trace.set_span_in_context(span, parent))
    return span, token


def end_server_span(span: Span, token: object, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= SERVER_ERROR:
        span.set_status(Status(StatusCode.ERROR))
    span.end()
    context.detach(token)  # type: ignore[arg-type]


def inject(headers: MutableMapping[str, str]) -> None:
    """Add ``traceparent`` (and ``tracestate``) of the current span to outgoing headers."""
    propagate.inject(headers)
