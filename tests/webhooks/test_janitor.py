"""The janitor against a real directory tree, with a fake session catalog."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from voltgrid.api import constants
from voltgrid.api.settings import SettingsError
from voltgrid.registry.kubeapi import LIST_PAGE_SIZE, KubeApi, StaticCredentials
from voltgrid.webhooks import janitor
from voltgrid.webhooks.catalog import Catalog, KubernetesCatalog

NOW = datetime(2030, 6, 1, tzinfo=UTC)
RETENTION = timedelta(hours=168)


class FakeCatalog:
    """Answers each snapshot() with the next catalog of a list (the last one repeats)."""

    def __init__(self, *snapshots: Catalog) -> None:
        self.snapshots = list(snapshots) or [Catalog()]
        self.calls = 0

    async def snapshot(self) -> Catalog:
        self.calls += 1
        return self.snapshots[min(self.calls, len(self.snapshots)) - 1]


def session_dir(root: Path, rel: str, age: timedelta, files: dict[str, timedelta] | None = None) -> Path:
    """A session directory whose files and the directory itself were last modified ``age`` ago."""
    path = root / rel
    path.mkdir(parents=True)
    for name, file_age in (files or {"memory.json": age}).items():
        f = path / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x" * 100)
        stamp = (NOW - file_age).timestamp()
        os.utime(f, (stamp, stamp))
    for d in sorted({p for p in path.rglob("*") if p.is_dir()} | {path}, reverse=True):
        stamp = (NOW - age).timestamp()
        os.utime(d, (stamp, stamp))
    return path


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def run(
    root: Path, catalog: FakeCatalog, registry: CollectorRegistry, *, dry_run: bool = False
) -> dict[str, str]:
    metrics = janitor.JanitorMetrics(registry)
    decisions = await janitor.run_once(root, catalog, NOW, RETENTION, dry_run=dry_run, metrics=metrics)
    return {str(d.dir.path.relative_to(root)): f"{d.action}:{d.reason}" for d in decisions}


async def test_expired_removed_live_and_recent_kept(
    tmp_path: Path, registry: CollectorRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    old = session_dir(tmp_path, "ns/fn/old", timedelta(days=8))
    live = session_dir(tmp_path, "ns/fn/live", timedelta(days=30))
    recent = session_dir(tmp_path, "ns/fn/recent", timedelta(days=1))
    fresh_file = session_dir(
        tmp_path, "ns/fn/touched", timedelta(days=30), {"a": timedelta(days=30), "d/b": timedelta(hours=1)}
    )
    result = await run(tmp_path, FakeCatalog(Catalog(live=frozenset({("ns", "live")}))), registry)
    assert result == {
        "ns/fn/old": "remove:unused for longer than 7 days, 0:00:00",
        "ns/fn/live": "keep:live",
        "ns/fn/recent": "keep:retained",
        "ns/fn/touched": "keep:retained",
    }
    assert not old.exists() and live.exists() and recent.exists() and fresh_file.exists()
    assert (tmp_path / "ns/fn").is_dir()  # parents are never removed
    assert sample(registry, "voltgrid_janitor_removed_total", dry_run="false") == 1
    assert sample(registry, "voltgrid_janitor_kept_total", reason="live") == 1
    assert sample(registry, "voltgrid_janitor_kept_total", reason="retained") == 2
    assert sample(registry, "voltgrid_janitor_bytes_freed_total") == 100
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {(line["session"], line["action"]) for line in lines} == {
        ("old", "remove"), ("live", "keep"), ("recent", "keep"), ("touched", "keep"),
    }  # fmt: skip


async def test_dry_run_removes_nothing_and_reports_both(
    tmp_path: Path, registry: CollectorRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    old = session_dir(tmp_path, "ns/fn/old", timedelta(days=8))
    live = session_dir(tmp_path, "ns/fn/live", timedelta(days=30))
    await run(tmp_path, FakeCatalog(Catalog(live=frozenset({("ns", "live")}))), registry, dry_run=True)
    assert old.exists() and live.exists()
    actions = {json.loads(line)["session"]: json.loads(line)["action"] for line in capsys.readouterr().out.splitlines()}
    assert actions == {"old": "would-remove", "live": "keep"}
    assert sample(registry, "voltgrid_janitor_removed_total", dry_run="true") == 1
    assert sample(registry, "voltgrid_janitor_bytes_freed_total") == 0


async def test_a_session_woken_during_the_pass_is_kept(tmp_path: Path, registry: CollectorRegistry) -> None:
    woken = session_dir(tmp_path, "ns/fn/s1", timedelta(days=30))
    catalog = FakeCatalog(Catalog(), Catalog(live=frozenset({("ns", "s1")})))
    assert await run(tmp_path, catalog, registry) == {"ns/fn/s1": "keep:live"}
    assert woken.exists() and catalog.calls == 2


async def test_function_retention_overrides_the_default(tmp_path: Path, registry: CollectorRegistry) -> None:
    session_dir(tmp_path, "ns/short/s", timedelta(hours=2))
    session_dir(tmp_path, "ns/long/s", timedelta(days=30))
    retention = {("ns", "short"): timedelta(hours=1), ("ns", "long"): timedelta(days=60)}
    result = await run(tmp_path, FakeCatalog(Catalog(retention=retention)), registry)
    assert result == {"ns/long/s": "keep:retained", "ns/short/s": "remove:unused for longer than 1:00:00"}


async def test_liveness_is_per_namespace(tmp_path: Path, registry: CollectorRegistry) -> None:
    session_dir(tmp_path, "ns-a/fn/s", timedelta(days=30))
    session_dir(tmp_path, "ns-b/fn/s", timedelta(days=30))
    result = await run(tmp_path, FakeCatalog(Catalog(live=frozenset({("ns-a", "s")}))), registry)
    assert result == {"ns-a/fn/s": "keep:live", "ns-b/fn/s": "remove:unused for longer than 7 days, 0:00:00"}


async def test_symlinks_and_foreign_names_are_left_alone(tmp_path: Path, registry: CollectorRegistry) -> None:
    outside = session_dir(tmp_path / "outside", "keep/me/please", timedelta(days=30))
    root = tmp_path / "root"
    (root / "ns/fn").mkdir(parents=True)
    (root / "ns/fn/link").symlink_to(outside)  # a symlinked "session" is not a session directory
    (root / "ns/Not_A_Label").mkdir()
    (root / "lost+found").mkdir()
    victim = session_dir(root, "ns/fn/s", timedelta(days=30))
    (victim / "escape").symlink_to(outside)  # a link inside an expired session: unlinked, not followed
    assert await run(root, FakeCatalog(), registry) == {"ns/fn/s": "remove:unused for longer than 7 days, 0:00:00"}
    assert outside.exists() and (outside / "memory.json").exists()
    assert (root / "ns/Not_A_Label").exists() and (root / "lost+found").exists()


def test_settings_and_bad_durations(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = janitor.parse_settings(
        ["--dry-run"], {"VOLTGRID_JANITOR_RETENTION": "24h", "VOLTGRID_JANITOR_ROOT": "/x"}
    )
    assert settings.retention == timedelta(hours=24) and settings.dry_run and settings.root == Path("/x")
    assert settings.interval is None
    assert janitor.parse_settings(["--interval", "1h"], {}).interval == timedelta(hours=1)
    with pytest.raises(SettingsError, match=r"setting retention \(--retention 'a week'\): invalid duration"):
        janitor.parse_settings(["--retention", "a week"], {})


def test_main_refuses_a_missing_root(tmp_path: Path) -> None:
    assert janitor.main(["--root", str(tmp_path / "nope")]) == 1


async def test_the_kubernetes_catalog_pages_pods_and_reads_retention_without_sessions_installed() -> None:
    """Over real HTTP: pods in two pages, the Session CRD absent (404: warned, not fatal), Functions."""

    queries: list[dict[str, str]] = []

    def pod(ns: str, session: str) -> dict[str, object]:
        return {"metadata": {"namespace": ns, "name": f"p-{session}", "labels": {constants.LABEL_SESSION: session}}}

    async def pods(request: web.Request) -> web.Response:
        queries.append(dict(request.query))
        if "continue" not in request.query:
            return web.json_response({"metadata": {"continue": "p2"}, "items": [pod("a", "s1")]})
        return web.json_response({"metadata": {"resourceVersion": "9"}, "items": [pod("b", "s2")]})

    async def functions(_: web.Request) -> web.Response:
        fn = {"metadata": {"namespace": "a", "name": "f"}, "spec": {"storage": {"retention": "2h"}}}
        return web.json_response({"metadata": {}, "items": [fn]})

    app = web.Application()
    app.router.add_get("/api/v1/pods", pods)
    app.router.add_get(f"/apis/{constants.API_VERSION}/functions", functions)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    api = KubeApi(StaticCredentials(str(server.make_url("")).rstrip("/")))
    try:
        snapshot = await KubernetesCatalog(api).snapshot()
    finally:
        await api.close()
        await server.close()
    assert snapshot.live == {("a", "s1"), ("b", "s2")}
    assert snapshot.retention == {("a", "f"): timedelta(hours=2)}
    assert [q.get("continue") for q in queries] == [None, "p2"]
    assert all(q["limit"] == str(LIST_PAGE_SIZE) and q["labelSelector"] == constants.LABEL_SESSION for q in queries)
