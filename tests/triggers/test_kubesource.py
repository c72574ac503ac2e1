"""The dispatcher in a cluster: Functions and their Secrets from the apiserver; no credentials exits 2."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from kubernetes_asyncio import client

from voltgrid.api.triggers import SecretKeyRef
from voltgrid.triggers import main as triggers_main
from voltgrid.triggers.kubesource import KubeSource, lookup

QUEUE = {"broker": "RedisStreams", "urlFrom": {"name": "redis"}, "queue": "o"}


def function(ns: str, name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "voltgrid.dev/v1alpha1",
        "kind": "Function",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"image": "x", **spec},
    }


FUNCTIONS = [
    function("shop", "agent", triggers=[{"name": "orders", "type": "queue", "queue": QUEUE}]),
    function("bank", "ledger", triggers=[{"name": "tx", "type": "queue", "queue": QUEUE}]),  # no Secret there
    function("shop", "broken", port=99999),  # invalid: skipped, named in the log
]
SECRETS = {("shop", "redis"): {"url": base64.b64encode(b"redis://127.0.0.1:6379/0\n").decode(), "bad": "!!"}}


@pytest.fixture
async def api() -> AsyncIterator[client.ApiClient]:
    async def functions(_: web.Request) -> web.Response:
        return web.json_response({"apiVersion": "voltgrid.dev/v1alpha1", "kind": "FunctionList", "items": FUNCTIONS})

    async def secret(request: web.Request) -> web.Response:
        data = SECRETS.get((request.match_info["ns"], request.match_info["name"]))
        if data is None:
            return web.json_response({"kind": "Status", "code": 404, "reason": "NotFound"}, status=404)
        return web.json_response({"apiVersion": "v1", "kind": "Secret", "metadata": {}, "data": data})

    app = web.Application()
    app.router.add_get("/apis/voltgrid.dev/v1alpha1/functions", functions)
    app.router.add_get("/api/v1/namespaces/{ns}/secrets/{name}", secret)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    api = client.ApiClient(client.Configuration(host=str(server.make_url("")).rstrip("/")))
    try:
        yield api
    finally:
        await api.close()
        await server.close()


async def test_functions_and_their_secrets(api: client.ApiClient, caplog: pytest.LogCaptureFixture) -> None:
    functions, secrets = await KubeSource(api).load()
    assert [(f.metadata.namespace, f.metadata.name) for f in functions] == [("shop", "agent"), ("bank", "ledger")]
    get = lookup(secrets)
    assert get("shop", SecretKeyRef(name="redis")) == "redis://127.0.0.1:6379/0"
    assert get("bank", SecretKeyRef(name="redis")) is None  # another namespace's Secret is never used
    messages = [r.getMessage() for r in caplog.records]
    assert any("shop/broken skipped" in m and "port" in m for m in messages)
    assert any("Secret bank/redis cannot be read (404)" in m for m in messages)
    assert any("key bad is not text" in m for m in messages)


def test_without_functions_and_credentials_exits_2_naming_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    assert triggers_main.main(["--gateway", "http://127.0.0.1:1", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "without --functions, voltgrid triggers reads the cluster's Functions" in err
