"""The whole operator (kopf + handlers) against kmock: wiring, startup adoption, clean stop."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import kmock
import kopf
import pytest
from ctlfakes import FUNCTIONS, NS, PODS, add_node, function, names, stored, virtual_now

from voltgrid.controllers.core import Controllers
from voltgrid.controllers.handlers import in_cluster_server
from voltgrid.controllers.main import operate
from voltgrid.controllers.metrics import MetricsEndpointError, parse_endpoint
from voltgrid.controllers.settings import OperatorSettings


async def test_operator_brings_a_function_to_ready_and_counts_it(
    api: kmock.KubernetesEmulator, unused_tcp_port: int
) -> None:
    add_node(api)
    api.objects[FUNCTIONS, NS, "echo"] = function(isolation={"allowUnsandboxed": True}, scaling={"warmPool": 1})

    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=str(api.url))

    stop, ready = asyncio.Event(), asyncio.Event()
    metrics_url = f"http://127.0.0.1:{unused_tcp_port}/metrics"
    settings = OperatorSettings(namespaces=(NS,), liveness="", metrics=metrics_url)
    task = asyncio.create_task(operate(settings, login=login, clock=virtual_now, stop_flag=stop, ready_flag=ready))
    try:
        for _ in range(300):
            await asyncio.sleep(0.1)
            if (stored(api, FUNCTIONS, "echo").get("status") or {}).get("warmInstances") == 1:
                break
        status = stored(api, FUNCTIONS, "echo")["status"]
        assert status["conditions"][0]["status"] == "True"
        assert len(names(api, PODS)) == 1
        async with aiohttp.ClientSession() as http, http.get(metrics_url) as resp:
            scraped = await resp.text()
        assert 'voltgrid_operator_reconciles_total{queue="functions",result="ok"}' in scraped
        assert 'voltgrid_operator_status_writes_total{resource="functions"}' in scraped
        assert 'voltgrid_operator_relists_total{reason="start",resource="functions"} 1.0' in scraped
        assert "voltgrid_operator_active 1.0" in scraped
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


@pytest.mark.parametrize(
    ("environ", "server"),
    [
        ({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}, "https://10.96.0.1:443"),
        ({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}, "https://[fd00::1]:6443"),
        ({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, "https://kubernetes.default.svc"),
        ({}, "https://kubernetes.default.svc"),
    ],
)
def test_in_cluster_login_uses_the_injected_apiserver_address(environ: dict[str, str], server: str) -> None:
    info = kopf.ConnectionInfo(server="https://kubernetes.default.svc", token="t", ca_path="/ca.crt")
    got = in_cluster_server(info, environ)
    assert (got.server, got.token, got.ca_path) == (server, "t", "/ca.crt")


async def test_liveness_fails_when_a_background_task_crashed(
    api: kmock.KubernetesEmulator, monkeypatch: pytest.MonkeyPatch, unused_tcp_port: int
) -> None:
    async def crash(self: Controllers) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Controllers, "run_functions", crash)

    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=str(api.url))

    stop, ready = asyncio.Event(), asyncio.Event()
    settings = OperatorSettings(namespaces=(NS,), liveness=f"http://127.0.0.1:{unused_tcp_port}/healthz", metrics="")
    task = asyncio.create_task(operate(settings, login=login, clock=virtual_now, stop_flag=stop, ready_flag=ready))
    try:
        status = 0
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                await asyncio.sleep(0.1)
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with http.get(f"http://127.0.0.1:{unused_tcp_port}/healthz") as resp:
                        status = resp.status
                if status == 500:
                    break
        assert status == 500  # the kubelet restarts the operator instead of it idling broken
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


@pytest.mark.parametrize("url", ["0.0.0.0:8082", "https://0.0.0.0:8082/metrics", "http://0.0.0.0/metrics"])
def test_a_bad_metrics_endpoint_is_named(url: str) -> None:
    with pytest.raises(MetricsEndpointError, match="expected http://HOST:PORT/PATH"):
        parse_endpoint(url)
