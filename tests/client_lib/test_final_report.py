"""Closing the thin client sends the calls made since its last load report
(then half-closes the stream), so a run shorter than the report interval
still shows in the balancer's load. The balancer is the scripted one."""

from __future__ import annotations

import queue

import pytest

from client_lib._lb_proto import lb
from tests.client_lib.scripted import Client, ScriptedBalancer, client, server
from tests.support import RouteGuideBackend, start_backends

KINDS = ["sync", "aio"]


def reports(requests: queue.Queue[lb.LoadBalanceRequest], timeout: float) -> list[object]:
    """The client_stats requests that arrive within `timeout` of each other."""
    found = []
    while True:
        try:
            request = requests.get(timeout=timeout)
        except queue.Empty:
            return found
        if request.HasField("client_stats"):
            found.append(request.client_stats)


@pytest.mark.parametrize("kind", KINDS)
def test_close_sends_the_last_report(
    kind: str,
    lb_peer: ScriptedBalancer,
    backends: list[RouteGuideBackend],
    clients: list[Client],
) -> None:
    (one,) = start_backends(backends, 1)
    c = client(clients, kind, lb_peer.address)
    stream = lb_peer.next_stream()
    stream.initial(report_interval_s=3600).servers(server(one.port))  # no timed report
    assert stream.first_request().HasField("initial_request")
    for _ in range(3):
        assert c.call(wait_for_ready=True) == one.name
    clients.remove(c)
    c.close()
    [last] = reports(stream.requests, timeout=5)
    assert (last.num_calls_started, last.num_calls_finished) == (3, 3)
