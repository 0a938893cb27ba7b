"""`lookaside certs --out DIR`: a local CA and certificates for the lab.

Writes ca.pem (+ ca-key.pem), server.pem + server-key.pem and client.pem +
client-key.pem. The server certificate names localhost, 127.0.0.1, ::1, the
zone and `*.<zone>`: the balancer's SRV targets (lb-<i>.<zone>) and the
pools' service names (<pool>.<zone>) are all under the zone, so a stock
grpcio client uses one channel credential (the CA) for the balancer and for
the backends. The client certificate's identity (CN and DNS SAN) is what a
registration policy matches for mTLS.

For a lab only: keys are unencrypted (mode 0600) and valid for --days.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dns_responder.settings import check_dns_name

DEFAULT_ZONE = "lookaside.test"
DEFAULT_CLIENT = f"backend.{DEFAULT_ZONE}"


@dataclass(frozen=True)
class Issued:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _PEM() -> Any:  # noqa: N802 - the encoding constant, imported late
    from cryptography.hazmat.primitives import serialization

    return serialization.Encoding.PEM


def _key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(k: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return k.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(cn: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])


def _leaf(
    ca: Any, ca_key: Any, cn: str, sans: list[Any], usage: Any, days: int
) -> tuple[bytes, bytes]:
    """A certificate signed by `ca` and its key, both PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    now = datetime.datetime.now(datetime.UTC)
    k = _key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.subject)
        .public_key(k.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(_PEM()), _pem_key(k)


def issue_client(
    ca_dir: str | Path,
    name: str,
    *,
    cn: str = "",
    dns: tuple[str, ...] = (),
    uris: tuple[str, ...] = (),
    emails: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
    days: int = 30,
) -> tuple[Path, Path]:
    """Another client certificate from the CA that `issue` wrote to
    `ca_dir`, with exactly the CN and SANs given: `<name>.pem` and
    `<name>-key.pem` in `ca_dir`. Tests use it for certificates that try to
    pass for someone else."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca_dir = Path(ca_dir)
    ca = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca-key.pem").read_bytes(), None)
    sans: list[Any] = [x509.DNSName(d) for d in dns]
    sans += [x509.UniformResourceIdentifier(u) for u in uris]
    sans += [x509.RFC822Name(e) for e in emails]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    cert, key = _leaf(ca, ca_key, cn, sans, ExtendedKeyUsageOID.CLIENT_AUTH, days)
    return _write(ca_dir / f"{name}.pem", cert), _write(ca_dir / f"{name}-key.pem", key, True)


def issue(
    out: str | Path,
    *,
    zone: str = DEFAULT_ZONE,
    names: tuple[str, ...] = (),
    client_name: str = DEFAULT_CLIENT,
    client_ips: tuple[str, ...] = (),
    days: int = 30,
) -> Issued:
    """Makes the CA and both certificates under `out` (overwriting)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    out = Path(out)
    now = datetime.datetime.now(datetime.UTC)
    until = now + datetime.timedelta(days=days)
    ca_key = _key()
    ca_name = _name("Lookaside lab CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str, sans: list[Any], usage: Any) -> tuple[bytes, bytes]:
        return _leaf(ca, ca_key, cn, sans, usage, days)

    dns_names = ["localhost", zone, f"*.{zone}", *names]
    server_sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys(dns_names)]
    server_sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
    server_pem, server_key = leaf(f"lb.{zone}", server_sans, ExtendedKeyUsageOID.SERVER_AUTH)
    client_sans: list[x509.GeneralName] = [x509.DNSName(client_name)]
    client_sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in client_ips]
    client_pem, client_key = leaf(client_name, client_sans, ExtendedKeyUsageOID.CLIENT_AUTH)
    _write(out / "ca-key.pem", _pem_key(ca_key), private=True)
    return Issued(
        ca=_write(out / "ca.pem", ca.public_bytes(_PEM())),
        server_cert=_write(out / "server.pem", server_pem),
        server_key=_write(out / "server-key.pem", server_key, private=True),
        client_cert=_write(out / "client.pem", client_pem),
        client_key=_write(out / "client-key.pem", client_key, private=True),
    )


def existing(out: str | Path) -> Issued | None:
    """The certificates under `out` when all of them are there."""
    out = Path(out)
    found = Issued(
        ca=out / "ca.pem",
        server_cert=out / "server.pem",
        server_key=out / "server-key.pem",
        client_cert=out / "client.pem",
        client_key=out / "client-key.pem",
    )
    files = (found.ca, found.server_cert, found.server_key, found.client_cert, found.client_key)
    return found if all(f.is_file() for f in files) else None


def kept_or_issued(out: str | Path, *, zone: str = DEFAULT_ZONE) -> Issued:
    """The certificates already under `out` when they are all there, name
    `zone` and stay valid for another day (so clients keep trusting the same
    CA across restarts of the lab); otherwise new ones (issue())."""
    from cryptography import x509

    kept = existing(out)
    try:
        if kept is not None:
            cert = x509.load_pem_x509_certificate(kept.server_cert.read_bytes())
            x509.load_pem_x509_certificate(kept.ca.read_bytes())
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            tomorrow = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
            if zone in sans.get_values_for_type(x509.DNSName) and (
                cert.not_valid_after_utc > tomorrow
            ):
                return kept
    except (OSError, ValueError, x509.ExtensionNotFound):
        pass
    return issue(out, zone=zone)


def _run(args: argparse.Namespace) -> int:
    kept = existing(args.out) if args.keep else None
    try:
        issued = kept or issue(
            args.out,
            zone=args.zone,
            names=tuple(args.name or ()),
            client_name=args.client_name,
            days=args.days,
        )
    except OSError as exc:
        print(
            f"lookaside certs: cannot write to --out {args.out}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    for path in (issued.ca, issued.server_cert, issued.server_key, issued.client_cert,
                 issued.client_key):  # fmt: skip
        print(path)
    return 0


MAX_DAYS = 3650


def _dns_name(value: str) -> str:
    try:
        return check_dns_name(value, "name")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _san(value: str) -> str:
    """A DNS name, or a wildcard one (*.<name>) for the server certificate."""
    wild = value.strip().startswith("*.")
    return "*." + _dns_name(value.strip()[2:]) if wild else _dns_name(value)


def _days(value: str) -> int:
    try:
        days = int(value)
    except ValueError:
        days = 0
    if not 1 <= days <= MAX_DAYS:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of days in 1..{MAX_DAYS}")
    return days


def add_subcommand(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "certs", help="make a local CA and TLS certificates", description=__doc__.splitlines()[0]
    )
    p.add_argument("--out", required=True, help="directory to write the PEM files to")
    p.add_argument(
        "--zone",
        type=_dns_name,
        default=DEFAULT_ZONE,
        help="DNS zone the server certificate covers",
    )
    p.add_argument(
        "--name",
        type=_san,
        action="append",
        help="another DNS name (or *.name) for the server certificate",
    )
    p.add_argument(
        "--client-name",
        type=_dns_name,
        default=DEFAULT_CLIENT,
        help="identity (CN, DNS SAN) of the client cert",
    )
    p.add_argument("--days", type=_days, default=30, help=f"validity in days (1..{MAX_DAYS})")
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the certificates already in --out (a container's init step); make them "
        "only when some are missing",
    )
    p.set_defaults(func=_run)
