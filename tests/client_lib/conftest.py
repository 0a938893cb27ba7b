"""Fixtures of the thin-client tests: the scripted balancer (a real gRPC
server that each test drives) and the clients a test opens."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.client_lib.scripted import Client, ScriptedBalancer


@pytest.fixture
def lb_peer() -> Iterator[ScriptedBalancer]:
    peer = ScriptedBalancer()
    yield peer
    peer.stop()


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for c in made:
        c.close()
