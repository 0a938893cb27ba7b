"""The `lookaside` command: bad flags exit 2 naming the flag and its
environment variable, before anything starts; a port it cannot bind exits
1 with a one-line reason."""

from __future__ import annotations

import socket
import sys

import pytest
from prometheus_client import CollectorRegistry

from lookaside.certs import issue
from lookaside.cli import main
from lookaside.redis_process import free_port
from server_common.metrics_http import serve_metrics


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["up", "--admin-token", "short"], "--admin-token: the admin token"),
        (["up", "--admin-token", "changethis-changethis"], "looks like a default"),
        (["balancer", "--listen", "nope"], "listen 'nope' is not host:port"),
        (["balancer", "--metrics-listen", "x:y"], "--metrics-listen: "),
        (["balancer", "--max-eject-share", "2"], "--max-eject-share"),
        (
            ["balancer", "--trusted-networks", "10.0.0.0/8,nope"],
            "--trusted-networks: trusted networks: 'nope' is not a network",
        ),
    ],
)
def test_bad_flags_exit_2_and_say_why(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_balancer_that_cannot_bind_exits_1(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    address = f"127.0.0.1:{taken.getsockname()[1]}"
    try:
        code = main(
            ["balancer", "--listen", address, "--redis-url", redis_url, "--metrics-listen", ""]
        )
    finally:
        taken.close()
    assert code == 1
    assert f"cannot listen on {address}: the address is in use" in capsys.readouterr().err


def test_secrets_given_as_flags_are_warned_about(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    address = f"127.0.0.1:{taken.getsockname()[1]}"
    token = "a-registration-token-0123456789"
    try:
        for argv in (
            ["balancer", "--registration-token", token, "--metrics-listen", ""],
            ["admin", "--token", token],
        ):
            try:  # the port is taken, so each stops at once (uvicorn exits 3)
                code = main([*argv, "--listen", address, "--redis-url", redis_url])
            except SystemExit as exc:
                code = exc.code  # type: ignore[assignment]
            assert code in (1, 3)
            err = capsys.readouterr().err
            flag = argv[1]
            assert f"warning: {flag} on the command line is visible to every user in `ps`" in err
            assert f"use {flag}-file or env LOOKASIDE_" in err
            assert token not in err
    finally:
        taken.close()
    assert main(["ctl", "pools", "--url", "http://127.0.0.1:1", "--token", token]) != 0
    assert "warning: --token on the command line" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["balancer", "dns", "admin"])
@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:6379/0", "is not a Redis URL: it has scheme 'http://'"),
        ("notaurl", "is not a Redis URL: it has no scheme"),
        ("redis://127.0.0.1:99999/0", "is not a Redis URL (Port out of range"),
        ("redis://127.0.0.1:6379/zero", "database 'zero' is not a number"),
    ],
)
def test_bad_redis_url_is_one_line_naming_flag_and_variable(
    command: str, url: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(
            [command, "--redis-url", url, "--dev"]
            if command == "admin"
            else [command, "--redis-url", url]
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"--redis-url: {url!r}" in err and message in err  # the flag that was given
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("command", ["balancer", "dns", "admin"])
def test_unreachable_redis_at_start_exits_1_naming_flag(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    argv = [command, "--redis-url", url, "--listen", "127.0.0.1:0", "--metrics-listen", ""]
    if command == "admin":
        argv = [command, "--redis-url", url, "--dev", "--listen", f"127.0.0.1:{free_port()}"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"cannot reach Redis at {url}" in err
    assert f"--redis-url (env LOOKASIDE_{command.upper()}_REDIS_URL)" in err
    assert len(err.strip().splitlines()) == 1


def test_state_file_that_does_not_exist_is_refused(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["balancer", "--state-file", "/nonexistent/pools.yaml"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--state-file: state file" in err and "does not exist" in err


def test_dns_default_port_is_not_mdns_and_docs_agree() -> None:
    from pathlib import Path

    from dns_responder.settings import DnsSettings
    from lookaside.demo.settings import ClientSettings
    from lookaside.lab import LabSettings

    port = DnsSettings.model_fields["listen"].default.rpartition(":")[2]
    assert port != "5353"  # mDNS
    assert str(LabSettings.model_fields["dns_port"].default) == port
    assert ClientSettings.model_fields["dns"].default.endswith(f":{port}")
    root = Path(__file__).resolve().parents[2]
    for doc in ("README.md", "docker-compose.yml", "docs/stock-clients.md"):
        text = (root / doc).read_text()
        assert ":5353" not in text, doc
        assert f":{port}" in text, doc


@pytest.mark.parametrize("flag", ["--balancer-port", "--metrics-port", "--admin-port"])
@pytest.mark.parametrize("port", ["0", "70000"])
def test_lab_port_out_of_range_exits_2_naming_the_flag(
    flag: str, port: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["up", flag, port])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"lookaside up: error: {flag}: " in err and "Traceback" not in err


@pytest.fixture(scope="module")
def mismatched_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A server certificate and a key that is not its own (the client's)."""
    certs = issue(tmp_path_factory.mktemp("certs"))
    return str(certs.server_cert), str(certs.client_key)


def test_tls_key_not_the_certificates_is_named_not_a_port_in_use(
    redis_url: str, mismatched_pair: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    cert, key = mismatched_pair
    tls = ["--tls-cert", cert, "--tls-key", key]
    listen = ["--listen", f"127.0.0.1:{free_port()}"]
    balancer = ["balancer", *listen, "--redis-url", redis_url, "--metrics-listen", "", *tls]
    backend = ["routeguide", "server", *listen, "--balancer", "127.0.0.1:1", *tls]
    for argv in (balancer, backend):
        try:
            code: object = main(argv)
        except SystemExit as exc:  # a message exits 1 with it on stderr
            code = 1 if isinstance(exc.code, str) else exc.code
            print(exc.code, file=sys.stderr)
        assert code == 1
        err = capsys.readouterr().err
        assert f"TLS key {key!r} does not go with certificate {cert!r}" in err, err
        assert "in use" not in err and "Traceback" not in err
    with pytest.raises(SystemExit) as stopped:
        serve_metrics(f"127.0.0.1:{free_port()}", CollectorRegistry(), cert, key)
    assert str(stopped.value).startswith("cannot serve /metrics over HTTPS: TLS key")


@pytest.mark.parametrize("command", ["balancer", "dns", "admin"])
def test_no_redis_url_is_refused_not_defaulted(
    command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(f"LOOKASIDE_{command.upper()}_REDIS_URL", raising=False)
    argv = [command, "--listen", "127.0.0.1:0", "--metrics-listen", ""]
    if command == "admin":
        argv = [command, "--dev", "--listen", f"127.0.0.1:{free_port()}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"no Redis given: pass --redis-url (env LOOKASIDE_{command.upper()}_REDIS_URL)" in err
    assert len(err.strip().splitlines()) == 1


def test_no_default_redis_url_anywhere() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for package in ("lookaside", "balancer_server", "admin_api", "client_lib"):
        for path in (root / package).rglob("*.py"):
            assert "127.0.0.1:6379" not in path.read_text(), path


def test_a_weak_admin_token_names_what_gave_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LOOKASIDE_ADMIN_TOKEN", raising=False)
    weak = "a" * 30
    with pytest.raises(SystemExit) as exc:
        main(["admin", "--redis-url", "redis://127.0.0.1:1/0", "--token", weak])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--token: the admin token" in err and "LOOKASIDE_ADMIN_TOKEN" not in err
    monkeypatch.setenv("LOOKASIDE_ADMIN_TOKEN", weak)
    with pytest.raises(SystemExit):
        main(["admin", "--redis-url", "redis://127.0.0.1:1/0"])
    assert "env LOOKASIDE_ADMIN_TOKEN: the admin token" in capsys.readouterr().err
    monkeypatch.delenv("LOOKASIDE_ADMIN_TOKEN")
    with pytest.raises(SystemExit):
        main(["admin", "--redis-url", "redis://127.0.0.1:1/0", "--token-file", "/nonexistent"])
    err = capsys.readouterr().err
    assert "--token-file: token file '/nonexistent' cannot be read" in err


def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["watch"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "the following arguments are required: pool" in err
    assert len(err.strip().splitlines()) == 1 and "usage:" not in err
