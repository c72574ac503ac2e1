"""The CRDs in crds/ are exactly what the models generate, and they are valid structural CRDs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from voltgrid.api import crdgen, structural

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"
K8S_SCHEMA_VERSION = "1.34"


def test_crds_match_models() -> None:
    assert crdgen.drift(CRDS) == [], "crds/ is stale: run `voltgrid crds` (make crds)"


@pytest.mark.parametrize("name", sorted(crdgen.render_all()))
def test_crd_is_structural(name: str) -> None:
    doc = yaml.safe_load(crdgen.render_all()[name])
    schema = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert structural.violations(schema) == []


@pytest.mark.parametrize("name", sorted(crdgen.render_all()))
def test_crd_validates_strictly(name: str) -> None:
    doc = yaml.safe_load(crdgen.render_all()[name])
    kubernetes_validate.validate(doc, K8S_SCHEMA_VERSION, strict=True)


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        ({"type": "object", "properties": {"a": {}}}, "every node must state a type"),
        ({"properties": {}}, "needs type object"),
        ({"type": "object", "properties": {}, "additionalProperties": {"type": "string"}}, "mutually"),
        ({"type": "string", "anyOf": [{"type": "string"}]}, "'anyOf' is not allowed"),
        ({"type": "array"}, "must state its items"),
        ({"type": "integer", "exclusiveMinimum": 0}, "must be a boolean"),
    ],
)
def test_structural_gate_finds(schema: dict[str, Any], problem: str) -> None:
    assert any(problem in v for v in structural.violations(schema))


def _schema_of(kind: str) -> dict[str, Any]:
    for text in crdgen.render_all().values():
        doc = yaml.safe_load(text)
        if doc["spec"]["names"]["kind"] == kind:
            schema: dict[str, Any] = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
            return schema
    raise KeyError(kind)


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("**/*.yaml")), ids=lambda p: p.name)
def test_examples_match_their_crd(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("apiVersion", "").startswith("voltgrid.dev/"):
            jsonschema.validate(doc, _schema_of(doc["kind"]))
