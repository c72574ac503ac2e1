"""The state of one sandbox's agent: settings, token, contexts and commands.

A sandbox starts in one of two ways. Created for one user (a ``Sandbox`` object, ``voltgrid dev``),
it gets its token at start. Started warm in a template's pool, it gets the gateway's public claim
key and its pre-minted sandbox id instead and waits, its default kernel already running
(``prewarm``), for the one ``POST /claim`` whose claim the gateway signed for this id (see
:mod:`voltgrid.sandbox_claims`): it gives the sandbox its claimant's token (as a digest) and env.
Until then every other call is refused, afterwards only the claimant's token opens it, and no
second claim is accepted.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from voltgrid.sandbox_agent.commands import Commands
from voltgrid.sandbox_agent.contexts import Context, new_context
from voltgrid.sandbox_agent.errors import bad_request, conflict, not_found, unauthorized
from voltgrid.sandbox_agent.workspace import Workspace, split
from voltgrid.sandbox_claims import ClaimError, load_verify_key, token_digest, token_matches, verify_claim

TOKEN_ENV: Final = "VOLTGRID_SANDBOX_TOKEN"
CLAIM_KEY_ENV: Final = "VOLTGRID_SANDBOX_CLAIM_KEY"
SANDBOX_ID_ENV: Final = "VOLTGRID_SANDBOX_ID"
MIN_TOKEN_CHARS: Final = 16
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class AgentSettings:
    """How one sandbox's agent runs; built by ``__main__`` from flags over the environment."""

    workspace: str
    """The directory the files API serves and contexts start in (``/workspace`` in the images)."""
    token: str = ""
    """The per-sandbox bearer token, when the sandbox is claimed from its start (a ``Sandbox`` object)."""
    claim_key: str = ""
    """Instead of ``token``: the gateway's public claim key (base64url Ed25519), for a warm pool's
    sandbox that waits for one signed ``POST /claim``."""
    sandbox_id: str = ""
    """With ``claim_key``: the id pre-minted for this sandbox, which a claim must name."""
    prewarm: tuple[str, ...] = ()
    """Languages whose default context starts before the agent serves, so a claim's first execution
    does not wait for a kernel."""
    default_timeout: float = 300.0
    """An execution or command without its own ``timeout`` is interrupted after this many seconds."""
    max_timeout: float = 3600.0
    """The longest ``timeout`` a caller may ask for: a sandbox is short-lived by design."""
    idle_timeout: float = 60.0
    """An upload or stdin body that sends nothing for this long is refused with 408, not waited on."""
    max_contexts: int = 16
    """Each context is a process (a kernel ~50 MiB); the sandbox's limits bound the rest."""

    def __post_init__(self) -> None:
        if bool(self.token) == bool(self.claim_key):
            raise ValueError("set exactly one of the sandbox token and the claim key")
        if self.token and len(self.token) < MIN_TOKEN_CHARS:
            raise ValueError(f"the sandbox token must have at least {MIN_TOKEN_CHARS} characters")
        if self.claim_key:
            if not self.sandbox_id:
                raise ValueError(f"a claim key needs the sandbox's id ({SANDBOX_ID_ENV})")
            try:
                load_verify_key(self.claim_key)
            except ClaimError as exc:
                raise ValueError(str(exc)) from None


def child_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of executed code: the agent's own, without the token or the claim key."""
    return {k: v for k, v in environ.items() if not k.startswith((TOKEN_ENV, CLAIM_KEY_ENV))}


@dataclass
class _Slot:
    id: str
    context: Context
    lock: asyncio.Lock

    def describe(self) -> dict[str, Any]:
        c = self.context
        return {"id": self.id, "language": c.language, "cwd": c.cwd, "executionCount": c.execution_count}


class Agent:
    """The state of one sandbox's agent: its contexts (default one per language) and commands."""

    def __init__(self, settings: AgentSettings, env: Mapping[str, str]) -> None:
        self.settings = settings
        self.workspace = Workspace(os.path.realpath(settings.workspace))
        self.env = dict(env)
        self.contexts: dict[str, _Slot] = {}
        self.defaults: dict[str, str] = {}
        self._defaults_lock = asyncio.Lock()
        self.commands = Commands()
        #: SHA-256 of the token that opens the sandbox ("" until claimed).
        self.token_sha256 = token_digest(settings.token) if settings.token else ""
        self._claim_key = load_verify_key(settings.claim_key) if settings.claim_key else None

    def directory(self, rel: str) -> str:
        """The absolute path of a workspace directory named by a caller (no ``..``, no symlinks)."""
        if self.workspace.stat(rel)["type"] != "dir":
            raise bad_request(f"cwd {rel!r} is not a directory")
        return os.path.join(self.workspace.root, *split(rel))

    async def create(self, language: str, cwd: str) -> _Slot:
        if len(self.contexts) >= self.settings.max_contexts:
            raise conflict(f"this sandbox already has {self.settings.max_contexts} contexts; delete one first")
        context = new_context(language, self.directory(cwd), self.env)
        await context.start()
        slot = _Slot(secrets.token_hex(8), context, asyncio.Lock())
        self.contexts[slot.id] = slot
        return slot

    def slot(self, context_id: str) -> _Slot:
        try:
            return self.contexts[context_id]
        except KeyError:
            raise not_found(f"no context {context_id!r}") from None

    async def default(self, language: str) -> _Slot:
        """The language's default context, made on first use (once, however many requests race for it)."""
        async with self._defaults_lock:
            if language not in self.defaults:
                self.defaults[language] = (await self.create(language, "")).id
            return self.contexts[self.defaults[language]]

    async def delete(self, context_id: str) -> None:
        slot = self.contexts.pop(context_id, None)
        if slot is None:
            raise not_found(f"no context {context_id!r}")
        self.defaults = {k: v for k, v in self.defaults.items() if v != context_id}
        await slot.context.stop()

    @property
    def claimed(self) -> bool:
        return bool(self.token_sha256)

    def authorised(self, given: str) -> bool:
        """Whether ``given`` is this sandbox's token (constant time; nothing matches before a claim)."""
        return token_matches(given, self.token_sha256 or secrets.token_hex(32))

    async def prewarm(self) -> None:
        for language in self.settings.prewarm:
            await self.default(language)

    async def claim(self, signed: str) -> None:
        """Hand the sandbox to its claimant: its token, and its env in every context, started or not.

        One-shot: a second claim, even one the gateway signed, is refused (burn after use).
        """
        if self._claim_key is None:
            raise unauthorized("this sandbox was started with its token; it takes no claim")
        if self.claimed:
            raise conflict("this sandbox is already claimed")
        try:
            claim = verify_claim(self._claim_key, signed, self.settings.sandbox_id, time.time())
        except ClaimError as exc:
            raise unauthorized(str(exc)) from None
        env = claim.env
        if any(not isinstance(v, str) or not _ENV_NAME.fullmatch(k) or k.startswith(TOKEN_ENV) for k, v in env.items()):
            raise bad_request(f"env names must match {_ENV_NAME.pattern} and not start with {TOKEN_ENV}")
        self.token_sha256 = claim.token_sha256  # taken before the first await: two racing claims, one wins
        if not env:
            return  # nothing to tell the running kernels: the claim costs no round trip into them
        self.env.update(env)
        for slot in self.contexts.values():
            await slot.context.set_env(env)

    async def close(self) -> None:
        for context_id in list(self.contexts):
            await self.delete(context_id)

    def timeout(self, body: Mapping[str, Any]) -> float:
        value = body.get("timeout", self.settings.default_timeout)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= self.settings.max_timeout:
            raise bad_request(f"timeout must be a number of seconds in (0, {self.settings.max_timeout:g}]")
        return float(value)
