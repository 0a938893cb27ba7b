"""/metrics over HTTPS: the balancer with --tls-cert serves it with the same
certificate, the DNS responder with --metrics-tls-cert; plain HTTP is not
answered. Real processes, checked with `lookaside health-probe`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lookaside.certs import issue
from lookaside.redis_process import free_port
from tests.support import wait_until


def probe(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lookaside", "health-probe", *argv, "--timeout", "3"],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", ["balancer", "dns"])
def test_metrics_over_https(redis_url: str, tmp_path: Path, command: str) -> None:
    certs = issue(tmp_path / "certs")
    metrics_port = free_port()
    pem = ["--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)]
    if command == "dns":
        pem = [
            "--metrics-tls-cert",
            str(certs.server_cert),
            "--metrics-tls-key",
            str(certs.server_key),
        ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "lookaside", command, "--listen", f"127.0.0.1:{free_port()}",
         "--redis-url", redis_url, "--metrics-listen", f"127.0.0.1:{metrics_port}", *pem,
         *(["--registration-token", "metrics-tls-test-token-0123456789"]
           if command == "balancer" else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"https://127.0.0.1:{metrics_port}/metrics"
    try:
        wait_until(lambda: probe(url, "--tls-ca", str(certs.ca)).returncode == 0, timeout=60)
        assert probe(f"http://127.0.0.1:{metrics_port}/metrics").returncode == 1
        assert probe(url).returncode == 1  # the lab CA is not a system root
    finally:
        proc.terminate()
        proc.wait(30)


def test_dns_metrics_certificate_needs_its_key(redis_url: str, tmp_path: Path) -> None:
    certs = issue(tmp_path / "certs")
    done = subprocess.run(
        [sys.executable, "-m", "lookaside", "dns", "--redis-url", redis_url,
         "--metrics-tls-cert", str(certs.server_cert)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--metrics-tls-key" in done.stderr and len(done.stderr.strip().splitlines()) == 1
