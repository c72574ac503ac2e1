"""A kubernetes_asyncio client for the webhook server and the janitor, in the cluster or outside it.

Why not a shared helper from ``voltgrid.backends``: the webhooks layer sits beside, not above, the
operator's own Kubernetes code, and needs only this much: the pod's service account inside the
cluster, a kubeconfig (``--kubeconfig``/``KUBECONFIG``) outside it.
"""

from __future__ import annotations

import os
from typing import Any

from kubernetes_asyncio import client, config


async def api_client(kubeconfig: str | None) -> Any:
    """An ``ApiClient``; the caller closes it (``await client.close()``)."""
    if kubeconfig or not os.environ.get("KUBERNETES_SERVICE_HOST"):
        return await config.new_client_from_config(config_file=kubeconfig)
    configuration = client.Configuration()
    config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return client.ApiClient(configuration)
