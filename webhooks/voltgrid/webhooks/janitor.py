"""The session-storage janitor: removes ``<root>/<namespace>/<function>/<session-id>`` past retention.

Why it looks at the files and not at session records: sessions live in the gateway's memory, not in
etcd, so the only durable trace of an old session is its directory. A directory is *expired* when the
newest modification time inside it (the directory itself and everything below, symlinks not followed)
is older than the retention of its Function (``spec.storage.retention``, else ``--retention``).
It is never removed while the session is live (:mod:`voltgrid.webhooks.catalog`): liveness is asked
before the scan and asked again just before removing, so a session woken in between keeps its files.

Safety: only names that are DNS labels at each of the three levels are considered; symlinks are never
followed (``shutil.rmtree`` unlinks them); nothing above the session level is removed (the kubelet
re-creates sub-paths, and removing a parent could race a pod start). ``--dry-run`` removes nothing and
reports what it would do. Each decision is printed as one JSON line; Prometheus counters
``voltgrid_janitor_removed_total{dry_run}``, ``voltgrid_janitor_kept_total{reason}`` and
``voltgrid_janitor_bytes_freed_total`` are served on ``--metrics-port`` in loop mode.

Runs as a CronJob (one-shot, the default) or as a Deployment (``--interval 1h``), mounting the claim at
``--root``; it needs read/write on every session directory (uid 0 or a matching fsGroup) and RBAC to
list pods, sessions and functions cluster-wide.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Final, Literal

import pydantic
from prometheus_client import REGISTRY, CollectorRegistry, Counter, start_http_server
from pydantic_settings import SettingsConfigDict

from voltgrid.api.common import parse_duration
from voltgrid.api.settings import LayeredSettings, Names, SettingsError
from voltgrid.registry.kubeapi import ConfigurationCredentials, KubeApi
from voltgrid.webhooks import contract
from voltgrid.webhooks.catalog import Catalog, KubernetesCatalog, SessionCatalog
from voltgrid.webhooks.kube import api_client

log = logging.getLogger(__name__)

DEFAULT_RETENTION: Final = "168h"
DEFAULT_ROOT: Final = "/var/lib/voltgrid/sessions"
DEFAULT_METRICS_PORT: Final = 9090


@dataclass(frozen=True)
class SessionDir:
    namespace: str
    function: str
    session: str
    path: Path
    #: Newest mtime (epoch seconds) of the directory and everything below; None when unreadable.
    newest: float | None
    size: int


@dataclass(frozen=True)
class Decision:
    dir: SessionDir
    action: Literal["remove", "keep"]
    reason: str


class JanitorMetrics:
    """The janitor's Prometheus counters (in ``registry``; tests pass their own)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.removed = Counter(
            "voltgrid_janitor_removed",
            "Session directories removed (dry_run: would have been)",
            ["dry_run"],
            registry=registry,
        )
        self.kept = Counter(
            "voltgrid_janitor_kept", "Session directories kept, by reason", ["reason"], registry=registry
        )
        self.bytes_freed = Counter("voltgrid_janitor_bytes_freed", "Bytes of files removed", registry=registry)


def _raise(exc: OSError) -> None:
    raise exc


def _measure(path: Path) -> tuple[float | None, int]:
    try:
        newest, size = path.lstat().st_mtime, 0
        for top, dirs, files in os.walk(path, onerror=_raise):
            for name in (*dirs, *files):
                st = os.lstat(os.path.join(top, name))
                newest = max(newest, st.st_mtime)
                size += st.st_size if name in files else 0
    except OSError as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None, 0
    return newest, size


def _subdirs(path: Path) -> list[tuple[str, Path]]:
    try:
        entries = list(os.scandir(path))
    except OSError as exc:
        log.warning("cannot list %s: %s", path, exc)
        return []
    return sorted(
        (e.name, Path(e.path))
        for e in entries
        if e.is_dir(follow_symlinks=False) and re.fullmatch(contract.DNS_LABEL_PATTERN, e.name)
    )


def scan(root: Path) -> list[SessionDir]:
    """Every ``<namespace>/<function>/<session>`` directory under ``root`` with its age and size."""
    found = []
    for namespace, ns_path in _subdirs(root):
        for function, fn_path in _subdirs(ns_path):
            for session, path in _subdirs(fn_path):
                newest, size = _measure(path)
                found.append(SessionDir(namespace, function, session, path, newest, size))
    return found


def decide(dirs: Sequence[SessionDir], catalog: Catalog, now: datetime, default_retention: timedelta) -> list[Decision]:
    """Remove or keep, with the reason, for each directory (pure)."""
    decisions = []
    for d in dirs:
        retention = catalog.retention.get((d.namespace, d.function), default_retention)
        if (d.namespace, d.session) in catalog.live:
            decisions.append(Decision(d, "keep", "live"))
        elif d.newest is None:
            decisions.append(Decision(d, "keep", "unreadable"))
        elif now - datetime.fromtimestamp(d.newest, UTC) <= retention:
            decisions.append(Decision(d, "keep", "retained"))
        else:
            decisions.append(Decision(d, "remove", f"unused for longer than {retention}"))
    return decisions


def _report(decision: Decision, action: str, now: datetime) -> None:
    d = decision.dir
    age = None if d.newest is None else round(now.timestamp() - d.newest)
    line = {
        "path": str(d.path),
        "namespace": d.namespace,
        "function": d.function,
        "session": d.session,
        "action": action,
        "reason": decision.reason,
        "ageSeconds": age,
        "bytes": d.size,
    }
    print(json.dumps(line), flush=True)


async def run_once(
    root: Path,
    catalog: SessionCatalog,
    now: datetime,
    default_retention: timedelta,
    *,
    dry_run: bool,
    metrics: JanitorMetrics,
) -> list[Decision]:
    """One pass: snapshot, scan, decide, re-check liveness, remove (unless ``dry_run``), report."""
    first = await catalog.snapshot()
    decisions = decide(await asyncio.to_thread(scan, root), first, now, default_retention)
    if any(d.action == "remove" for d in decisions):
        again = await catalog.snapshot()
        decisions = [
            Decision(d.dir, "keep", "live")
            if d.action == "remove" and (d.dir.namespace, d.dir.session) in again.live
            else d
            for d in decisions
        ]
    final = []
    for planned in decisions:
        outcome = planned
        if planned.action == "keep":
            metrics.kept.labels(reason=planned.reason).inc()
            _report(planned, "keep", now)
        elif dry_run:
            metrics.removed.labels(dry_run="true").inc()
            _report(planned, "would-remove", now)
        else:
            outcome = await asyncio.to_thread(_remove, planned, metrics)
            _report(outcome, outcome.action, now)
        final.append(outcome)
    return final


def _remove(decision: Decision, metrics: JanitorMetrics) -> Decision:
    path = decision.dir.path
    try:
        if path.is_symlink() or not path.is_dir():
            raise OSError(f"{path} is no longer a directory")
        shutil.rmtree(path)
    except OSError as exc:
        log.warning("cannot remove %s: %s", path, exc)
        metrics.kept.labels(reason="error").inc()
        return Decision(decision.dir, "keep", f"error: {exc}")
    metrics.removed.labels(dry_run="false").inc()
    metrics.bytes_freed.inc(decision.dir.size)
    return decision


def _duration(value: object) -> object:
    """Go-style duration text (``168h``) as a timedelta; ValueError names what is wrong."""
    return parse_duration(value) if isinstance(value, str) else value


class JanitorSettings(LayeredSettings):
    """``voltgrid janitor`` settings: flag > ``VOLTGRID_JANITOR_*`` environment > ``--config`` file > default."""

    model_config = SettingsConfigDict(env_prefix="VOLTGRID_JANITOR_", frozen=True)

    root: Path = Path(DEFAULT_ROOT)
    """Where the session-storage claim is mounted."""
    retention: Annotated[timedelta, pydantic.BeforeValidator(_duration)] = parse_duration(DEFAULT_RETENTION)
    """Retention when the Function sets none (Go duration, e.g. 168h)."""
    dry_run: bool = False
    """Remove nothing; report what would be removed."""
    interval: Annotated[timedelta | None, pydantic.BeforeValidator(_duration)] = None
    """Run every interval (e.g. 1h, a Deployment, metrics served) instead of one pass (a CronJob)."""
    metrics_port: int = DEFAULT_METRICS_PORT
    """Port of the Prometheus metrics in loop mode."""
    kubeconfig: Annotated[str | None, Names(env=("KUBECONFIG",))] = None
    """Kubeconfig used outside a cluster."""


def parse_settings(argv: Sequence[str] | None, env: Mapping[str, str]) -> JanitorSettings:
    """The command line over the environment over a ``--config`` file; SettingsError names a bad value."""
    return JanitorSettings.parse(
        argv, env, prog="voltgrid janitor", description="Remove session directories past retention"
    )


async def run(settings: JanitorSettings, catalog: SessionCatalog, metrics: JanitorMetrics) -> None:
    """One pass, or a pass every ``settings.interval`` until cancelled."""
    while True:
        try:
            decisions = await run_once(
                settings.root, catalog, datetime.now(UTC), settings.retention, dry_run=settings.dry_run, metrics=metrics
            )
        except Exception:
            if settings.interval is None:
                raise
            log.exception("janitor pass failed; the next one runs in %s", settings.interval)
        else:
            removed = sum(d.action == "remove" for d in decisions)
            verb = "would remove" if settings.dry_run else "removed"
            log.info("%s %d of %d session directories", verb, removed, len(decisions))
        if settings.interval is None:
            return
        await asyncio.sleep(settings.interval.total_seconds())


async def _main(settings: JanitorSettings) -> None:
    client = await api_client(settings.kubeconfig)
    kube = KubeApi(ConfigurationCredentials(client.configuration), user_agent="voltgrid-janitor")
    try:
        await run(settings, KubernetesCatalog(kube), JanitorMetrics())
    finally:
        await kube.close()
        await client.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``voltgrid janitor``: one pass (or a loop with ``--interval``); returns the exit status."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    try:
        settings = parse_settings(argv, os.environ)
    except SettingsError as exc:
        log.error("voltgrid janitor: %s", exc)
        return 2
    if not settings.root.is_dir():
        log.error("voltgrid janitor: --root %s is not a directory (is the claim mounted?)", settings.root)
        return 1
    if settings.interval is not None:
        start_http_server(settings.metrics_port)
    asyncio.run(_main(settings))
    return 0
