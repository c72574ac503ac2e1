"""The contract between the pod builder (controllers), the webhooks, the janitor and the chart.

Why a module of its own: these names are the interface the controllers engineer writes against (the
pod builder puts the annotations on every instance and sandbox pod) and the chart engineer templates
(namespace label, timeouts). ``voltgrid.controllers`` may not import ``voltgrid.webhooks`` (the two are
independent layers), so the names that both sides need live in ``voltgrid.api.constants`` (the pod
builder writes them there); this module names what only the webhooks, the janitor and the chart share.
docs/webhooks.md repeats both verbatim.

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

from voltgrid.api import constants

#: Namespaces carrying this label (value "true") are Voltgrid-managed: both webhooks apply there.
LABEL_NAMESPACE_ENABLED: Final = f"{constants.LABEL_PREFIX}enabled"
#: The label every namespace carries with its own name (set by the apiserver since 1.21).
LABEL_NAMESPACE_NAME: Final = "kubernetes.io/metadata.name"

ANNOTATION_RUN_AS_ROOT: Final = f"{constants.LABEL_PREFIX}run-as-root"

#: A DNS label: function names and session ids become path components and must match it.
DNS_LABEL_PATTERN: Final = constants.SESSION_ID_PATTERN

#: The apiserver gives up on a webhook call after this long (failurePolicy Fail: the request fails).
WEBHOOK_TIMEOUT_SECONDS: Final = 5
#: Admission paths served by ``voltgrid.webhooks.server``.
MUTATE_PATH: Final = "/mutate"
VALIDATE_PATH: Final = "/validate"
HEALTHZ_PATH: Final = "/healthz"
DEFAULT_PORT: Final = 8443
