"""Per-backend registration tokens (lookaside_registry.tokens)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from lookaside_registry import validation as v
from lookaside_registry.tokens import BackendToken
from server_common.settings import split_host_port


def check_backend_address(text: str) -> str:
    """ "ip:port" ("[v6]:port") of one listable backend, in canonical text.
    Names are refused: what they resolve to may change."""
    try:
        host, port = split_host_port(text, "address")
    except ValueError as exc:
        raise v.RegistryError(str(exc)) from None
    ip = v.parse_ip(host)
    if ip is None:
        raise v.RegistryError(f"address {text[:64]!r}: give an IP address and port, not a name")
    v.check_listable_ip(ip)
    v.check_port(port)
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


Address = Annotated[
    str,
    Field(
        min_length=3,
        max_length=64,
        description="ip:port ([v6]:port) of the one backend the token may register",
        examples=["10.0.0.7:50051"],
    ),
    AfterValidator(check_backend_address),
]


class BackendTokenCreate(BaseModel):
    """A token for one address of the pool."""

    model_config = ConfigDict(extra="forbid", strict=True)

    address: Address


class BackendTokenOut(BaseModel):
    """A token's record: never the token itself."""

    id: str = Field(description="the first 12 hex digits of the token's SHA-256")
    address: str
    created_ms: int
    actor: str

    @classmethod
    def from_record(cls, t: BackendToken) -> BackendTokenOut:
        return cls(id=t.id, address=t.address, created_ms=t.created_ms, actor=t.actor)


class BackendTokenMinted(BackendTokenOut):
    """A new token. `token` is shown this once: Redis keeps its digest only."""

    token: str = Field(
        description="send as 'authorization: Bearer <token>' on the Registry API; shown once"
    )


class BackendTokenList(BaseModel):
    pool: str
    tokens: list[BackendTokenOut]
