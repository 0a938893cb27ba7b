"""Client streams on the balancers: grpclb BalanceLoad streams per pool and
replica, and xDS (ADS) streams per replica with what each client last
accepted and refused."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from lookaside_registry.load import ReplicaStreams
from lookaside_registry.xds import ReplicaXdsStreams


class GrpclbPoolStreams(BaseModel):
    pool: str
    streams_total: int = Field(description="open BalanceLoad streams of this pool, all replicas")
    replicas: dict[str, int] = Field(description="per balancer replica")

    @classmethod
    def from_rows(cls, pool: str, rows: list[ReplicaStreams]) -> GrpclbPoolStreams:
        return cls(
            pool=pool,
            streams_total=sum(r.streams for r in rows),
            replicas={r.replica: r.streams for r in rows},
        )


class GrpclbStreams(BaseModel):
    streams_total: int
    pools: list[GrpclbPoolStreams] = Field(description="pools with open streams")


class XdsTypeState(BaseModel):
    """One resource type of one stream (the type URL's last part, e.g.
    envoy.config.listener.v3.Listener)."""

    type_url: str
    acked_version: str | None = Field(
        description="the last version the client accepted (ACK); null before its first"
    )
    acked_ms: int | None = None
    acks: int = 0
    nacked_version: str | None = Field(
        description="the version the client said it keeps when it last refused a response "
        "(NACK); null if it never refused one"
    )
    nacked_ms: int | None = None
    nack_error: str | None = Field(description="the client's error detail of its last NACK")
    nacks: int = 0
    nacking: bool = Field(
        False,
        description="the client's last answer on this type was a NACK: it keeps "
        "acked_version while newer versions are refused",
    )


class XdsStreamOut(BaseModel):
    stream_id: str
    peer: str = Field(description="the client's address as gRPC names it")
    node_id: str = Field(description="the node id of the client's xDS bootstrap")
    opened_ms: int
    types: list[XdsTypeState]

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> XdsStreamOut | None:
        """A published row, or None when it is not one (rows come from
        Redis, written by any balancer version)."""
        try:
            types = []
            for url, t in sorted(dict(row.get("types") or {}).items()):
                types.append(
                    XdsTypeState(
                        type_url=str(url),
                        acked_version=t.get("acked_version"),
                        acked_ms=_ms(t.get("acked_at")),
                        acks=int(t.get("acks") or 0),
                        nacked_version=t.get("nacked_version"),
                        nacked_ms=_ms(t.get("nacked_at")),
                        nack_error=t.get("nack_error"),
                        nacks=int(t.get("nacks") or 0),
                        nacking=bool(t.get("nacking")),
                    )
                )
            return cls(
                stream_id=str(row["stream_id"]),
                peer=str(row.get("peer", "")),
                node_id=str(row.get("node_id", "")),
                opened_ms=_ms(row.get("opened_at")) or 0,
                types=types,
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


def _ms(seconds: Any) -> int | None:
    return None if seconds is None else int(float(seconds) * 1000)


class XdsReplicaStreams(BaseModel):
    replica: str = Field(description="the balancer replica's id")
    ts_ms: int = Field(description="when the replica last wrote its streams")
    streams_total: int = Field(description="open ADS streams on this replica")
    streams: list[XdsStreamOut] = Field(
        description="at most 200 of them: those with a NACK first, then the newest"
    )

    @classmethod
    def from_replica(cls, r: ReplicaXdsStreams) -> XdsReplicaStreams:
        rows = [XdsStreamOut.from_row(s) for s in r.streams]
        return cls(
            replica=r.replica,
            ts_ms=r.ts_ms,
            streams_total=r.total,
            streams=[s for s in rows if s is not None],
        )


class XdsStreams(BaseModel):
    streams_total: int
    nacking: int = Field(
        description="listed streams whose client's last answer on some type was a NACK"
    )
    replicas: list[XdsReplicaStreams] = Field(
        description="replicas that wrote within the last 15 s"
    )


class StreamsOut(BaseModel):
    ts_ms: int = Field(description="when these numbers were read")
    grpclb: GrpclbStreams
    xds: XdsStreams


def nacking(stream: XdsStreamOut) -> bool:
    return any(t.nacking for t in stream.types)
