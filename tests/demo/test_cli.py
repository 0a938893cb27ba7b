"""`lookaside routeguide ...` argument handling, and the client in-process
against in-process servers."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from lookaside.cli import main
from lookaside.demo.report import parse_summary
from lookaside.demo.settings import APIS
from tests.demo.conftest import InProcessServer
from tests.support import BalancerHandle

Start = Callable[..., InProcessServer]
LINE_RE = re.compile(r"^\[(\w+)\] \((resp|error)\) \(server=(\S+)\) ")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["client", "--mode", "burst"], "--mode"),
        (["client", "--api", "GetFeatures"], "--api"),
        (["client", "--lb", "round-robin"], "--lb"),
        (["client", "-n", "0"], "-n"),
        (["client", "--lb", "none"], "--lb none needs --server"),
        (["client", "--lb", "none", "--server", "localhost"], "not host:port"),
        (["client", "--lb", "xds", "--balancer", ""], "--lb xds needs --balancer"),
        (["client", "--lb", "xds", "--target", "xds://auth/pool"], "is not xds:///POOL"),
        (["server", "--fault-percent", "30"], "--fault-percent"),
        (["server", "--weight", "0"], "--weight"),
        (["server", "--listen", "nowhere"], "not host:port"),
        (["server", "--balancer", "127.0.0.1"], "not host:port"),
        (["bogus"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_and_say_why(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["routeguide", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_environment_variable_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOOKASIDE_ROUTEGUIDE_CLIENT_N", "many")
    with pytest.raises(SystemExit) as exc:
        main(["routeguide", "client", "--lb", "none", "--server", "127.0.0.1:1"])
    assert exc.value.code == 2
    assert "LOOKASIDE_ROUTEGUIDE_CLIENT_N" in capsys.readouterr().err


def test_flags_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from lookaside.cli import build_parser
    from lookaside.demo.settings import ClientSettings, ServerSettings
    from server_common.settings import settings_from_args

    monkeypatch.setenv("LOOKASIDE_ROUTEGUIDE_FAULT_PERCENT", "0.5")
    monkeypatch.setenv("LOOKASIDE_ROUTEGUIDE_POOL", "from-env")
    monkeypatch.setenv("LOOKASIDE_ROUTEGUIDE_CLIENT_QUIET", "true")
    args = build_parser().parse_args(["routeguide", "server", "--pool", "from-flag"])
    server = settings_from_args(ServerSettings, args)
    assert (server.pool, server.fault_percent) == ("from-flag", 0.5)
    args = build_parser().parse_args(["routeguide", "client", "-n", "7", "--lb", "none",
                                      "--server", "127.0.0.1:1"])  # fmt: skip
    client = settings_from_args(ClientSettings, args)
    assert (client.n, client.quiet, client.lb) == (7, True, "none")


def test_repeatn_without_balancer_lands_on_the_one_server(
    start_server: Start, capsys: pytest.CaptureFixture[str]
) -> None:
    s = start_server()
    rc = main(["routeguide", "client", "--lb", "none", "--server", s.address, "-n", "6"])
    assert rc == 0
    out = capsys.readouterr().out
    calls = [m.groups() for m in map(LINE_RE.match, out.splitlines()) if m]
    assert calls == [("GetFeature", "resp", s.name)] * 6
    assert parse_summary(out) == ({s.name: 6}, {})


def test_failed_calls_still_exit_0_and_are_counted(
    start_server: Start, capsys: pytest.CaptureFixture[str]
) -> None:
    s = start_server(fault_percent=1.0)
    argv = ["routeguide", "client", "--lb", "none", "--server", s.address]
    assert main([*argv, "-n", "5", "--api", "RouteChat"]) == 0
    out = capsys.readouterr().out
    assert out.count(f"[RouteChat] (error) (server={s.name}) UNAVAILABLE: injected fault") == 5
    assert parse_summary(out) == ({s.name: 5}, {"UNAVAILABLE": 5})


def test_quiet_prints_only_the_summary(
    start_server: Start, capsys: pytest.CaptureFixture[str]
) -> None:
    s = start_server()
    argv = ["routeguide", "client", "--lb", "none", "--server", s.address, "--quiet"]
    assert main([*argv, "-n", "4", "--api", "ListFeatures"]) == 0
    out = capsys.readouterr().out
    assert not any(LINE_RE.match(line) for line in out.splitlines())
    assert parse_summary(out) == ({s.name: 4}, {})


def test_firehose_calls_all_four_apis_for_its_duration(
    start_server: Start, capsys: pytest.CaptureFixture[str]
) -> None:
    s = start_server()
    argv = ["routeguide", "client", "--lb", "none", "--server", s.address, "--mode", "firehose"]
    assert main([*argv, "--duration", "1", "--concurrency", "3", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    calls = [m.groups() for m in map(LINE_RE.match, out.splitlines()) if m]
    assert calls, out
    assert {api for api, _, _ in calls} <= set(APIS)
    assert {(kind, server) for _, kind, server in calls} == {("resp", s.name)}
    assert parse_summary(out) == ({s.name: len(calls)}, {})


def test_unreachable_server_counts_errors_without_a_server(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        argv = ["routeguide", "client", "--lb", "none", "--server", f"127.0.0.1:{port}"]
        assert main([*argv, "-n", "2", "--timeout", "5"]) == 0
    out = capsys.readouterr().out
    assert parse_summary(out) == ({"-": 2}, {"UNAVAILABLE": 2})


def test_lookaside_without_backends_says_so_and_still_exits_0(
    balancer: BalancerHandle, pool_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["routeguide", "client", "--lb", "lookaside", "--balancer", balancer.address]
    assert main([*argv, "--target", pool_name, "-n", "2", "--timeout", "1"]) == 0
    captured = capsys.readouterr()
    assert f"no server list from {balancer.address} for {pool_name!r}" in captured.err
    # The calls wait for a backend, as a gRPC channel's do, until their deadline.
    assert parse_summary(captured.out) == ({"-": 2}, {"DEADLINE_EXCEEDED": 2})
    assert (
        "[GetFeature] (error) (server=-) DEADLINE_EXCEEDED: deadline passed while the call "
        "waited for a READY backend"
    ) in captured.out


def test_lb_xds_dials_the_pool_with_a_bootstrap_from_the_balancer_flag(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    import json
    import os

    from lookaside import certs
    from lookaside.demo.client import use_bootstrap, xds_target
    from lookaside.demo.settings import ClientSettings

    monkeypatch.delenv("GRPC_XDS_BOOTSTRAP", raising=False)
    # Empty counts as unset; set here so that the test's own value is undone.
    monkeypatch.setenv("GRPC_XDS_BOOTSTRAP_CONFIG", "")
    issued = certs.issue(tmp_path)
    settings = ClientSettings(
        lb="xds",
        balancer="127.0.0.1:7001,127.0.0.1:7002",
        target="routeguide.lookaside.test:50051",
        tls_ca=str(issued.ca),
        tls_cert=str(issued.client_cert),
        tls_key=str(issued.client_key),
    )
    assert xds_target(settings) == "xds:///routeguide"
    assert xds_target(settings.model_copy(update={"target": "xds:///rg"})) == "xds:///rg"
    use_bootstrap(settings)
    doc = json.loads(os.environ["GRPC_XDS_BOOTSTRAP_CONFIG"])
    [server] = doc["xds_servers"]
    assert server["server_uri"] == "127.0.0.1:7001"
    assert server["channel_creds"][0]["config"]["certificate_file"] == str(issued.client_cert)
    assert doc["node"]["id"].startswith("routeguide-client-")
    # The same CA and client certificate for TLS backends (the Cluster's
    # certificate provider instances).
    assert set(doc["certificate_providers"]) == {"lookaside-backend-ca", "lookaside-backend-cert"}
    # A bootstrap the environment names is left alone.
    monkeypatch.setenv("GRPC_XDS_BOOTSTRAP_CONFIG", "{}")
    use_bootstrap(settings)
    assert os.environ["GRPC_XDS_BOOTSTRAP_CONFIG"] == "{}"


def test_lb_xds_spreads_calls_over_the_pools_backends(
    balancer: BalancerHandle,
    start_server: Start,
    pool_name: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stock xDS client behind --lb xds, against the fixed ADS responder
    of tests/interop/xds_fixture.py (the balancer's own ADS is tested with
    it in tests/xds)."""
    from tests.interop.xds_fixture import XdsFixture, resources

    servers = [start_server() for _ in range(3)]
    fixture = XdsFixture(balancer, resources(pool_name, [s.port for s in servers], {}))
    monkeypatch.delenv("GRPC_XDS_BOOTSTRAP", raising=False)
    monkeypatch.setenv("GRPC_XDS_BOOTSTRAP_CONFIG", "")
    try:
        argv = ["routeguide", "client", "--lb", "xds", "--balancer", fixture.address]
        assert main([*argv, "--target", f"xds:///{pool_name}", "-n", "30"]) == 0
    finally:
        fixture.stop()
    per_server, codes = parse_summary(capsys.readouterr().out)
    # Round robin over the assignment (the first calls go to whichever
    # backend is READY first).
    assert set(per_server) == {s.name for s in servers}
    assert sum(per_server.values()) == 30 and min(per_server.values()) >= 7
    assert codes == {}  # no call failed
