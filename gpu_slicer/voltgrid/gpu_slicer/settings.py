"""Settings of the slicer process: one documented dataclass, each value from flag > env > file > default.

The environment variable of a setting is ``VOLTGRID_GPU_SLICER_<NAME>`` (e.g. ``..._PROFILE``); the
config file (``--config``, ``VOLTGRID_GPU_SLICER_CONFIG``, or :data:`DEFAULT_CONFIG_FILE` when present) is
YAML with the setting names as keys. A node's slice profile usually comes from its
``voltgrid.dev/gpu-slice-profile`` label, through the DaemonSet that selects the node by it.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import yaml

from voltgrid.gpu_slicer.errors import ConfigError
from voltgrid.gpu_slicer.kubelet import DEFAULT_KUBELET_DIR
from voltgrid.gpu_slicer.mps import DEFAULT_MPS_CONTROL
from voltgrid.gpu_slicer.slices import PROFILES

ENV_PREFIX: Final = "VOLTGRID_GPU_SLICER_"
DEFAULT_CONFIG_FILE: Final = Path("/etc/voltgrid/gpu-slicer.yaml")
DEFAULT_MPS_ROOT: Final = Path("/run/voltgrid/mps")
MAX_FAKE_GPUS: Final = 64


@dataclasses.dataclass(frozen=True)
class Settings:
    """How one slicer process runs.

    Attributes:
        kubelet_dir: the kubelet's device-plugins directory (kubelet.sock and the plugin's socket).
        profile: slice profile of this node's cards: ``eighth``, ``quarter`` or ``half``.
        mps_root: host directory of the MPS daemon's pipe, shared memory and log directories.
        mps_control: the ``nvidia-cuda-mps-control`` binary.
        fake: use in-memory fake GPUs and MPS (tests, nodes without GPUs).
        fake_gpus: how many fake cards ``fake`` provides.
    """

    kubelet_dir: Path = DEFAULT_KUBELET_DIR
    profile: str = "quarter"
    mps_root: Path = DEFAULT_MPS_ROOT
    mps_control: str = DEFAULT_MPS_CONTROL
    fake: bool = False
    fake_gpus: int = 2

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ConfigError(f"profile {self.profile!r} is not one of {', '.join(PROFILES)}")
        if not 1 <= self.fake_gpus <= MAX_FAKE_GPUS:
            raise ConfigError(f"fake_gpus {self.fake_gpus} must be between 1 and {MAX_FAKE_GPUS}")


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"{value!r} is not a boolean")


def _int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not an integer")
    return int(value)


_CONVERT: Final[dict[str, Callable[[Any], Any]]] = {"Path": Path, "str": str, "bool": _bool, "int": _int}
_FIELDS: Final = {f.name: _CONVERT[str(f.type)] for f in dataclasses.fields(Settings)}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="voltgrid gpu-slicer", description="Kubelet device plugin for GPU slices.")
    p.add_argument("--config", type=Path, help=f"YAML settings file (default {DEFAULT_CONFIG_FILE} if present)")
    p.add_argument("--kubelet-dir", type=Path, help=f"device-plugins directory (default {DEFAULT_KUBELET_DIR})")
    p.add_argument("--profile", choices=sorted(PROFILES), help="slice profile of this node (default quarter)")
    p.add_argument("--mps-root", type=Path, help=f"host directory for the MPS daemon (default {DEFAULT_MPS_ROOT})")
    p.add_argument("--mps-control", help=f"MPS control binary (default {DEFAULT_MPS_CONTROL})")
    p.add_argument("--fake", action="store_const", const=True, help="fake GPUs and MPS (no NVIDIA driver needed)")
    p.add_argument("--fake-gpus", type=int, help="number of fake GPUs (default 2)")
    return p


def _read_file(path: Path, explicit: bool) -> dict[str, Any]:
    if not explicit and not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a mapping of setting names to values")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"config file {path}: unknown settings {', '.join(map(str, unknown))}")
    return data


def load_settings(argv: Sequence[str] | None, environ: Mapping[str, str]) -> Settings:
    """Settings from the command line, the environment and the config file; ConfigError names a bad one."""
    args = vars(parser().parse_args(argv))
    config = args.pop("config") or environ.get(f"{ENV_PREFIX}CONFIG")
    file_values = _read_file(Path(config) if config else DEFAULT_CONFIG_FILE, explicit=bool(config))
    values: dict[str, Any] = {}
    for name, convert in _FIELDS.items():
        sources = (
            ("--" + name.replace("_", "-"), args.get(name)),
            (ENV_PREFIX + name.upper(), environ.get(ENV_PREFIX + name.upper())),
            (f"config file key {name}", file_values.get(name)),
        )
        for where, raw in sources:
            if raw is not None:
                try:
                    values[name] = convert(raw)
                except (TypeError, ValueError) as e:
                    raise ConfigError(f"{where}: {e}") from e
                break
    return Settings(**values)
