"""Regenerate the checked-in gRPC modules from ``deviceplugin.proto`` (a developer tool, not run on nodes).

Run ``python -m voltgrid.gpu_slicer.api.codegen`` after editing the proto. The proto is compiled with the
``gpu_slicer`` source root as include path so that the generated modules import each other as
``voltgrid.gpu_slicer.api...`` and the file registered in protobuf's descriptor pool has a unique name.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Final

API_DIR: Final = Path(__file__).resolve().parent
SOURCE_ROOT: Final = API_DIR.parents[2]
PROTO: Final = API_DIR / "deviceplugin.proto"
GENERATED: Final = ("deviceplugin_pb2.py", "deviceplugin_pb2.pyi", "deviceplugin_pb2_grpc.py")


def generate(out_root: Path) -> list[Path]:
    """Compile the proto under ``out_root`` (mirroring the source root) and return the generated files."""
    proto_rel = PROTO.relative_to(SOURCE_ROOT)
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{SOURCE_ROOT}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        str(proto_rel),
    ]
    subprocess.run(cmd, check=True, cwd=SOURCE_ROOT)
    out_dir = out_root / proto_rel.parent
    return [out_dir / name for name in GENERATED]


def main() -> None:
    """Regenerate the checked-in modules in place."""
    for path in generate(SOURCE_ROOT):
        print(path)


if __name__ == "__main__":
    main()
