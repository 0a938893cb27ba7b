"""`lookaside certs`: the files, their modes, and the names the server
certificate covers."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509

from lookaside.cli import main


def test_certs_command_writes_a_ca_and_both_certificates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["certs", "--out", str(tmp_path), "--zone", "lab.test", "--name", "lb.example"]) == 0
    )
    printed = capsys.readouterr().out.split()
    names = ["ca.pem", "server.pem", "server-key.pem", "client.pem", "client-key.pem"]
    assert printed == [str(tmp_path / n) for n in names]
    for key in ("server-key.pem", "client-key.pem", "ca-key.pem"):
        assert stat.S_IMODE((tmp_path / key).stat().st_mode) == 0o600
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    client = x509.load_pem_x509_certificate((tmp_path / "client.pem").read_bytes())
    assert server.issuer == ca.subject and client.issuer == ca.subject
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {
        "localhost", "lab.test", "*.lab.test", "lb.example",
    }  # fmt: skip
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"),
    }  # fmt: skip
    client_sans = client.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert client_sans.get_values_for_type(x509.DNSName) == ["backend.lookaside.test"]


def test_keep_leaves_existing_certificates_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--keep: an init step run on every start keeps the CA that running
    processes and clients already trust."""
    assert main(["certs", "--out", str(tmp_path), "--keep"]) == 0
    ca = (tmp_path / "ca.pem").read_bytes()
    assert main(["certs", "--out", str(tmp_path), "--keep"]) == 0
    assert (tmp_path / "ca.pem").read_bytes() == ca
    (tmp_path / "client.pem").unlink()  # incomplete: all are made again
    assert main(["certs", "--out", str(tmp_path), "--keep"]) == 0
    assert (tmp_path / "ca.pem").read_bytes() != ca
    assert main(["certs", "--out", str(tmp_path)]) == 0  # without --keep: new ones
