"""AdminSettings: the admin process's configuration, env prefix
LOOKASIDE_ADMIN_. Every field is also a `lookaside admin` flag.

The bearer token guards every write (and every read unless public_reads is
set), so the settings refuse an empty or default-looking token. In dev mode
an empty token is replaced by a random one that `serve` prints.
"""

from __future__ import annotations

import logging
import secrets

from pydantic import Field, PrivateAttr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from server_common.declarative import StateFile
from server_common.settings import (
    FieldProblem,
    OptionalFile,
    RedisUrl,
    blaming,
    check_redis_url,
    read_secret,
)

log = logging.getLogger("lookaside.admin")

TOKEN_MIN_LENGTH = 16
DEFAULT_LOOKING_TOKENS = frozenset(
    {
        "admin",
        "changeme",
        "change-me",
        "change_me",
        "changethis",
        "default",
        "dev",
        "lookaside",
        "password",
        "secret",
        "test",
        "token",
        "example",
        "none",
        "null",
    }
)
LOG_LEVELS = ("debug", "info", "warning", "error")


def token_problem(token: str) -> str | None:
    """Why a token is unfit to guard the admin API, or None when it is fit."""
    if not token:
        return "is empty"
    lowered = token.lower()
    if lowered in DEFAULT_LOOKING_TOKENS or any(
        lowered.startswith(w) for w in ("changeme", "changethis")
    ):
        return "looks like a default value"
    if len(set(token)) < 6:
        return "repeats too few distinct characters"
    if len(token) < TOKEN_MIN_LENGTH:
        return f"is {len(token)} characters long; use at least {TOKEN_MIN_LENGTH}"
    return None


class AdminSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LOOKASIDE_ADMIN_", extra="ignore", hide_input_in_errors=True
    )

    listen: str = Field("127.0.0.1:8080", description="host:port for the admin API and dashboard")
    redis_url: RedisUrl = Field(
        "", description="the registry's Redis, e.g. redis://HOST:6379/0 (required)"
    )
    redis_cluster: bool = Field(
        False, description="--redis-url names a node of a Redis Cluster (any one)"
    )
    token: str = Field(
        "",
        description="bearer token for the API (required; e.g. `python -c 'import secrets; "
        "print(secrets.token_urlsafe(32))'`); UNSAFE as a flag (shows in ps): use "
        "--token-file or the environment",
        repr=False,
    )
    dev: bool = Field(
        False, description="development mode: accept a weak token, or generate one when empty"
    )
    public_reads: bool = Field(False, description="serve GET requests without a token")
    state_file: StateFile = Field(
        "",
        description="declared pools (YAML or JSON, as `lookaside export` writes): applied at "
        "start and again whenever Redis comes back empty",
    )
    log_level: str = Field("info", description="debug, info, warning or error")
    token_file: str = Field("", description="file holding the token (instead of --token)")
    redis_url_file: str = Field(
        "", description="file holding the Redis URL (keeps a password out of ps and env)"
    )
    tls_cert: OptionalFile = Field("", description="PEM certificate chain: serve HTTPS")
    tls_key: OptionalFile = Field("", description="PEM private key of --tls-cert")
    max_body_bytes: int = Field(
        1 << 20, ge=1024, description="largest request body, refused with 413 before parsing"
    )
    # Connections nobody may hold (admin_api.connections).
    header_timeout: float = Field(
        10.0, gt=0, description="seconds a connection gets to send a complete request head"
    )
    body_timeout: float = Field(
        30.0, gt=0, description="seconds a request gets to send its body after its head"
    )
    keep_alive_timeout: float = Field(
        5.0, gt=0, description="seconds an idle connection is kept open after a response"
    )
    max_connections: int = Field(1000, ge=1, description="open connections in all")
    max_connections_per_address: int = Field(
        32, ge=1, description="open connections from one client address"
    )

    _token_generated: bool = PrivateAttr(False)

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"listen {value!r} is not host:port (for example 127.0.0.1:8080)")
        return value

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        if value.lower() not in LOG_LEVELS:
            raise ValueError(f"log_level {value!r} is not one of {', '.join(LOG_LEVELS)}")
        return value.lower()

    @model_validator(mode="after")
    def _check_token(self) -> AdminSettings:
        if self.token_file:
            self.token = blaming("token_file", read_secret, self.token_file, "token file")
        if self.redis_url_file:
            url = blaming("redis_url_file", read_secret, self.redis_url_file, "Redis URL file")
            self.redis_url = blaming("redis_url_file", check_redis_url, url)
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("give both --tls-cert and --tls-key (or neither, for plain HTTP)")
        problem = token_problem(self.token)
        if problem is None:
            return self
        if not self.dev:
            raise FieldProblem(
                "token_file" if self.token_file else "token",
                f"the admin token {problem}: set a random token of at least "
                f"{TOKEN_MIN_LENGTH} characters (python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'), or run with --dev / "
                "LOOKASIDE_ADMIN_DEV=1 to get a generated one",
            )
        if not self.token:
            self.token = secrets.token_urlsafe(32)
            self._token_generated = True
        else:
            log.warning("admin token %s; accepted only because dev mode is on", problem)
        return self

    @property
    def token_generated(self) -> bool:
        """True when dev mode made up the token (serve prints it)."""
        return self._token_generated

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "0.0.0.0", int(port)
