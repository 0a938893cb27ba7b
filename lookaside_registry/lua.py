"""Lua scripts run by EVALSHA, loaded one at a time.

redis-py's own Script reloads a script whenever EVALSHA answers NOSCRIPT (a
fresh or restarted Redis). Many calls at once then all send SCRIPT LOAD at
once, and on a Redis Cluster (where SCRIPT LOAD goes to every primary)
that races new node connections inside redis-py: some calls fail with
AttributeError instead of an answer. Here a call that meets NOSCRIPT loads
the script under one lock per client, and the others wait for it and then
run theirs.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError

_LOCK = "_lookaside_script_lock"


def _lock_of(redis: Any) -> asyncio.Lock:
    lock = getattr(redis, _LOCK, None)
    if lock is None:
        lock = asyncio.Lock()
        setattr(redis, _LOCK, lock)
    return lock


class Script:
    __slots__ = ("redis", "source", "sha", "_loaded")

    def __init__(self, redis: Any, source: str) -> None:
        self.redis = redis
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()  # noqa: S324 - Redis's script id
        self._loaded = False

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        if not self._loaded:
            await self._load()
        try:
            return await self.redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            # Redis lost its scripts (restarted, flushed): load again, once.
            self._loaded = False
            await self._load()
            return await self.redis.evalsha(self.sha, len(keys), *keys, *args)

    async def _load(self) -> None:
        async with _lock_of(self.redis):
            if not self._loaded:
                await self.redis.script_load(self.source)
                self._loaded = True
