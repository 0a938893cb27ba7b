"""/api/v1/pools/{pool}/load: what clients reported and what backends say.

Client reports (grpclb ClientStats, and LRS load reports of xDS clients)
are summed per pool by the balancers into 10-second buckets, and each
window also says which source reported what; they carry no per-backend
split. Per backend, the
numbers are the ones the backend sent in its last heartbeat.
"""

from __future__ import annotations

import time

from fastapi import APIRouter

from admin_api.deps import PoolPath, ReaderDep, StoreDep
from admin_api.routes.pools import load_pool
from admin_api.schemas.load import (
    BackendLoadOut,
    LoadWindowOut,
    PoolLoad,
    ReplicaStreamsOut,
)
from server_common.schemas.backends import BackendOut
from server_common.schemas.common import COMMON, NOT_FOUND

router = APIRouter(prefix="/pools/{pool}/load", tags=["load"], responses={**COMMON, **NOT_FOUND})


@router.get("", response_model=PoolLoad, summary="Client reports and backend load of a pool")
async def read(pool: PoolPath, store: StoreDep, _reader: ReaderDep) -> PoolLoad:
    snap = await load_pool(store, pool)
    now = time.time()
    windows = await store.load_windows(pool, now)
    total = await store.load_total(pool)
    streams = await store.replica_streams(pool, int(now * 1000))
    backends = []
    for b in snap.backends:
        out = BackendOut.from_backend(b)
        backends.append(
            BackendLoadOut(
                id=out.id, address=out.address, state=out.state, weight=out.weight, load=out.load
            )
        )
    return PoolLoad(
        pool=pool,
        ts_ms=int(now * 1000),
        windows=[LoadWindowOut.from_window(w) for w in windows],
        total=total,
        streams=[
            ReplicaStreamsOut(replica=s.replica, streams=s.streams, ts_ms=s.ts_ms) for s in streams
        ],
        streams_total=sum(s.streams for s in streams),
        backends=backends,
    )
