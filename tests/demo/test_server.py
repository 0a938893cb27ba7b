"""The demo server in-process: the 4 RPCs over the db, health, reflection,
x-served-by on every call, injected faults and latency."""

from __future__ import annotations

import math
import queue
import random
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from lookaside.demo.client import NO_SERVER, served_by
from lookaside.demo.features import load_db
from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg
from tests.demo.conftest import InProcessServer

Start = Callable[..., InProcessServer]
DB = load_db()
NASSAU = next(p for p in DB if p.name.startswith("Nassau Hall"))
BATTERY = next(p for p in DB if p.name.startswith("Battery Park"))


def point(lat: int, lon: int) -> rg.Point:
    return rg.Point(latitude=lat, longitude=lon)


def test_get_feature_named_and_unnamed(start_server: Start) -> None:
    s = start_server()
    found = s.stub.GetFeature(point(NASSAU.latitude, NASSAU.longitude), timeout=10)
    assert found.name == "Nassau Hall, Princeton, NJ, USA"
    assert (found.location.latitude, found.location.longitude) == NASSAU.location
    # One E7 unit away is another point: an unnamed Feature at that point.
    missing = s.stub.GetFeature(point(NASSAU.latitude + 1, NASSAU.longitude), timeout=10)
    assert missing.name == ""
    assert missing.location.latitude == NASSAU.latitude + 1


def test_list_features_streams_those_in_the_rectangle(start_server: Start) -> None:
    s = start_server()
    # Around lower Manhattan and Jersey City, corners given hi-first.
    lo, hi = point(406_800_000, -741_000_000), point(407_500_000, -739_500_000)
    names = [f.name for f in s.stub.ListFeatures(rg.Rectangle(lo=hi, hi=lo), timeout=10)]
    expected = [
        p.name
        for p in DB
        if 406_800_000 <= p.latitude <= 407_500_000 and -741_000_000 <= p.longitude <= -739_500_000
    ]
    assert "Battery Park, New York, NY, USA" in names
    assert "Liberty State Park, Jersey City, NJ, USA" in names
    assert names == expected
    assert list(s.stub.ListFeatures(rg.Rectangle(lo=point(0, 0), hi=point(1, 1)))) == []


def test_record_route_counts_points_features_and_metres(start_server: Start) -> None:
    s = start_server()
    lon = NASSAU.longitude
    # Along one meridian, so the distance is degrees of latitude times the
    # length of one degree (6371000 * pi / 180 m on the haversine sphere).
    route = [
        point(400_000_000, lon),  # not a feature
        point(NASSAU.latitude, lon),  # a feature
        point(410_000_000, lon),  # not a feature
        point(NASSAU.latitude, lon),  # the same feature again
    ]
    summary = s.stub.RecordRoute(iter(route), timeout=10)
    one_degree = 6_371_000 * math.pi / 180
    degrees = (410_000_000 - 400_000_000 + 410_000_000 - NASSAU.latitude) / 1e7
    assert summary.point_count == 4
    assert summary.feature_count == 2
    assert summary.distance == pytest.approx(degrees * one_degree, abs=1)
    assert summary.elapsed_time >= 0
    empty = s.stub.RecordRoute(iter([]), timeout=10)
    assert (empty.point_count, empty.feature_count, empty.distance) == (0, 0, 0)


def test_route_chat_echoes_earlier_notes_at_the_same_location(start_server: Start) -> None:
    s = start_server()
    here, there = point(1, 1), point(2, 2)
    notes = [
        rg.RouteNote(location=here, message="a"),
        rg.RouteNote(location=there, message="b"),
        rg.RouteNote(location=here, message="c"),
        rg.RouteNote(location=here, message="d"),
    ]
    got = [(n.message, n.location.latitude) for n in s.stub.RouteChat(iter(notes), timeout=10)]
    assert got == [("a", 1), ("a", 1), ("c", 1)]
    # Notes persist across calls.
    more = s.stub.RouteChat(iter([rg.RouteNote(location=there, message="e")]), timeout=10)
    assert [n.message for n in more] == ["b"]


def test_route_chat_answers_each_note_as_it_comes(start_server: Start) -> None:
    """Replies flow before the client half-closes (a real bidi stream)."""
    s = start_server()
    outbox: queue.Queue[rg.RouteNote | None] = queue.Queue()
    call = s.stub.RouteChat(iter(outbox.get, None), timeout=30)
    spot = point(5, 5)
    outbox.put(rg.RouteNote(location=spot, message="first"))
    outbox.put(rg.RouteNote(location=spot, message="second"))
    assert next(call).message == "first"
    outbox.put(None)
    assert list(call) == []


def test_health_and_reflection(start_server: Start) -> None:
    s = start_server()
    health = health_pb2_grpc.HealthStub(s.channel)
    for service in ("", "routeguide.RouteGuide"):
        response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(s.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (response,) = list(reflection.ServerReflectionInfo(iter([request]), timeout=10))
    names = {svc.name for svc in response.list_services_response.service}
    assert {"routeguide.RouteGuide", "grpc.health.v1.Health"} <= names


def test_served_by_on_success_of_every_rpc(start_server: Start) -> None:
    s = start_server(name="east-1:8081")
    _, call = s.stub.GetFeature.with_call(point(0, 0), timeout=10)
    assert ("x-served-by", "east-1:8081") in call.initial_metadata()
    stream = s.stub.ListFeatures(rg.Rectangle(), timeout=10)
    list(stream)
    assert served_by(stream) == "east-1:8081"
    _, call = s.stub.RecordRoute.with_call(iter([point(0, 0)]), timeout=10)
    assert served_by(call) == "east-1:8081"
    stream = s.stub.RouteChat(iter([rg.RouteNote()]), timeout=10)
    list(stream)
    assert served_by(stream) == "east-1:8081"


def test_default_name_is_hostname_and_port(start_server: Start) -> None:
    import socket

    s = start_server()
    assert s.name == f"{socket.gethostname()}:{s.port}"
    _, call = s.stub.GetFeature.with_call(point(0, 0), timeout=10)
    assert served_by(call) == s.name


def test_served_by_on_injected_faults(start_server: Start) -> None:
    s = start_server(fault_percent=1.0)
    with pytest.raises(grpc.RpcError) as unary:
        s.stub.GetFeature(point(0, 0), timeout=10)
    assert unary.value.code() is grpc.StatusCode.UNAVAILABLE
    assert unary.value.details() == "injected fault"
    assert served_by(unary.value) == s.name
    with pytest.raises(grpc.RpcError) as stream:
        list(s.stub.ListFeatures(rg.Rectangle(), timeout=10))
    assert stream.value.code() is grpc.StatusCode.UNAVAILABLE
    assert served_by(stream.value) == s.name
    with pytest.raises(grpc.RpcError) as bidi:
        list(s.stub.RouteChat(iter([rg.RouteNote()]), timeout=10))
    assert served_by(bidi.value) == s.name
    # Health is never failed.
    health = health_pb2_grpc.HealthStub(s.channel)
    status = health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
    assert status == health_pb2.HealthCheckResponse.SERVING


def test_seeded_fault_rate(start_server: Start) -> None:
    seed, rate, n = 20190707, 0.3, 1000
    s = start_server(fault_percent=rate, fault_seed=seed)
    failed = []
    for i in range(n):
        try:
            s.stub.GetFeature(point(0, 0), timeout=10)
        except grpc.RpcError as exc:
            assert (exc.code(), exc.details()) == (grpc.StatusCode.UNAVAILABLE, "injected fault")
            failed.append(i)
    # One draw per call from random.Random(seed): exactly these calls fail.
    draws = random.Random(seed)
    assert failed == [i for i in range(n) if draws.random() < rate]
    # ... and about 30% of them (sd 14.5; 5 sd either side).
    assert 228 <= len(failed) <= 372
    assert s.server.interceptor.faults == len(failed)


def test_no_faults_by_default(start_server: Start) -> None:
    s = start_server()
    for _ in range(200):
        s.stub.GetFeature(point(0, 0), timeout=10)
    assert s.server.interceptor.calls == 200 and s.server.interceptor.faults == 0


def test_delay_holds_routeguide_calls_but_not_health(start_server: Start) -> None:
    # A minute's delay against a 1 s deadline: the call can only miss it.
    s = start_server(delay_ms=60_000)
    with pytest.raises(grpc.RpcError) as exc:
        s.stub.GetFeature(point(0, 0), timeout=1.0)
    assert exc.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    health = health_pb2_grpc.HealthStub(s.channel)
    status = health.Check(health_pb2.HealthCheckRequest(), timeout=30).status
    assert status == health_pb2.HealthCheckResponse.SERVING


def test_blackhole_sends_nothing_and_health_stays_serving(start_server: Start) -> None:
    s = start_server(blackhole_percent=1.0)
    with pytest.raises(grpc.RpcError) as exc:
        s.stub.GetFeature(point(0, 0), timeout=0.5)
    # Nothing came back: no x-served-by, the deadline ended it.
    assert exc.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert served_by(exc.value) == NO_SERVER
    assert s.server.interceptor.blackholed == 1
    health = health_pb2_grpc.HealthStub(s.channel)
    status = health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
    assert status == health_pb2.HealthCheckResponse.SERVING
