"""Voltgrid's API: the `voltgrid.dev/v1alpha1` resources as pydantic models.

The models are the one source of truth: ``crds/*.yaml`` is generated from them
(:mod:`voltgrid.api.crdgen`), and the controllers, gateway and CLI read specs through them.
"""

from voltgrid.api.constants import API_VERSION, GROUP, LABEL_PREFIX, VERSION
from voltgrid.api.function import Function, FunctionSpec, FunctionStatus
from voltgrid.api.sandbox import Sandbox, SandboxSpec, SandboxStatus
from voltgrid.api.sandboxtemplate import SandboxTemplate, SandboxTemplateSpec, SandboxTemplateStatus
from voltgrid.api.session import Session, SessionSpec, SessionStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "LABEL_PREFIX",
    "VERSION",
    "Function",
    "FunctionSpec",
    "FunctionStatus",
    "Sandbox",
    "SandboxSpec",
    "SandboxStatus",
    "SandboxTemplate",
    "SandboxTemplateSpec",
    "SandboxTemplateStatus",
    "Session",
    "SessionSpec",
    "SessionStatus",
]
