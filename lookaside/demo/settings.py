"""Settings of the routeguide demo: one object for the server (env prefix
LOOKASIDE_ROUTEGUIDE_) and one for the client (LOOKASIDE_ROUTEGUIDE_CLIENT_).
Every flag reads its variable; flags given on the command line win."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from server_common.settings import host_port


def read_text(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise ValueError(f"cannot read the {what} {path!r}: {exc.strerror}") from None


def _pair(cert: str, key: str) -> None:
    if bool(cert) != bool(key):
        raise ValueError("--tls-cert and --tls-key go together: give both or neither")


def read_bytes(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ValueError(f"cannot read the {what} {path!r}: {exc.strerror}") from None


XDS_TARGET = re.compile(r"xds:///[A-Za-z0-9._\-]{1,255}")
APIS = ("GetFeature", "ListFeatures", "RecordRoute", "RouteChat")
LB_MODES = ("lookaside", "grpclb-dns", "xds", "none")

Api = Literal["GetFeature", "ListFeatures", "RecordRoute", "RouteChat"]


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOOKASIDE_ROUTEGUIDE_", extra="ignore")

    listen: str = Field("127.0.0.1:0", description="host:port to serve on; port 0 picks one")
    name: str = Field("", description="the x-served-by name; default <hostname>:<port>")
    balancer: str = Field(
        "", description="balancer host:port (comma-separated replicas) to register with"
    )
    pool: str = Field("routeguide", description="the pool to register in")
    advertise_host: str = Field("127.0.0.1", description="the host clients reach this server at")
    weight: int = Field(1, ge=1, le=1000, description="the registration weight, 1..1000")
    fault_percent: float = Field(
        0.0, ge=0.0, le=1.0, description="fraction of calls failed with UNAVAILABLE (0.3 = 30%)"
    )
    fault_seed: int | None = Field(None, description="seed of the fault draws; default random")
    blackhole_percent: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="fraction of calls answered with nothing until the caller gives up "
        "(health still SERVING)",
    )
    delay_ms: int = Field(0, ge=0, description="latency added to every call, in milliseconds")
    db: str = Field("", description="features JSON file; default the one shipped with lookaside")
    grace: float = Field(2.0, ge=0, description="seconds in-flight calls get on shutdown")
    registration_token: str = Field(
        "",
        description="token sent as 'authorization: Bearer' when registering (unsafe on the "
        "command line: use --registration-token-file)",
        repr=False,
    )
    registration_token_file: str = Field(
        "", description="file holding the registration token (instead of --registration-token)"
    )
    tls_cert: str = Field("", description="PEM certificate to serve TLS with (needs --tls-key)")
    tls_key: str = Field("", description="PEM private key of --tls-cert")
    tls_client_ca: str = Field(
        "", description="PEM CA bundle: require and verify client certificates (mTLS)"
    )
    balancer_tls_ca: str = Field(
        "", description="PEM CA bundle to verify the balancer with; empty: plaintext"
    )
    log_level: str = Field("info", description="debug, info, warning or error")

    @model_validator(mode="after")
    def _secrets_and_tls(self) -> ServerSettings:
        if self.registration_token and self.registration_token_file:
            raise ValueError("give --registration-token or --registration-token-file, not both")
        _pair(self.tls_cert, self.tls_key)
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key (mTLS is TLS)")
        return self

    def token(self) -> str:
        """The registration token, read from --registration-token-file if given."""
        if not self.registration_token_file:
            return self.registration_token
        return read_text(self.registration_token_file, "registration token file").strip()

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        return host_port(v, "listen", port_zero=True)

    @field_validator("balancer")
    @classmethod
    def _balancer(cls, v: str) -> str:
        return ",".join(host_port(b, "balancer") for b in v.split(",") if b.strip())

    @property
    def balancers(self) -> list[str]:
        return [b for b in self.balancer.split(",") if b]


class ClientSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOOKASIDE_ROUTEGUIDE_CLIENT_", extra="ignore")

    lb: Literal["lookaside", "grpclb-dns", "xds", "none"] = Field(
        "lookaside",
        description="lookaside (thin client), grpclb-dns (stock grpclb), xds (stock xDS "
        "client on xds:///POOL from the --balancer) or none",
    )
    mode: Literal["repeatn", "firehose"] = Field(
        "repeatn", description="repeatn: -n calls of --api; firehose: random APIs until stopped"
    )
    api: Api = Field("GetFeature", description="the API repeatn calls")
    n: int = Field(15, ge=1, description="number of calls in repeatn mode")
    duration: float = Field(0.0, ge=0, description="seconds the firehose runs; 0 runs until Ctrl-C")
    concurrency: int = Field(1, ge=1, le=1000, description="calls in flight at once")
    target: str = Field(
        "routeguide.lookaside.test:50051",
        description="service name for lookaside/grpclb-dns; for xds the pool is its first "
        "DNS label (or give xds:///POOL)",
    )
    balancer: str = Field(
        "127.0.0.1:50051",
        description="balancer host:port (comma-separated) for --lb lookaside; the first is "
        "the xDS server for --lb xds",
    )
    dns: str = Field(
        "127.0.0.1:8053",
        description="DNS server host:port for --lb grpclb-dns; empty for the system's resolver",
    )
    server: str = Field("", description="server host:port for --lb none")
    timeout: float = Field(5.0, gt=0, description="deadline of each call, in seconds")
    seed: int | None = Field(None, description="seed of the request generator; default random")
    quiet: bool = Field(False, description="print only the summary, not every call")
    tls_ca: str = Field(
        "", description="PEM CA bundle: use TLS to the balancer and backends, verified with it"
    )
    tls_cert: str = Field("", description="PEM client certificate for mTLS (needs --tls-key)")
    tls_key: str = Field("", description="PEM private key of --tls-cert")
    server_name: str = Field(
        "",
        description="name the balancer's and backends' certificates must carry (with --tls-ca); "
        "default the address dialled",
    )
    log_level: str = Field("warning", description="debug, info, warning or error")

    @field_validator("balancer")
    @classmethod
    def _balancer(cls, v: str) -> str:
        return ",".join(host_port(b, "balancer") for b in v.split(",") if b.strip())

    @field_validator("dns")
    @classmethod
    def _dns(cls, v: str) -> str:
        return host_port(v, "dns") if v.strip() else ""

    @field_validator("server")
    @classmethod
    def _server(cls, v: str) -> str:
        return host_port(v, "server") if v else v

    @model_validator(mode="after")
    def _needs(self) -> ClientSettings:
        if self.lb == "none" and not self.server:
            raise ValueError("--lb none needs --server host:port (the one server to call)")
        if self.lb in ("lookaside", "xds") and not self.balancers:
            raise ValueError(f"--lb {self.lb} needs --balancer host:port")
        if (
            self.lb == "xds"
            and self.target.startswith("xds:")
            and not XDS_TARGET.fullmatch(self.target)
        ):
            raise ValueError(f"--target {self.target!r} is not xds:///POOL")
        _pair(self.tls_cert, self.tls_key)
        if self.tls_cert and not self.tls_ca:
            raise ValueError("--tls-cert needs --tls-ca (a client certificate is sent over TLS)")
        if self.server_name and not self.tls_ca:
            raise ValueError("--server-name needs --tls-ca (it is the name TLS verifies)")
        return self

    @property
    def balancers(self) -> list[str]:
        return [b for b in self.balancer.split(",") if b]
