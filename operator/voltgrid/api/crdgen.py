"""Generate the CustomResourceDefinitions in ``crds/`` from the pydantic models.

pydantic emits JSON Schema (draft 2020-12); a CRD needs a *structural* OpenAPI v3 schema. This
module bridges the two: refs inlined, ``Optional`` unions collapsed to the inner type, titles and
``additionalProperties: false`` dropped (the apiserver prunes unknown fields and strict field
validation reports them), nested spec objects given their complete default value so the apiserver
applies their defaults, and each model's CEL rules carried as ``x-kubernetes-validations``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Final

import yaml

from voltgrid.api import constants
from voltgrid.api.common import Model
from voltgrid.api.function import Function, FunctionSpec, FunctionStatus
from voltgrid.api.sandbox import Sandbox, SandboxSpec, SandboxStatus
from voltgrid.api.sandboxtemplate import SandboxTemplate, SandboxTemplateSpec, SandboxTemplateStatus
from voltgrid.api.session import Session, SessionSpec, SessionStatus

Schema = dict[str, Any]

RESOURCES: Final[tuple[tuple[type[Model], type[Model], type[Model]], ...]] = (
    (Function, FunctionSpec, FunctionStatus),
    (Session, SessionSpec, SessionStatus),
    (Sandbox, SandboxSpec, SandboxStatus),
    (SandboxTemplate, SandboxTemplateSpec, SandboxTemplateStatus),
)
SCALE: Final = {
    "specReplicasPath": ".spec.replicas",
    "statusReplicasPath": ".status.replicas",
    "labelSelectorPath": ".status.selector",
}
HEADER: Final = "# GENERATED from the pydantic models in operator/voltgrid/api by `voltgrid crds`. Do not edit.\n"


def structural(model: type[Model]) -> Schema:
    """The structural OpenAPI v3 schema of a model."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _convert(raw, raw.get("$defs", {}))


def _convert(node: Schema, defs: dict[str, Schema]) -> Schema:
    node = dict(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").rsplit("/", 1)[-1]])
        node = {**target, **node}
    if "anyOf" in node:
        branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"cannot express a union of {len(branches)} types structurally: {branches}")
        return _convert({**branches[0], **node}, defs)
    out: Schema = {}
    for key, value in node.items():
        if key in ("title", "$defs") or (key == "default" and value is None):
            continue
        if key == "additionalProperties" and value is False:
            continue
        if key == "properties":
            out[key] = {name: _convert(sub, defs) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _convert(value, defs)
        else:
            out[key] = value
    return out


def _default_nested_objects(spec: type[Model], schema: Schema) -> None:
    """Give each nested object of the spec its fully defaulted value as ``default``.

    The apiserver applies a default only where the field is absent, and checks the default itself
    against the field's CEL rules without applying nested defaults first, so an empty ``{}`` would
    fail; the model's own default instance is complete and valid.
    """
    for name, field in spec.model_fields.items():
        if field.default_factory is None:
            continue
        value = field.default_factory()  # type: ignore[call-arg]
        if isinstance(value, Model):
            schema["properties"][field.alias or name]["default"] = value.to_wire()


def crd(resource: type[Model], spec: type[Model], status: type[Model]) -> Schema:
    """The CustomResourceDefinition of one resource."""
    info = resource.INFO  # type: ignore[attr-defined]
    spec_schema = structural(spec)
    _default_nested_objects(spec, spec_schema)
    spec_schema["description"] = (resource.__doc__ or spec_schema.get("description", "")).strip()
    if not spec_schema["description"]:
        spec_schema.pop("description")
    status_schema = structural(status)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{info.plural}.{constants.GROUP}"},
        "spec": {
            "group": constants.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.singular,
                "shortNames": list(info.short_names),
                "categories": [constants.CATEGORY],
            },
            "versions": [
                {
                    "name": constants.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}, **({"scale": SCALE} if info.scale else {})},
                    "additionalPrinterColumns": [
                        {"name": n, "type": t, "jsonPath": p, **({"description": d} if d else {})}
                        for n, t, p, d in info.printer_columns
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def render_all() -> dict[str, str]:
    """File name → YAML text of every CRD."""
    files = {}
    for resource, spec, status in RESOURCES:
        doc = crd(resource, spec, status)
        files[f"{doc['metadata']['name']}.yaml"] = HEADER + yaml.safe_dump(doc, sort_keys=False, width=120)
    return files


def write(directory: Path) -> list[Path]:
    """Write every CRD into ``directory``, removing stale generated files; returns what was written."""
    directory.mkdir(parents=True, exist_ok=True)
    files = render_all()
    for stale in directory.glob("*.yaml"):
        if stale.name not in files:
            stale.unlink()
    written = []
    for name, text in files.items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


def drift(directory: Path) -> list[str]:
    """Names of CRD files in ``directory`` that differ from (or are missing against) the models."""
    files = render_all()
    present = {p.name for p in directory.glob("*.yaml")}
    changed = [n for n, text in files.items() if n not in present or (directory / n).read_text() != text]
    return sorted(changed + [n for n in present if n not in files])
