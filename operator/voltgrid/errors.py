"""Voltgrid's own exception hierarchy.

Every error Voltgrid raises on purpose derives from :class:`VoltgridError`, so callers (the CLI,
kopf handlers, gateway middlewares) can tell our failures, which carry a message meant for a user,
from bugs. Subclasses name the layer that raised them.
"""

from __future__ import annotations


class VoltgridError(Exception):
    """Base of every error Voltgrid raises on purpose; its message is meant for a user."""


class SpecError(VoltgridError):
    """A resource's spec cannot be run as written (what the CRD schema alone cannot catch)."""


class RuntimeUnavailableError(SpecError):
    """No runtime class of the isolation policy exists in the cluster and on a node."""


class ClusterError(VoltgridError):
    """The local test cluster could not be started, reached or stopped."""


class CredentialsError(VoltgridError):
    """No usable Kubernetes credentials: neither a service account nor a readable kubeconfig."""


class TriggerError(VoltgridError):
    """An event trigger cannot do what it was asked (the dispatcher and its CloudEvents ingress)."""


class MalformedEventError(TriggerError):
    """A request to the CloudEvents ingress is not a valid CloudEvent (or batch); the message says why."""
