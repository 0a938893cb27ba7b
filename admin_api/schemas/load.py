"""What clients reported for a pool, and what its backends say of themselves."""

from __future__ import annotations

from pydantic import BaseModel, Field

from lookaside_registry.load import LoadWindow


class LoadCounts(BaseModel):
    started: int = Field(description="calls started")
    finished: int = Field(description="calls finished")
    failed_to_send: int = Field(description="calls that finished because the client failed to send")
    known_received: int = Field(description="calls the backend is known to have received")
    reports: int = Field(description="ClientStats messages received")
    drops: dict[str, int] = Field(description="calls dropped, by drop token")


class LoadRates(BaseModel):
    """Per second, over the window's span."""

    started: float
    finished: float
    failed_to_send: float
    known_received: float
    dropped: float = Field(description="all drop tokens together")


class SourceCounts(BaseModel):
    """One source's share of a window's counts."""

    started: int
    finished: int
    failed_to_send: int
    known_received: int
    reports: int = Field(description="reports received (ClientStats, or LRS cluster reports)")
    dropped: int = Field(description="calls dropped, all drop tokens together")
    finished_per_second: float


class LoadWindowOut(BaseModel):
    window: str = Field(description="10s, 1m or 15m")
    seconds: float = Field(
        description="the span summed: the window rounded up to whole 10 s buckets"
    )
    counts: LoadCounts
    rates: LoadRates
    sources: dict[str, SourceCounts] = Field(
        description="the counts per source: `grpclb` (BalanceLoad ClientStats) and `xds` "
        "(LRS load reports of xDS clients); together they are `counts`"
    )

    @classmethod
    def from_window(cls, w: LoadWindow) -> LoadWindowOut:
        c = w.counts
        return cls(
            window=w.name,
            seconds=w.seconds,
            counts=LoadCounts(
                started=c.get("started", 0),
                finished=c.get("finished", 0),
                failed_to_send=c.get("failed_to_send", 0),
                known_received=c.get("known_received", 0),
                reports=c.get("reports", 0),
                drops=dict(w.drops),
            ),
            rates=LoadRates(
                started=round(w.rate("started"), 3),
                finished=round(w.rate("finished"), 3),
                failed_to_send=round(w.rate("failed_to_send"), 3),
                known_received=round(w.rate("known_received"), 3),
                dropped=round(w.drops_per_second, 3),
            ),
            sources={
                name: SourceCounts(
                    **counts,
                    finished_per_second=round(counts["finished"] / w.seconds, 3)
                    if w.seconds > 0
                    else 0.0,
                )
                for name, counts in w.by_source().items()
            },
        )


class ReplicaStreamsOut(BaseModel):
    replica: str = Field(description="the balancer replica's id")
    streams: int = Field(description="open BalanceLoad streams for this pool")
    ts_ms: int = Field(description="when the replica last wrote the count")


class BackendLoadOut(BaseModel):
    id: str
    address: str
    state: str
    weight: int
    load: dict[str, float] = Field(
        description="utilization, in_flight, qps from the last heartbeat"
    )


class PoolLoad(BaseModel):
    pool: str
    ts_ms: int = Field(description="when these numbers were read")
    windows: list[LoadWindowOut]
    total: dict[str, int] = Field(description="running totals since the pool's first report")
    streams: list[ReplicaStreamsOut] = Field(description="replicas that reported in the last 10 s")
    streams_total: int
    backends: list[BackendLoadOut]
