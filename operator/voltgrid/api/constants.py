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
