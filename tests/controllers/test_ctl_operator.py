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
from voltgrid.controllers.settings import ENV_PREFIX, OperatorSettings, SettingsError


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


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"METRICS": "0.0.0.0:8082"}, "metrics endpoint '0.0.0.0:8082': expected http://HOST:PORT/PATH"),
        ({"METRICS": "https://0.0.0.0:8082/metrics"}, "metrics endpoint .*: expected http://HOST:PORT/PATH"),
        ({"LIVENESS": "http://0.0.0.0/healthz"}, "liveness endpoint .*: expected http://HOST:PORT/PATH"),
        (
            {"SWEEP_INTERVAL": "ten"},
            r"sweep_interval \(VOLTGRID_OPERATOR_SWEEP_INTERVAL='ten'\): .*valid number",
        ),
        ({"SWEEP_INTERVAL": "0"}, "sweep_interval must be a number of seconds, above zero"),
        ({"REAP_GRACE": "-5"}, "reap_grace must be a number of seconds, zero or more"),
        ({"REAP_GRACE": "nan"}, "reap_grace must be a number of seconds, zero or more"),
        ({"PEERING": "voltgrid", "NAMESPACES": "team-*,!team-x"}, "name at least one namespace literally"),
    ],
)
def test_a_bad_setting_is_named_before_anything_starts(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        OperatorSettings.from_env({f"{ENV_PREFIX}{k}": v for k, v in env.items()})


@pytest.mark.parametrize(
    ("namespaces", "expected"),
    [((), None), (("prod",), "prod"), (("team-*", "prod", "dev"), "prod"), (("!kube-*",), None)],
)
def test_the_peering_object_lives_in_the_first_literal_namespace(
    namespaces: tuple[str, ...], expected: str | None
) -> None:
    assert OperatorSettings(namespaces=namespaces).peering_namespace == expected
