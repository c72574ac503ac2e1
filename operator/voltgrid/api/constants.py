"""Names and limits of the Voltgrid API that several layers share (one place to change them)."""

from __future__ import annotations

from typing import Final

GROUP: Final = "voltgrid.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = "voltgrid.dev/v1alpha1"  # f"{GROUP}/{VERSION}", spelt out for its Literal type
LABEL_PREFIX: Final = f"{GROUP}/"
#: Path prefix of invoke URLs on the gateway: ``/fn/<namespace>/<function>/<path>``.
INVOKE_PATH_PREFIX: Final = "/fn/"
CATEGORY: Final = "voltgrid"

# Labels written on instance and sandbox pods when they are created (never updated per request).
LABEL_MANAGED: Final = f"{LABEL_PREFIX}managed"
LABEL_FUNCTION: Final = f"{LABEL_PREFIX}function"
LABEL_SESSION: Final = f"{LABEL_PREFIX}session"
LABEL_SANDBOX: Final = f"{LABEL_PREFIX}sandbox"
LABEL_ROLE: Final = f"{LABEL_PREFIX}role"

# The pod contract between the pod builder (api.podspec), the storage webhooks and the janitor: the
# builder writes these, the mutating webhook re-derives the same mount from them (idempotently), the
# validating webhook judges every mount of a session claim against them.
#: Annotation: the claim holding per-session directories; without it a pod gets no storage.
ANNOTATION_STORAGE_CLAIM: Final = f"{LABEL_PREFIX}storage-claim"
#: Annotation: where the session's directory appears in every container.
ANNOTATION_STORAGE_MOUNT_PATH: Final = f"{LABEL_PREFIX}storage-mount-path"
DEFAULT_STORAGE_MOUNT_PATH: Final = "/data"
#: The volume of the session claim in a pod; one per pod, whatever name a writer gave it.
SESSION_VOLUME: Final = "voltgrid-session"
#: Label on a PersistentVolumeClaim: it holds session directories, so the webhooks guard it even when
#: no Function names it (any more). The chart's own claim carries it.
LABEL_SESSION_STORAGE: Final = f"{LABEL_PREFIX}session-storage"
ENV_SESSION_ID: Final = "VOLTGRID_SESSION_ID"
ENV_FUNCTION: Final = "VOLTGRID_FUNCTION"
ENV_STORAGE_DIR: Final = "VOLTGRID_STORAGE_DIR"

#: Session ids are DNS labels: they become pod labels and storage sub-paths.
SESSION_ID_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
SESSION_ID_MAX_LENGTH: Final = 63

#: Go-style durations ("90s", "15m", "1h30m"), the format kubectl users know and CEL's duration() reads.
DURATION_PATTERN: Final = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
#: Kubernetes resource quantities ("500m", "1", "512Mi", "1.5Gi").
QUANTITY_PATTERN: Final = r"^([0-9]+(\.[0-9]+)?|\.[0-9]+)(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"
#: HTTP header names (RFC 9110 token).
HEADER_NAME_PATTERN: Final = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"

DEFAULT_PORT: Final = 8080
DEFAULT_IDLE_TIMEOUT: Final = "15m"
DEFAULT_MAX_LIFETIME: Final = "6h"
MAX_LIFETIME_CEILING: Final = "24h"
DEFAULT_PRESTOP_TIMEOUT: Final = "10s"
DEFAULT_SESSION_HEADER: Final = "X-Voltgrid-Session"
DEFAULT_SESSION_COOKIE: Final = "voltgrid-session"
MAX_SESSIONS_PER_INSTANCE: Final = 1000
DEFAULT_RUNTIME_POLICY: Final = ("kata-fc", "kata-clh", "kata-qemu", "gvisor")
#: Fractions of a GPU the slicer advertises (SPEC section 7); whole cards are integers.
GPU_FRACTIONS: Final = (0.125, 0.25, 0.5)


def session_subpath(namespace: str, function: str, session_id: str) -> str:
    """A session's directory relative to its claim's root: ``<namespace>/<function>/<session-id>``.

    The pod builder mounts exactly this sub-path and the validating webhook admits exactly this one
    (nothing below it): the three components are directories the kubelet creates and no session pod
    can write, so none of them can be a link a tenant planted.
    """
    return f"{namespace}/{function}/{session_id}"
