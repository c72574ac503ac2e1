"""Helpers to render the chart with the real helm (built from its Go module by e2e/cluster/build-helm.sh)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "voltgrid"
NAMESPACE = "voltgrid-system"
KUBE_VERSION = "1.34.0"

Render = Callable[..., list[dict[str, Any]]]


def template_args(values: dict[str, Any] | None, api_versions: Sequence[str], release: str) -> list[str]:
    args = ["template", release, str(CHART), "--namespace", NAMESPACE, "--kube-version", KUBE_VERSION]
    for api in api_versions:
        args += ["--api-versions", api]
    if values:
        args += ["--values", "-"]
    return args


def run_template(
    helm: str, values: dict[str, Any] | None = None, api_versions: Sequence[str] = (), release: str = "voltgrid"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm, *template_args(values, api_versions, release)],
        input=yaml.safe_dump(values) if values else None,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
