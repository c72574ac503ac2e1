"""An offline gate for the structural-schema rules the apiserver enforces on CRDs.

The apiserver refuses a CRD whose schema is not structural, but only when the CRD is applied. This
gate finds the same faults without a cluster (so `make lint` and the unit tests catch them): every
node states its type, ``properties`` and ``additionalProperties`` never meet, no ``$ref``/``anyOf``
or draft-2020 keywords the OpenAPI v3 subset lacks, and list-map keys exist and are required.
See https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/
#specifying-a-structural-schema.
"""

from __future__ import annotations

from typing import Any, Final

_FORBIDDEN: Final = ("$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "const", "prefixItems", "$schema")
_UNTYPED_OK: Final = ("x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields")


def violations(schema: dict[str, Any], path: str = "") -> list[str]:
    """Every structural-schema rule the schema breaks, as '<path>: <problem>' strings."""
    found: list[str] = []
    where = path or "<root>"
    for key in _FORBIDDEN:
        if key in schema:
            found.append(f"{where}: '{key}' is not allowed in a structural schema")
    if "type" not in schema and not any(schema.get(k) for k in _UNTYPED_OK):
        found.append(f"{where}: every node must state a type")
    if "properties" in schema:
        if schema.get("type") != "object":
            found.append(f"{where}: 'properties' needs type object")
        if "additionalProperties" in schema:
            found.append(f"{where}: 'properties' and 'additionalProperties' are mutually exclusive")
        for name in schema.get("required", []):
            if name not in schema["properties"]:
                found.append(f"{where}: required field '{name}' is not a property")
        for name, sub in schema["properties"].items():
            found += violations(sub, f"{path}.{name}")
    if isinstance(schema.get("additionalProperties"), dict):
        found += violations(schema["additionalProperties"], f"{path}[*]")
    if schema.get("type") == "array":
        if "items" not in schema:
            found.append(f"{where}: an array must state its items")
        else:
            found += violations(schema["items"], f"{path}[]")
        keys = schema.get("x-kubernetes-list-map-keys", [])
        item = schema.get("items", {})
        for key in keys:
            if key not in item.get("required", []):
                found.append(f"{where}: list-map key '{key}' must be a required property of the items")
    for bound in ("exclusiveMinimum", "exclusiveMaximum"):
        if bound in schema and not isinstance(schema[bound], bool):
            found.append(f"{where}: '{bound}' must be a boolean in OpenAPI v3")
    return found
