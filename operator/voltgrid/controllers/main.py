"""Entry point of ``voltgrid operator``: builds the controllers and runs kopf.

Standalone (one replica) by default; ``peering`` opts in to kopf peering for HA (the peering CRDs
are in ``crds/peering/``). Each replica gets a random priority so that exactly one is active: kopf
pauses every replica on a priority tie.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import socket
from typing import Final

import kopf

from voltgrid.controllers.core import Controllers
from voltgrid.controllers.events import EventRecorder
from voltgrid.controllers.handlers import LoginFn, build_registry, default_login
from voltgrid.controllers.kube import KubeClient
from voltgrid.controllers.scheduler import Scheduler
from voltgrid.controllers.settings import OperatorSettings
from voltgrid.controllers.state import Clock, Context, utcnow
from voltgrid.errors import CredentialsError

logger = logging.getLogger(__name__)

NO_CREDENTIALS: Final = (
    "no Kubernetes credentials: not in a cluster (no service account) and no kubeconfig"
    " ($KUBECONFIG or ~/.kube/config); `voltgrid run` starts a local cluster with its operator"
)
#: Range of the random peering priority of a replica (higher wins).
PRIORITY_RANGE: Final = (1, 1_000_000)


def own_identity() -> str:
    """This replica's peering identity: the pod name (``POD_ID``, from the downward API) or host."""
    return os.environ.get("POD_ID") or f"{socket.gethostname()}-{secrets.token_hex(4)}"


def build_controllers(
    settings: OperatorSettings, *, clock: Clock = utcnow, identity: str | None = None, priority: int = 0
) -> Controllers:
    client = KubeClient()
    ctx = Context(
        client=client, settings=settings, events=EventRecorder(client, clock), scheduler=Scheduler(clock), clock=clock
    )
    return Controllers(ctx, identity=identity, priority=priority)


async def operate(
    settings: OperatorSettings,
    *,
    login: LoginFn = default_login,
    clock: Clock = utcnow,
    stop_flag: asyncio.Event | None = None,
    ready_flag: asyncio.Event | None = None,
) -> None:
    """Run the operator in the current event loop until ``stop_flag`` is set (or a signal)."""
    priority = random.randint(*PRIORITY_RANGE) if settings.peering else 0
    identity = own_identity() if settings.peering else None
    ctl = build_controllers(settings, clock=clock, identity=identity, priority=priority)
    await kopf.operator(
        registry=build_registry(ctl, login=login),
        standalone=settings.peering is None,
        peering_name=settings.peering,
        priority=priority,
        identity=identity,  # type: ignore[arg-type]  # kopf's Identity is a NewType of str
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=settings.liveness or None,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )


def check_credentials(login: LoginFn = default_login) -> None:
    """Fail with :class:`CredentialsError` when there is nothing to log in with: inside kopf that is
    a startup failure retried every minute with a traceback, never an answer."""
    try:
        info = login(logger=logger, settings=kopf.OperatorSettings())
    except Exception as exc:  # kopf reads and parses the kubeconfig: any failure is the user's file
        raise CredentialsError(f"cannot use the kubeconfig: {type(exc).__name__}: {exc}") from None
    if info is None:
        raise CredentialsError(NO_CREDENTIALS)


def run_operator(settings: OperatorSettings | None = None) -> None:
    """Blocking entry point for the CLI: ``voltgrid operator [--namespace NS ...] [--peering NAME]``."""
    asyncio.run(operate(settings or OperatorSettings.from_env()))
