"""Render the CRD reference (``docs/crd-reference.md``) from the generated CRDs.

It reads the same structural schemas that :mod:`voltgrid.api.crdgen` writes to ``crds/``, so the
reference can never say something the apiserver does not enforce: every field with its type,
default, constraints and description, the cross-field (CEL) rules, and the printer columns.
``voltgrid crds`` writes it and ``voltgrid crds --check`` fails when it is stale.
"""

from __future__ import annotations

import json
from typing import Any, Final

from voltgrid.api import constants
from voltgrid.api.crdgen import RESOURCES, Schema, crd

TITLE: Final = "# CRD reference"
INTRO: Final = (
    "<!-- GENERATED from the pydantic models in operator/voltgrid/api by `voltgrid crds`. Do not edit. -->\n\n"
    f"Group `{constants.GROUP}`, version `{constants.VERSION}`, all namespaced, "
    f"all in the `{constants.CATEGORY}` category "
    f"(`kubectl get {constants.CATEGORY}`). Durations are Go-style (`90s`, `5m`, `1h30m`); the apiserver "
    "applies every default shown here and rejects what breaks a constraint or a rule, naming the field."
)
#: Schema keywords shown as constraints, with how each reads.
CONSTRAINTS: Final = (
    ("pattern", "pattern {}"),
    ("minimum", "≥ {}"),
    ("maximum", "≤ {}"),
    ("minLength", "length ≥ {}"),
    ("maxLength", "length ≤ {}"),
    ("minItems", "items ≥ {}"),
    ("maxItems", "items ≤ {}"),
    ("format", "format {}"),
)


def _code(text: str) -> str:
    """A Markdown code span that survives backticks inside it."""
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip()


def _type(node: Schema) -> str:
    kind = str(node.get("type", "any"))
    if kind == "array":
        return f"[]{_type(node.get('items', {}))}"
    if node.get("x-kubernetes-int-or-string"):
        return "int-or-string"
    return kind


def _notes(node: Schema) -> str:
    parts = []
    if "enum" in node:
        parts.append("one of " + ", ".join(f"`{v}`" for v in node["enum"]))
    for key, fmt in CONSTRAINTS:
        if key in node:
            parts.append(fmt.format(_code(node[key]) if key == "pattern" else node[key]))
    return "; ".join(parts)


def _rows(node: Schema, path: str, required: bool, rules: list[tuple[str, str]]) -> list[str]:
    default = json.dumps(node["default"]) if "default" in node and node.get("type") != "object" else ""
    rows = [
        f"| `{path}` | {_type(node)}{' (required)' if required else ''} | {_cell(f'`{default}`' if default else '')} "
        f"| {_cell(_notes(node))} | {_cell(node.get('description', ''))} |"
    ]
    rules += [(path, str(v.get("message", v.get("rule", "")))) for v in node.get("x-kubernetes-validations", [])]
    children = node.get("properties") or (node.get("items") or {}).get("properties") or {}
    prefix = f"{path}[]" if node.get("type") == "array" else path
    needed = set(node.get("required") or (node.get("items") or {}).get("required") or [])
    for name, child in children.items():
        rows += _rows(child, f"{prefix}.{name}", name in needed, rules)
    return rows


def _section(part: str, schema: Schema) -> list[str]:
    rules: list[tuple[str, str]] = []
    rows = _rows(schema, part, part == "spec", rules)
    out = [f"### {part}", "", "| field | type | default | constraints | description |", "|---|---|---|---|---|"]
    out += rows
    if rules:
        out += ["", "Rules across fields (CEL, checked by the apiserver):", ""]
        out += [f"- `{path}`: {message}" for path, message in rules]
    return [*out, ""]


def render() -> str:
    """The whole reference, as Markdown."""
    lines = [TITLE, "", INTRO, ""]
    for resource, spec, status in RESOURCES:
        doc: dict[str, Any] = crd(resource, spec, status)
        names, version = doc["spec"]["names"], doc["spec"]["versions"][0]
        schema = version["schema"]["openAPIV3Schema"]["properties"]
        lines += [f"## {names['kind']}", ""]
        if description := schema["spec"].get("description"):
            lines += [description, ""]
        lines += [f"Plural `{names['plural']}`, short names {', '.join(f'`{n}`' for n in names['shortNames'])}.", ""]
        lines += ["Printer columns (`kubectl get`):", "", "| column | type | from |", "|---|---|---|"]
        lines += [f"| {p['name']} | {p['type']} | `{p['jsonPath']}` |" for p in version["additionalPrinterColumns"]]
        lines.append("")
        lines += _section("spec", schema["spec"])
        lines += _section("status", schema["status"])
    return "\n".join(lines).rstrip() + "\n"
