"""The checked-in gRPC modules are exactly what the vendored proto compiles to (regenerate on failure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from voltgrid.gpu_slicer.api import codegen


@pytest.mark.parametrize("name", codegen.GENERATED)
def test_generated_modules_match_the_proto(tmp_path: Path, name: str) -> None:
    fresh = {p.name: p for p in codegen.generate(tmp_path)}
    assert (codegen.API_DIR / name).read_text() == fresh[name].read_text(), (
        f"{name} is stale: run `python -m voltgrid.gpu_slicer.api.codegen`"
    )
