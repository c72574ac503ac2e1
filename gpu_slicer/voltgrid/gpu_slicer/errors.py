"""Errors the GPU slicer raises on purpose; each message tells a node operator what to fix."""

from __future__ import annotations

from voltgrid.api.settings import SettingsError
from voltgrid.errors import VoltgridError


class SlicerError(VoltgridError):
    """The device plugin cannot serve slices as configured."""


class ConfigError(SlicerError, SettingsError):
    """A flag, environment variable or config file value is invalid."""


class HardwareError(SlicerError):
    """NVML could not be loaded or queried (no driver, no GPU, or the card is gone)."""


class MpsError(SlicerError):
    """The MPS control daemon could not be started or refused a command."""


class RegistrationError(SlicerError):
    """The kubelet refused the plugin's registration."""
