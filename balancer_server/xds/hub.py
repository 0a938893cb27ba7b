"""The xDS resources of every pool, and the streams that subscribe to them.

A hook on the RegistryWatcher, as grpclb's FeedHub is: each pool version
is turned into its resources once (balancer_server.xds.resources), and the
streams subscribed to a resource whose bytes changed are told which type
to send again. Streams subscribe by exact pool name; a name of no pool is
held (with no resources) until that pool appears.

A deleted pool's resources go with it: the next Listener and Cluster
responses leave it out, and the clients drop it (xDS's meaning of a
resource left out), where grpclb streams keep the list they have. A pool
that is only unreachable (Redis down) keeps its resources: the watcher
reports no deletion then.
"""

from __future__ import annotations

import hashlib
import time
from typing import Protocol

from balancer_server.tls import BackendTls
from balancer_server.xds import resources
from balancer_server.xds.resources import Mutator, Resource, field_bytes
from lookaside_registry.model import PoolSnapshot

MAX_CACHED_RESPONSES = 10_000
# The cached responses' bytes at most, all together: a client that
# subscribes to ever new combinations of up to 100 pools cannot make the
# cache hold a response per combination.
MAX_CACHED_BYTES = 64 << 20


class Watcher(Protocol):
    def changed(self, type_url: str) -> None:
        """A resource of `type_url` the stream subscribes to has changed
        (or appeared, or gone)."""


class XdsPool:
    __slots__ = ("name", "resources", "watchers", "changed_at")

    def __init__(self, name: str) -> None:
        self.name = name
        # When its resource of each type last changed (time.perf_counter()).
        self.changed_at: dict[str, float] = {}
        self.resources: dict[str, Resource] = {}
        # Streams by the types they subscribe to this pool's resource of.
        self.watchers: dict[str, set[Watcher]] = {}

    @property
    def idle(self) -> bool:
        return not self.resources and not any(self.watchers.values())


class XdsHub:
    """All pools' xDS resources in one balancer process."""

    def __init__(self, tls: BackendTls | None = None) -> None:
        self.pools: dict[str, XdsPool] = {}
        # How the balancer dials the backends: TLS ones are TLS to xDS clients too.
        self.tls = tls
        # Tests set it to make the next resources invalid (see resources.Mutator).
        self.mutate: Mutator | None = None
        # Responses (without their nonce) by type and names, until a change.
        self._responses: dict[tuple[str, frozenset[str]], tuple[str, bytes, float | None]] = {}
        self._cached_bytes = 0

    def response(self, type_url: str, names: frozenset[str]) -> tuple[str, bytes, float | None]:
        """The version and the bytes (all but the nonce) of a response of
        `type_url` for `names`: the resources of those that exist, in name
        order, and when the latest of them changed (time.perf_counter()).
        Built once per change for all the streams that subscribe to the
        same names. The version is the resource's own for one resource,
        else a digest of the names and their versions."""
        key = (type_url, names)
        cached = self._responses.get(key)
        if cached is not None:
            return cached
        found = []
        for name in sorted(names):
            resource = self.resource(type_url, name)
            if resource is not None:
                found.append((name, resource))
        if len(found) == 1:
            version = found[0][1].version
        else:
            digest = hashlib.blake2b(digest_size=6)
            for name, r in found:
                digest.update(f"{name}={r.version};".encode())
            version = digest.hexdigest()
        body = b"".join(
            (
                field_bytes(1, version.encode()),
                *(r.framed for _, r in found),
                field_bytes(4, type_url.encode()),
            )
        )
        if (
            len(self._responses) >= MAX_CACHED_RESPONSES
            or self._cached_bytes + len(body) > MAX_CACHED_BYTES
        ):
            self._forget_responses()
        built = self._responses[key] = (version, body, self.changed_at(type_url, names))
        self._cached_bytes += len(body)
        return built

    def _forget_responses(self) -> None:
        self._responses.clear()
        self._cached_bytes = 0

    def resource(self, type_url: str, name: str) -> Resource | None:
        pool = self.pools.get(name)
        return None if pool is None else pool.resources.get(type_url)

    def changed_at(self, type_url: str, names: frozenset[str]) -> float | None:
        """When the latest change of a `type_url` resource of `names` was made."""
        times = [
            t
            for name in names
            if (pool := self.pools.get(name)) is not None
            and (t := pool.changed_at.get(type_url)) is not None
        ]
        return max(times) if times else None

    def watch(self, type_url: str, name: str, watcher: Watcher) -> None:
        pool = self.pools.get(name)
        if pool is None:
            pool = self.pools[name] = XdsPool(name)
        pool.watchers.setdefault(type_url, set()).add(watcher)

    def unwatch(self, type_url: str, name: str, watcher: Watcher) -> None:
        pool = self.pools.get(name)
        if pool is None:
            return
        watchers = pool.watchers.get(type_url)
        if watchers is not None:
            watchers.discard(watcher)
            if not watchers:
                del pool.watchers[type_url]
        if pool.idle:
            del self.pools[name]

    def on_change(self, name: str, snapshot: PoolSnapshot | None) -> None:
        pool = self.pools.get(name)
        if snapshot is None:
            # Deleted: its resources go, and LDS/CDS responses leave it out.
            if pool is None:
                return
            changed = list(pool.resources)
            pool.resources.clear()
        else:
            if pool is None:
                pool = self.pools[name] = XdsPool(name)
            changed = []
            for type_url, resource in resources.pool_resources(
                snapshot, self.mutate, self.tls
            ).items():
                old = pool.resources.get(type_url)
                if resource is None:
                    if old is not None:
                        del pool.resources[type_url]
                        changed.append(type_url)
                elif old is None or old.version != resource.version:
                    pool.resources[type_url] = resource
                    changed.append(type_url)
        if changed:
            self._forget_responses()
            now = time.perf_counter()
            for type_url in changed:
                pool.changed_at[type_url] = now
        for type_url in changed:
            for watcher in list(pool.watchers.get(type_url, ())):
                watcher.changed(type_url)
        if pool.idle:
            del self.pools[name]
