"""Fixtures: the helm binary and a render helper (see chart_render.py)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from typing import Any

import pytest
import yaml
from chart_render import ROOT, Render, run_template


@pytest.fixture(scope="session")
def helm() -> str:
    """The cached helm binary (the script builds it once, then only prints its path)."""
    out = subprocess.run(
        ["bash", str(ROOT / "e2e" / "cluster" / "build-helm.sh")], capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def render(helm: str) -> Render:
    """Render with ``values`` (a dict); fails the test with helm's message when the render fails."""

    def _render(values: dict[str, Any] | None = None, api_versions: Sequence[str] = ()) -> list[dict[str, Any]]:
        out = run_template(helm, values, api_versions)
        assert out.returncode == 0, out.stderr
        return [doc for doc in yaml.safe_load_all(out.stdout) if doc]

    return _render
