"""The per-request series, kept as plain numbers and written at scrape time, read as Prometheus's own."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from voltgrid.gateway.metrics import GatewayMetrics


def samples(metrics: GatewayMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_requests_latency_and_bytes_per_function() -> None:
    m = GatewayMetrics()
    for status, seconds, bytes_in, bytes_out in [
        (200, 0.0004, 0, 10),
        (200, 0.001, 5, 10),
        (502, 0.3, 0, 0),
        (200, 50.0, 1, 1),
    ]:
        m.request_done("default/echo", status, seconds, bytes_in, bytes_out)
    got = samples(m)
    fn = ("function", "default/echo")
    assert got[("voltgrid_requests_total", (("code", "200"), fn))] == 3
    assert got[("voltgrid_requests_total", (("code", "502"), fn))] == 1
    bucket = "voltgrid_request_duration_seconds_bucket"
    assert got[(bucket, (fn, ("le", "0.001")))] == 2  # le is inclusive: 0.001 counts
    assert got[(bucket, (fn, ("le", "0.25")))] == 2
    assert got[(bucket, (fn, ("le", "0.5")))] == 3
    assert got[(bucket, (fn, ("le", "30.0")))] == 3
    assert got[(bucket, (fn, ("le", "+Inf")))] == 4
    assert got[("voltgrid_request_duration_seconds_count", (fn,))] == 4
    assert abs(got[("voltgrid_request_duration_seconds_sum", (fn,))] - 50.3014) < 1e-9
    assert got[("voltgrid_request_bytes_total", (("direction", "in"), fn))] == 6
    assert got[("voltgrid_request_bytes_total", (("direction", "out"), fn))] == 21
