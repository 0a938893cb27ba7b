"""/api/v1/streams: the client streams the balancers hold, grpclb and xDS
side by side.

grpclb: open BalanceLoad streams per pool and replica (what the pool load
shows per pool). xDS: every replica's open ADS streams, each with its
client's node id and, per resource type, the last version it accepted
(ACK) and the last it refused (NACK) with the client's error.
"""

from __future__ import annotations

import time

from fastapi import APIRouter

from admin_api.deps import ReaderDep, StoreDep
from admin_api.schemas.streams import (
    GrpclbPoolStreams,
    GrpclbStreams,
    StreamsOut,
    XdsReplicaStreams,
    XdsStreams,
    nacking,
)
from server_common.schemas.common import COMMON

router = APIRouter(prefix="/streams", tags=["streams"], responses={**COMMON})


@router.get("", response_model=StreamsOut, summary="Open grpclb and xDS client streams")
async def read(store: StoreDep, _reader: ReaderDep) -> StreamsOut:
    now_ms = int(time.time() * 1000)
    pools = []
    # One round trip for many pools, not one per pool.
    found = await store.pools_streams(sorted(await store.list_pools()), now_ms)
    for pool, rows in found.items():
        if any(r.streams for r in rows):
            pools.append(GrpclbPoolStreams.from_rows(pool, rows))
    replicas = [XdsReplicaStreams.from_replica(r) for r in await store.xds_streams(now_ms)]
    return StreamsOut(
        ts_ms=now_ms,
        grpclb=GrpclbStreams(streams_total=sum(p.streams_total for p in pools), pools=pools),
        xds=XdsStreams(
            streams_total=sum(r.streams_total for r in replicas),
            nacking=sum(1 for r in replicas for s in r.streams if nacking(s)),
            replicas=replicas,
        ),
    )
