"""Lookaside's thin client: channels that balance over a grpclb balancer's
list (round robin over READY backends, a pick queue, transparent retry,
several balancers, fallback), and the helper with which a backend registers
itself. Needs only grpcio, protobuf and grpcio-health-checking (for the
grpc.health.v1 service the registration helper adds to a backend).

    from client_lib import LookasideChannel            # grpc.Channel
    from client_lib.aio import LookasideChannel        # grpc.aio.Channel
    from client_lib import Registration, AsyncRegistration, LoadMeter

Both channels drive one I/O-free core (session.py, core.py); both
registration helpers drive one lease keeper (lease.py).
"""

from client_lib.channel import LookasideChannel
from client_lib.lease import RegistrationRefused
from client_lib.load import LoadMeter
from client_lib.picker import FailedCall
from client_lib.registration import AsyncRegistration, Registration

__all__ = [
    "AsyncRegistration",
    "FailedCall",
    "LoadMeter",
    "LookasideChannel",
    "Registration",
    "RegistrationRefused",
]
