"""A chaos lab for a test module: started, then stopped and removed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

from lookaside.chaos.cluster import ChaosLab

L = TypeVar("L", bound=ChaosLab)

CLIENTS = ("thin-sync", "thin-aio", "grpcio-dns")


def running(lab: L) -> Iterator[L]:
    try:
        lab.start()
        yield lab
    finally:
        lab.stop()
        lab.cleanup()
