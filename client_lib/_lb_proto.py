"""The client's own copy of the grpc.lb.v1 messages, in a private descriptor pool.

A process may already hold another copy of grpc.lb.v1 in protobuf's default
pool (grpcio's own, a generated module from elsewhere, or this package's
balancer in the same process). Two files defining one symbol cannot share a
pool, so the client builds its message classes in a pool of its own: they
serialize to the same bytes and never clash.

The serialized descriptors are those of lookaside_proto/lb/v1/*.proto;
tests/client_lib/test_lb_proto.py fails when they drift from the generated code.
"""

from __future__ import annotations

import base64
from typing import Any

from google.protobuf import descriptor_pool, duration_pb2, message_factory, timestamp_pb2

LOAD_BALANCER_FILE = base64.b64decode(
    "Cilsb29rYXNpZGVfcHJvdG8vbGIvdjEvbG9hZF9iYWxhbmNlci5wcm90bxIKZ3JwYy5sYi52MRoeZ29vZ2xlL3By"
    "b3RvYnVmL2R1cmF0aW9uLnByb3RvGh9nb29nbGUvcHJvdG9idWYvdGltZXN0YW1wLnByb3RvIqQBChJMb2FkQmFs"
    "YW5jZVJlcXVlc3QSQAoPaW5pdGlhbF9yZXF1ZXN0GAEgASgLMiUuZ3JwYy5sYi52MS5Jbml0aWFsTG9hZEJhbGFu"
    "Y2VSZXF1ZXN0SAASLwoMY2xpZW50X3N0YXRzGAIgASgLMhcuZ3JwYy5sYi52MS5DbGllbnRTdGF0c0gAQhsKGWxv"
    "YWRfYmFsYW5jZV9yZXF1ZXN0X3R5cGUiKQoZSW5pdGlhbExvYWRCYWxhbmNlUmVxdWVzdBIMCgRuYW1lGAEgASgJ"
    "IkQKE0NsaWVudFN0YXRzUGVyVG9rZW4SGgoSbG9hZF9iYWxhbmNlX3Rva2VuGAEgASgJEhEKCW51bV9jYWxscxgC"
    "IAEoAyKkAgoLQ2xpZW50U3RhdHMSLQoJdGltZXN0YW1wGAEgASgLMhouZ29vZ2xlLnByb3RvYnVmLlRpbWVzdGFt"
    "cBIZChFudW1fY2FsbHNfc3RhcnRlZBgCIAEoAxIaChJudW1fY2FsbHNfZmluaXNoZWQYAyABKAMSNQotbnVtX2Nh"
    "bGxzX2ZpbmlzaGVkX3dpdGhfY2xpZW50X2ZhaWxlZF90b19zZW5kGAYgASgDEikKIW51bV9jYWxsc19maW5pc2hl"
    "ZF9rbm93bl9yZWNlaXZlZBgHIAEoAxJBChhjYWxsc19maW5pc2hlZF93aXRoX2Ryb3AYCCADKAsyHy5ncnBjLmxi"
    "LnYxLkNsaWVudFN0YXRzUGVyVG9rZW5KBAgEEAVKBAgFEAYi4QEKE0xvYWRCYWxhbmNlUmVzcG9uc2USQgoQaW5p"
    "dGlhbF9yZXNwb25zZRgBIAEoCzImLmdycGMubGIudjEuSW5pdGlhbExvYWRCYWxhbmNlUmVzcG9uc2VIABItCgtz"
    "ZXJ2ZXJfbGlzdBgCIAEoCzIWLmdycGMubGIudjEuU2VydmVyTGlzdEgAEjkKEWZhbGxiYWNrX3Jlc3BvbnNlGAMg"
    "ASgLMhwuZ3JwYy5sYi52MS5GYWxsYmFja1Jlc3BvbnNlSABCHAoabG9hZF9iYWxhbmNlX3Jlc3BvbnNlX3R5cGUi"
    "EgoQRmFsbGJhY2tSZXNwb25zZSJjChpJbml0aWFsTG9hZEJhbGFuY2VSZXNwb25zZRI/ChxjbGllbnRfc3RhdHNf"
    "cmVwb3J0X2ludGVydmFsGAIgASgLMhkuZ29vZ2xlLnByb3RvYnVmLkR1cmF0aW9uSgQIARACIjcKClNlcnZlckxp"
    "c3QSIwoHc2VydmVycxgBIAMoCzISLmdycGMubGIudjEuU2VydmVySgQIAxAEIloKBlNlcnZlchISCgppcF9hZGRy"
    "ZXNzGAEgASgMEgwKBHBvcnQYAiABKAUSGgoSbG9hZF9iYWxhbmNlX3Rva2VuGAMgASgJEgwKBGRyb3AYBCABKAhK"
    "BAgFEAYyYgoMTG9hZEJhbGFuY2VyElIKC0JhbGFuY2VMb2FkEh4uZ3JwYy5sYi52MS5Mb2FkQmFsYW5jZVJlcXVl"
    "c3QaHy5ncnBjLmxiLnYxLkxvYWRCYWxhbmNlUmVzcG9uc2UoATABYgZwcm90bzM="
)
BACKEND_STATS_FILE = base64.b64decode(
    "Cilsb29rYXNpZGVfcHJvdG8vbGIvdjEvYmFja2VuZF9zdGF0cy5wcm90bxIPbG9va2FzaWRlLmxiLnYxIlUKFENs"
    "aWVudFN0YXRzRXh0ZW5zaW9uEj0KEWNhbGxzX3Blcl9iYWNrZW5kGOkHIAMoCzIhLmxvb2thc2lkZS5sYi52MS5C"
    "YWNrZW5kQ2FsbFN0YXRzIt8BChBCYWNrZW5kQ2FsbFN0YXRzEhoKEmxvYWRfYmFsYW5jZV90b2tlbhgBIAEoCRIa"
    "ChJudW1fY2FsbHNfZmluaXNoZWQYAiABKAMSNQotbnVtX2NhbGxzX2ZpbmlzaGVkX3dpdGhfY2xpZW50X2ZhaWxl"
    "ZF90b19zZW5kGAMgASgDEikKIW51bV9jYWxsc19maW5pc2hlZF9rbm93bl9yZWNlaXZlZBgEIAEoAxIxCiludW1f"
    "Y2FsbHNfZmluaXNoZWRfd2l0aF9kZWFkbGluZV9leGNlZWRlZBgFIAEoA2IGcHJvdG8z"
)

POOL = descriptor_pool.DescriptorPool()
for _dep in (duration_pb2, timestamp_pb2):
    POOL.AddSerializedFile(_dep.DESCRIPTOR.serialized_pb)
POOL.AddSerializedFile(LOAD_BALANCER_FILE)
POOL.AddSerializedFile(BACKEND_STATS_FILE)


def _message(full_name: str) -> Any:
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(full_name))


class _Namespace:
    """Message classes by short name, as a generated module offers them."""

    def __init__(self, package: str, names: tuple[str, ...]) -> None:
        for name in names:
            setattr(self, name, _message(f"{package}.{name}"))

    def __getattr__(self, name: str) -> Any:  # for the type checker: classes are dynamic
        raise AttributeError(name)


lb: Any = _Namespace(
    "grpc.lb.v1",
    (
        "LoadBalanceRequest",
        "InitialLoadBalanceRequest",
        "ClientStatsPerToken",
        "ClientStats",
        "LoadBalanceResponse",
        "FallbackResponse",
        "InitialLoadBalanceResponse",
        "ServerList",
        "Server",
    ),
)
backend_stats_pb2: Any = _Namespace("lookaside.lb.v1", ("ClientStatsExtension", "BackendCallStats"))

BALANCE_LOAD = "/grpc.lb.v1.LoadBalancer/BalanceLoad"
