"""The contract between the pod builder (controllers), the webhooks, the janitor and the chart.

Why a module of its own: these names are the interface the controllers engineer writes against (the
pod builder puts the annotations on every instance and sandbox pod) and the chart engineer templates
(namespace label, timeouts). ``voltgrid.controllers`` may not import ``voltgrid.webhooks`` (the two are
independent layers), so the names that both sides need should move to ``voltgrid.api.constants``;
until then the strings below are the reference and are repeated verbatim in docs/webhooks.md.

Pod contract (written by the pod builder, read by the mutating webhook):

``metadata.labels``
    ``voltgrid.dev/managed: "true"``  selects the pod for the mutating webhook (objectSelector);
    ``voltgrid.dev/function: <function>`` and ``voltgrid.dev/session: <session-id>`` (a DNS label)
    name the session whose directory is mounted.
``metadata.annotations``
    ``voltgrid.dev/storage-claim: <pvc-name>``  the claim holding per-session directories; without it
    the pod gets session env and hardening but no storage mount.
    ``voltgrid.dev/storage-mount-path: /data``  where the session directory appears (default ``/data``).
    ``voltgrid.dev/run-as-root: "true"``  opt out of ``runAsNonRoot`` for images that need uid 0.
"""

from __future__ import annotations

from typing import Final

from voltgrid.api import constants as c

#: Namespaces carrying this label (value "true") are Voltgrid-managed: both webhooks apply there.
LABEL_NAMESPACE_ENABLED: Final = f"{c.LABEL_PREFIX}enabled"
#: The label every namespace carries with its own name (set by the apiserver since 1.21).
LABEL_NAMESPACE_NAME: Final = "kubernetes.io/metadata.name"

ANNOTATION_STORAGE_CLAIM: Final = f"{c.LABEL_PREFIX}storage-claim"
ANNOTATION_STORAGE_MOUNT_PATH: Final = f"{c.LABEL_PREFIX}storage-mount-path"
ANNOTATION_RUN_AS_ROOT: Final = f"{c.LABEL_PREFIX}run-as-root"
DEFAULT_STORAGE_MOUNT_PATH: Final = "/data"

#: The volume the mutating webhook owns in a pod; a volume of that name is replaced, never merged.
SESSION_VOLUME: Final = "voltgrid-session"

ENV_SESSION_ID: Final = "VOLTGRID_SESSION_ID"
ENV_FUNCTION: Final = "VOLTGRID_FUNCTION"
ENV_STORAGE_DIR: Final = "VOLTGRID_STORAGE_DIR"

#: A DNS label: function names and session ids become path components and must match it.
DNS_LABEL_PATTERN: Final = c.SESSION_ID_PATTERN

#: The apiserver gives up on a webhook call after this long (failurePolicy Fail: the request fails).
WEBHOOK_TIMEOUT_SECONDS: Final = 5
#: Admission paths served by ``voltgrid.webhooks.server``.
MUTATE_PATH: Final = "/mutate"
VALIDATE_PATH: Final = "/validate"
HEALTHZ_PATH: Final = "/healthz"
DEFAULT_PORT: Final = 8443


def session_subpath(namespace: str, function: str, session_id: str) -> str:
    """The session's directory relative to the claim's root: ``<namespace>/<function>/<session-id>``."""
    return f"{namespace}/{function}/{session_id}"
