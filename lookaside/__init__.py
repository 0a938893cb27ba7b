"""Lookaside: a grpclb lookaside load balancer."""

__version__ = "0.1.0"
