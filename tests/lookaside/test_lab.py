"""`lookaside up` end to end: the whole lab as separate processes, the demo
client in each mode, and nothing left running after SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from lookaside.demo.report import parse_summary
from lookaside.redis_process import free_port


def client(*args: str) -> tuple[dict[str, int], dict[str, int]]:
    out = subprocess.run(
        [sys.executable, "-m", "lookaside", "routeguide", "client", "--quiet", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return parse_summary(out.stdout)


@pytest.mark.timeout(240)
def test_lab_spreads_calls_and_leaves_nothing_behind() -> None:
    ports = {name: free_port() for name in ("balancer", "metrics", "dns", "dns_metrics", "admin")}
    lab = subprocess.Popen(
        [sys.executable, "-m", "lookaside", "up",
         "--balancer-port", str(ports["balancer"]), "--metrics-port", str(ports["metrics"]),
         "--dns-port", str(ports["dns"]), "--dns-metrics-port", str(ports["dns_metrics"]),
         "--admin-port", str(ports["admin"])],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    banner: list[str] = []
    children: list[psutil.Process] = []
    try:
        assert lab.stdout is not None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = lab.stdout.readline()
            if not line:
                break
            banner.append(line.rstrip())
            if line.startswith("Ctrl-C stops everything"):
                break
        text = "\n".join(banner)
        assert "Lookaside lab is up" in text, text
        assert f"http://127.0.0.1:{ports['admin']}/" in text and "token " in text
        children = psutil.Process(lab.pid).children(recursive=True)
        assert len(children) >= 7  # redis, balancer, dns, admin, 3 backends
        backends = [line.split()[1:4] for line in banner if line.strip().startswith("backends")][0]
        first = backends[0].rstrip(",")
        target = f"routeguide.lookaside.test:{ports['balancer']}"

        per_server, _ = client("--lb", "none", "--server", first, "--mode", "repeatn", "-n", "15")
        assert list(per_server.values()) == [15]

        per_server, _ = client(
            "--lb", "lookaside", "--balancer", f"127.0.0.1:{ports['balancer']}",
            "--target", target, "--mode", "repeatn", "-n", "15",
        )  # fmt: skip
        assert sorted(per_server.values()) == [5, 5, 5]

        per_server, _ = client(
            "--lb", "grpclb-dns", "--dns", f"127.0.0.1:{ports['dns']}",
            "--target", target, "--mode", "repeatn", "-n", "60",
        )  # fmt: skip
        assert len(per_server) == 3 and sum(per_server.values()) == 60
    finally:
        lab.send_signal(signal.SIGTERM)
        try:
            lab.wait(60)
        except subprocess.TimeoutExpired:
            lab.kill()
            raise
    assert lab.returncode == 0
    still = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not still, f"left running: {still}"


@pytest.mark.timeout(120)
def test_lab_with_tls_serves_the_balancer_and_admin_over_tls() -> None:
    import grpc
    import requests
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    ports = {name: free_port() for name in ("balancer", "metrics", "dns", "dns_metrics", "admin")}
    lab = subprocess.Popen(
        [sys.executable, "-m", "lookaside", "up", "--tls", "--backends", "0",
         "--balancer-port", str(ports["balancer"]), "--metrics-port", str(ports["metrics"]),
         "--dns-port", str(ports["dns"]), "--dns-metrics-port", str(ports["dns_metrics"]),
         "--admin-port", str(ports["admin"])],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1",
             "LOOKASIDE_DNS_METRICS_LISTEN": f"127.0.0.1:{ports['dns_metrics']}"},
    )  # fmt: skip
    banner: list[str] = []
    try:
        assert lab.stdout is not None
        for line in lab.stdout:
            banner.append(line.rstrip())
            if line.startswith(("Ctrl-C stops everything", "lab failed")):
                break
        text = "\n".join(banner)
        assert "Lookaside lab is up" in text, text
        ca = next(line.split()[2] for line in banner if line.strip().startswith("tls"))
        assert f"https://127.0.0.1:{ports['admin']}/" in text
        health = requests.get(f"https://127.0.0.1:{ports['admin']}/healthz", verify=ca, timeout=5)
        assert health.status_code == 200
        creds = grpc.ssl_channel_credentials(open(ca, "rb").read())  # noqa: SIM115
        with grpc.secure_channel(f"127.0.0.1:{ports['balancer']}", creds) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        lab.send_signal(signal.SIGTERM)
        lab.wait(60)
