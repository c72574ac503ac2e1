"""Fixtures: the helm binary and a render helper (see chart_render.py)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_render import ROOT, Render, run_template


def cached_helm() -> Path:
    """Where ``e2e/cluster/build-helm.sh`` puts helm for the pinned version (its gobuild.sh rule)."""
    lines = (ROOT / "e2e" / "cluster" / "versions.env").read_text().splitlines()
    pins = dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
    cache = Path(os.environ.get("VOLTGRID_CACHE", Path.home() / ".cache" / "voltgrid"))
    return cache / f"helm-{pins['HELM_VERSION']}" / "helm"


@pytest.fixture(scope="session")
def helm() -> str:
    """The pinned helm, never built here: building it from Go takes minutes, which a unit run must not
    spend unasked. CI builds it first (``.ci/run``, which sets ``CI``), so there a missing helm fails;
    elsewhere the chart-render tests are skipped with the command that enables them."""
    path = cached_helm()
    if path.is_file():
        return str(path)
    missing = f"helm is not built at {path}: run `make helm` (builds it from its Go module once, minutes)"
    if os.environ.get("CI"):
        pytest.fail(missing, pytrace=False)
    pytest.skip(missing)


@pytest.fixture(scope="session")
def render(helm: str) -> Render:
    """Render with ``values`` (a dict); fails the test with helm's message when the render fails."""

    def _render(values: dict[str, Any] | None = None, api_versions: Sequence[str] = ()) -> list[dict[str, Any]]:
        out = run_template(helm, values, api_versions)
        assert out.returncode == 0, out.stderr
        return [doc for doc in yaml.safe_load_all(out.stdout) if doc]

    return _render
