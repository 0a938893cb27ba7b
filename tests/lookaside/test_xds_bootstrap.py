"""`lookaside xds-bootstrap`: the bootstrap a stock gRPC client takes for
xds:///POOL, over plaintext, TLS and mTLS; bad flags get one line and exit
status 2. (A stock client using such a bootstrap against a real balancer:
tests/interop/test_lrs_stock.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lookaside import certs
from lookaside.cli import main
from lookaside.xds_bootstrap import SERVER_FEATURES


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["xds-bootstrap", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_plaintext_bootstrap(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--server", "10.0.0.7:50051", "--node-id", "checkout-1")
    assert code == 0, err
    doc = json.loads(out)
    [server] = doc["xds_servers"]
    assert server["server_uri"] == "10.0.0.7:50051"
    assert server["channel_creds"] == [{"type": "insecure"}]
    # Keep what it had when a pool goes, as grpclb clients keep their list.
    assert "ignore_resource_deletion" in server["server_features"]
    assert server["server_features"] == list(SERVER_FEATURES)
    assert doc["node"] == {"id": "checkout-1"}


def test_mtls_bootstrap_names_absolute_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    issued = certs.issue(tmp_path / "certs")
    monkeypatch.chdir(tmp_path)
    out_file = tmp_path / "bootstrap.json"
    code, out, err = run(
        capsys,
        "--server", "[::1]:50051",
        "--ca", "certs/ca.pem",
        "--cert", str(issued.client_cert.relative_to(tmp_path)),
        "--key", str(issued.client_key.relative_to(tmp_path)),
        "--zone", "eu-west-1a",
        "-o", str(out_file),
    )  # fmt: skip
    assert code == 0 and out == "", err
    doc = json.loads(out_file.read_text())
    [creds] = doc["xds_servers"][0]["channel_creds"]
    assert creds["type"] == "tls"
    assert creds["config"] == {
        "ca_certificate_file": str(issued.ca.resolve()),
        "certificate_file": str(issued.client_cert.resolve()),
        "private_key_file": str(issued.client_key.resolve()),
    }
    assert doc["node"]["locality"] == {"zone": "eu-west-1a"}
    assert doc["node"]["id"]  # the hostname by default


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--server", "balancer"], "--server 'balancer' is not host:port"),
        (["--server", "127.0.0.1:0"], "port 0"),
        (["--server", "lb example:50051"], "host 'lb example' is not a host name"),
        (["--server", "lb/x?y:50051"], "is not a host name or an IP address"),
        (["--cert", "c.pem"], "--cert and --key go together"),
        (["--cert", "c.pem", "--key", "k.pem"], "--cert needs --ca"),
        (["--ca", "/nonexistent/ca.pem"], "--ca '/nonexistent/ca.pem' cannot be read"),
        (["--ca", "NOT_PEM"], "is not a PEM file"),
        (["--node-id", "x" * 200], "--node-id must be"),
        (["--client-token-file", "t.jwt"], "--client-token-file needs --ca"),
        (["--backend-cert", "c.pem"], "--backend-cert and --backend-key go together"),
        (
            ["--backend-cert", "c.pem", "--backend-key", "k.pem"],
            "--backend-cert needs --backend-ca",
        ),
        (["--backend-ca", "NOT_PEM"], "--backend-ca"),
        (["--refresh-interval", "0"], "--refresh-interval must be"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("this is no certificate\n")
    code, out, err = run(capsys, *[str(not_pem) if a == "NOT_PEM" else a for a in argv])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err, err
    assert err.startswith("lookaside xds-bootstrap: ")


def test_a_client_token_file_becomes_jwt_call_credentials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    issued = certs.issue(tmp_path / "certs")
    token = tmp_path / "client.jwt"
    token.write_text("eyJhbGciOiJub25lIn0.eyJzdWIiOiJjIn0.c2ln\n")
    code, out, err = run(capsys, "--ca", str(issued.ca), "--client-token-file", str(token))
    assert code == 0, err
    [server] = json.loads(out)["xds_servers"]
    assert server["call_creds"] == [
        {"type": "jwt_token_file", "config": {"jwt_token_file": str(token.resolve())}}
    ]
    token.write_text("not-a-jwt")
    code, _, err = run(capsys, "--ca", str(issued.ca), "--client-token-file", str(token))
    assert code == 2 and "holds no JWT" in err


def test_backend_tls_flags_define_the_clusters_certificate_providers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The instance names a TLS-backend Cluster asks for, with gRPC's
    file_watcher plugin (a stock client refusing or taking them:
    tests/xds/test_backend_tls.py)."""
    from balancer_server.xds.resources import BACKEND_CA, BACKEND_CERT

    issued = certs.issue(tmp_path / "certs")
    code, out, err = run(capsys, "--backend-ca", str(issued.ca), "--refresh-interval", "30")
    assert code == 0, err
    assert json.loads(out)["certificate_providers"] == {
        BACKEND_CA: {
            "plugin_name": "file_watcher",
            "config": {"ca_certificate_file": str(issued.ca.resolve()), "refresh_interval": "30s"},
        }
    }
    code, out, err = run(
        capsys,
        "--backend-ca", str(issued.ca),
        "--backend-cert", str(issued.client_cert),
        "--backend-key", str(issued.client_key),
    )  # fmt: skip
    assert code == 0, err
    providers = json.loads(out)["certificate_providers"]
    assert providers[BACKEND_CERT]["config"] == {
        "certificate_file": str(issued.client_cert.resolve()),
        "private_key_file": str(issued.client_key.resolve()),
        "refresh_interval": "600s",
    }
    code, out, err = run(capsys)
    assert "certificate_providers" not in json.loads(out)


@pytest.mark.parametrize(
    "server",
    ["127.0.0.1:50051", "[::1]:50051", "[fe80::1%eth0]:50051", "lb.example.com:443",
     "lb.example.com.:443", "balancer_1-a:50051"],
)  # fmt: skip
def test_host_names_and_addresses_are_servers(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "--server", server)
    assert code == 0
    assert json.loads(out)["xds_servers"][0]["server_uri"] == server


def test_a_balancer_listen_address_with_a_bad_host_is_refused_by_its_settings() -> None:
    from pydantic import ValidationError

    from balancer_server.settings import BalancerSettings

    with pytest.raises(ValidationError, match="host 'a b' is not a host name"):
        BalancerSettings(listen="a b:0", redis_url="redis://127.0.0.1:1/0")
