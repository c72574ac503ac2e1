"""What the chart carries from elsewhere stays identical to its source, and the chart agrees with the code:
CRDs, RuntimeClasses, deploy/voltgrid.yaml, the webhook configurations, RBAC justifications, the Dockerfile."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from chart_render import CHART, NAMESPACE, ROOT, Render

from voltgrid.webhooks import config


def yaml_files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*.yaml"))}


@pytest.mark.parametrize(
    ("source", "copy"),
    [("crds", "charts/voltgrid/crds"), ("runtimeclasses", "charts/voltgrid/files/runtimeclasses")],
)
def test_chart_copies_match_their_source(source: str, copy: str) -> None:
    want, got = yaml_files(ROOT / source), yaml_files(ROOT / copy)
    assert want, f"{source}/ is empty"
    assert got == want, f"{copy}/ differs from {source}/: run `bash scripts/sync-chart.sh`"


def test_rendered_manifest_is_current(helm: str) -> None:
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "render-manifest.sh"), "--stdout"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    current = (ROOT / "deploy" / "voltgrid.yaml").read_text()
    assert out.stdout == current, "deploy/voltgrid.yaml is stale: run `bash scripts/render-manifest.sh`"


def _strip_runtime(obj: dict[str, Any]) -> dict[str, Any]:
    """The parts of a webhook configuration both sides own (labels/annotations are the chart's)."""
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": obj["metadata"]["name"],
        "webhooks": obj["webhooks"],
    }


@pytest.mark.parametrize("mode", ["self", "certManager"])
def test_webhook_configurations_match_the_builders(render: Render, mode: str) -> None:
    docs = render({"webhook": {"tls": {"mode": mode}}}, ["cert-manager.io/v1"] if mode == "certManager" else [])
    settings = config.WebhookSettings(
        operator_namespace=NAMESPACE,
        endpoint=config.ServiceEndpoint(name="voltgrid-webhook", namespace=NAMESPACE),
        cert_manager_certificate=f"{NAMESPACE}/voltgrid-webhook" if mode == "certManager" else None,
    )
    for built in (config.mutating_configuration(settings), config.validating_configuration(settings)):
        (chart,) = [d for d in docs if d["kind"] == built["kind"]]
        assert _strip_runtime(chart) == _strip_runtime(built)
        assert chart["metadata"].get("annotations") == built["metadata"].get("annotations")


def test_every_rbac_rule_names_its_reason() -> None:
    """Each rule of a Role or ClusterRole template is directly preceded by a comment naming the code."""
    for path in sorted((CHART / "templates").glob("*.yaml")):
        text = path.read_text()
        if "kind: ClusterRole\n" not in text and "kind: Role\n" not in text:
            continue
        lines = [x for x in text.splitlines() if x.strip() and not x.strip().startswith("{{")]
        for i, line in enumerate(lines):
            if re.match(r"^\s*- apiGroups:", line) and "roleRef" not in lines[i - 1]:
                assert lines[i - 1].strip().startswith("#"), f"{path.name}: rule {line.strip()} has no comment"


def test_notes_commands_refer_to_real_files(helm: str) -> None:
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    for ref in re.findall(r"-f (\S+\.yaml)", notes):
        assert (ROOT / ref).is_file(), ref


def test_dockerfile_is_multistage_pinned_and_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+", base.group(1)), "base not pinned by version tag"
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(froms) >= 2 and all(f == "${PYTHON_IMAGE}" for f in froms), froms
    assert re.search(r"^COPY --from=build ", text, re.M)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root"), users
    assert re.search(r'^ENTRYPOINT \["voltgrid"\]$', text, re.M)
    # The chart runs the image as the Dockerfile's user.
    values = (CHART / "values.yaml").read_text()
    assert f"runAsUser: {users[-1].split(':')[0]}" in values
