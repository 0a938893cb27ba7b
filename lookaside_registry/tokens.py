"""Per-backend registration tokens: a token an operator mints (admin API)
for one address of one pool. Its holder may register that address only,
whatever the pool's address_policy, and its leases are its own (their
owner is `backend-token:<id>`). For registrars that hold many backends'
credentials: one stolen token reaches one address.

Redis keeps the token's SHA-256, never the token: the token is shown once,
when it is minted.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

from lookaside_registry import keys
from lookaside_registry.errors import NotFound, guarded
from lookaside_registry.machine import Outcome

TOKEN_BYTES = 32


def token_digest(token: str | bytes) -> str:
    raw = token.encode() if isinstance(token, str) else token
    return hashlib.sha256(raw).hexdigest()


def token_id(token: str | bytes) -> str:
    """A token's name in principals, events and owners: the first 12 hex
    digits of its SHA-256 (never the token itself)."""
    return token_digest(token)[:12]


@dataclass(frozen=True, slots=True)
class BackendToken:
    id: str
    pool: str
    address: str  # "ip:port" ("[v6]:port"), canonical
    created_ms: int = 0
    actor: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> BackendToken:
        data = json.loads(raw)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


class TokenOps:
    """Minting and revoking, over the registry's scripts (mixed into
    RegistryStore and MemoryStore, which provide _run and the reads
    `backend_token` and `backend_tokens`)."""

    async def _run(self, name: str, pool: str, args: list[Any], extra_keys: Any = ()) -> Any:
        raise NotImplementedError

    @guarded
    async def mint_backend_token(
        self, pool: str, address: str, *, actor: str = "api"
    ) -> tuple[str, BackendToken]:
        """A new token for `address` (canonical "ip:port") in `pool`, and its
        record. NotFound when the pool does not exist (checked in the write)."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        record = BackendToken(token_id(token), pool, address, int(time.time() * 1000), actor)
        (status,) = await self._run(
            "MINT_TOKEN", pool, [actor, token_digest(token), record.to_json()],
            [keys.backend_tokens(pool)],
        )  # fmt: skip
        if Outcome(_text(status)) is Outcome.POOL_NOT_FOUND:
            raise NotFound(f"pool {pool!r} does not exist; create it with POST /api/v1/pools")
        return token, record

    @guarded
    async def revoke_backend_token(self, pool: str, token_id_: str, *, actor: str = "api") -> None:
        """Removes a token by id; NotFound when there is none. Leases it took
        stay until they expire (it can no longer renew them)."""
        (status,) = await self._run(
            "REVOKE_TOKEN", pool, [actor, token_id_], [keys.backend_tokens(pool)]
        )
        if Outcome(_text(status)) is Outcome.NOT_FOUND:
            raise NotFound(f"pool {pool!r} has no backend token {token_id_!r}")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
