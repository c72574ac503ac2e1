"""Settings of the slicer process: one documented model (:mod:`voltgrid.api.settings`).

Each value comes from flag > env > file > default. The environment variable of a setting is
``VOLTGRID_GPU_SLICER_<NAME>`` (e.g. ``..._PROFILE``); the config file (``--config``,
``VOLTGRID_GPU_SLICER_CONFIG``, or :data:`DEFAULT_CONFIG_FILE` when present) is YAML with the setting names
as keys. A node's slice profile usually comes from its ``voltgrid.dev/gpu-slice-profile`` label, through
the DaemonSet that selects the node by it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar, Final, Self

import pydantic
from pydantic_settings import SettingsConfigDict

from voltgrid.api.settings import LayeredSettings
from voltgrid.gpu_slicer.errors import ConfigError
from voltgrid.gpu_slicer.kubelet import DEFAULT_KUBELET_DIR
from voltgrid.gpu_slicer.mps import DEFAULT_MPS_CONTROL
from voltgrid.gpu_slicer.slices import PROFILES

ENV_PREFIX: Final = "VOLTGRID_GPU_SLICER_"
DEFAULT_CONFIG_FILE: Final = Path("/etc/voltgrid/gpu-slicer.yaml")
DEFAULT_MPS_ROOT: Final = Path("/run/voltgrid/mps")
MAX_FAKE_GPUS: Final = 64


class Settings(LayeredSettings):
    """How one slicer process runs."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True)
    default_config_file: ClassVar[Path | None] = DEFAULT_CONFIG_FILE
    error: ClassVar[type[ConfigError]] = ConfigError

    kubelet_dir: Path = DEFAULT_KUBELET_DIR
    """The kubelet's device-plugins directory (kubelet.sock and the plugin's socket)."""
    profile: str = "quarter"
    """Slice profile of this node's cards: ``eighth``, ``quarter`` or ``half``."""
    mps_root: Path = DEFAULT_MPS_ROOT
    """Host directory of the MPS daemon's pipe, shared memory and log directories."""
    mps_control: str = DEFAULT_MPS_CONTROL
    """The ``nvidia-cuda-mps-control`` binary."""
    fake: bool = False
    """Use in-memory fake GPUs and MPS (tests, nodes without GPUs; no NVIDIA driver needed)."""
    fake_gpus: int = 2
    """How many fake cards ``fake`` provides."""

    @pydantic.model_validator(mode="after")
    def _check(self) -> Self:
        if self.profile not in PROFILES:
            raise ConfigError(f"profile {self.profile!r} is not one of {', '.join(PROFILES)}")
        if not 1 <= self.fake_gpus <= MAX_FAKE_GPUS:
            raise ConfigError(f"fake_gpus {self.fake_gpus} must be between 1 and {MAX_FAKE_GPUS}")
        return self


def load_settings(argv: Sequence[str] | None, environ: Mapping[str, str]) -> Settings:
    """Settings from the command line, the environment and the config file; ConfigError names a bad one."""
    return Settings.parse(
        argv, environ, prog="voltgrid gpu-slicer", description="Kubelet device plugin for GPU slices."
    )
