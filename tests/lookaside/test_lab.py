"""`lookaside up` end to end: the whole lab as separate processes, the demo
client in each mode, a backend killed and restarted, a second lab refused,
a service's death reported with exit status 1, and nothing left running,
and no traceback in any log, after Ctrl-C."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from lookaside.cli import main
from lookaside.demo.report import parse_summary
from lookaside.redis_process import free_port
from tests.support import wait_until


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


def lab_ports() -> dict[str, int]:
    return {name: free_port() for name in ("balancer", "metrics", "dns", "dns_metrics", "admin")}


def start_lab(ports: dict[str, int], *flags: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "lookaside", "up",
         "--balancer-port", str(ports["balancer"]), "--metrics-port", str(ports["metrics"]),
         "--dns-port", str(ports["dns"]), "--dns-metrics-port", str(ports["dns_metrics"]),
         "--admin-port", str(ports["admin"]), *flags],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,  # its own process group, as in a terminal
    )  # fmt: skip


def read_until(lab: subprocess.Popen[str], prefix: str, seconds: float = 90) -> list[str]:
    """The lab's output lines up to the first one containing `prefix`."""
    assert lab.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = lab.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if prefix in line:
            break
    return lines


@pytest.mark.timeout(240)
def test_lab_spreads_calls_and_leaves_nothing_behind(tmp_path: Path) -> None:
    ports = lab_ports()
    logs = tmp_path / "lab"
    lab = start_lab(ports, "--restart-backends", "--log-dir", str(logs))
    banner: list[str] = []
    children: list[psutil.Process] = []
    try:
        banner = read_until(lab, "Ctrl-C stops everything")
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

        # The banner's ctl line works as printed (the venv's `lookaside`; the
        # URL and token from the context the lab wrote).
        [ctl_line] = [line for line in banner if line.endswith(" ctl pools")]
        ctl = subprocess.run(shlex.split(ctl_line), capture_output=True, text=True, timeout=60)
        assert ctl.returncode == 0, (ctl_line, ctl.stderr)
        assert "routeguide" in ctl.stdout and "3" in ctl.stdout, ctl.stdout

        # The banner's xds-bootstrap line prints a bootstrap for the lab's
        # balancer (the part before the shell redirection).
        [xds_line] = [line for line in banner if " xds-bootstrap " in line]
        made = subprocess.run(
            shlex.split(xds_line.split(" > ")[0]), capture_output=True, text=True, timeout=60
        )
        assert made.returncode == 0, (xds_line, made.stderr)
        [xds_server] = json.loads(made.stdout)["xds_servers"]
        assert xds_server["server_uri"] == f"127.0.0.1:{ports['balancer']}"
        assert any("--lb xds" in line and "xds:///routeguide" in line for line in banner)

        # A second lab on the same ports is refused, naming the first.
        second = subprocess.run(
            [sys.executable, "-m", "lookaside", "up", "--balancer-port", str(ports["balancer"])],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert second.returncode == 1
        assert f"another lab (pid {lab.pid})" in second.stderr

        # A backend killed: reported, the lab keeps running and restarts it.
        pids = dict(
            pair.split() for pair in banner[[b.strip().startswith("pids") for b in banner].index(True)]
            .split(None, 1)[1].split(", ")
        )  # fmt: skip
        os.kill(int(pids["routeguide-2"]), signal.SIGKILL)
        lines = read_until(lab, "restarted routeguide-2", 60)
        assert any("routeguide-2" in ln and "killed by SIGKILL" in ln for ln in lines), lines
        assert "restarted routeguide-2" in lines[-1], lines
        assert lab.poll() is None
        children = psutil.Process(lab.pid).children(recursive=True)
    finally:
        # Ctrl-C in a terminal: SIGINT to the lab's whole process group.
        os.killpg(lab.pid, signal.SIGINT)
        try:
            lab.wait(60)
        except subprocess.TimeoutExpired:
            lab.kill()
            raise
    assert lab.returncode == 0
    still = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not still, f"left running: {still}"
    for log in ("admin", "balancer", "dns", "routeguide-1"):
        text = (logs / "logs" / f"{log}.log").read_text()
        assert "Traceback" not in text and "CancelledError" not in text, (log, text[-2000:])


@pytest.mark.timeout(120)
def test_lab_restarts_its_redis_and_stops_with_status_1_when_a_service_dies(tmp_path: Path) -> None:
    lab = start_lab(lab_ports(), "--backends", "0")
    try:
        banner = read_until(lab, "Ctrl-C stops everything")
        # Its Redis killed: started again from the append-only file.
        redis_pid = int(
            [b for b in banner if "append-only" in b][0].split("(pid ")[1].split(",")[0]
        )
        os.kill(redis_pid, signal.SIGKILL)
        lines = read_until(lab, "restarted it from its append-only file", 60)
        assert f"redis (pid {redis_pid}) was killed by SIGKILL" in lines[-1], lines
        # A balancer killed: the lab stops, with status 1.
        pids = [b for b in banner if b.strip().startswith("pids")][0]
        balancer_pid = int(pids.split("balancer ")[1].split(",")[0])
        os.kill(balancer_pid, signal.SIGKILL)
        out, _ = lab.communicate(timeout=60)
    finally:
        if lab.poll() is None:
            lab.kill()
    assert lab.returncode == 1
    assert f"balancer (pid {balancer_pid}) was killed by SIGKILL; stopping the lab" in out
    assert "logs kept in" in out


def test_lab_names_the_flag_of_a_taken_port(capsys: pytest.CaptureFixture[str]) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    ports = lab_ports()
    ports["admin"] = taken.getsockname()[1]
    try:
        code = main(
            ["up", "--balancer-port", str(ports["balancer"]), "--metrics-port",
             str(ports["metrics"]), "--dns-port", str(ports["dns"]), "--dns-metrics-port",
             str(ports["dns_metrics"]), "--admin-port", str(ports["admin"])]
        )  # fmt: skip
    finally:
        taken.close()
    assert code == 1
    err = capsys.readouterr().err
    assert f"port {ports['admin']} for the admin API is taken" in err
    assert "--admin-port (env LOOKASIDE_LAB_ADMIN_PORT)" in err


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("http://127.0.0.1:6379/0", "is not a Redis URL: it has scheme 'http://'"),
        ("notaurl", "is not a Redis URL: it has no scheme"),
    ],
)
def test_lab_refuses_a_bad_redis_url(
    flag: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["up", "--redis-url", flag])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"--redis-url: {flag!r}" in err and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_lab_with_an_unreachable_redis_exits_1_naming_the_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ports = lab_ports()
    url = f"redis://127.0.0.1:{free_port()}/0"
    code = main(
        ["up", "--redis-url", url, "--balancer-port", str(ports["balancer"]), "--metrics-port",
         str(ports["metrics"]), "--dns-port", str(ports["dns"]), "--dns-metrics-port",
         str(ports["dns_metrics"]), "--admin-port", str(ports["admin"])]
    )  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert f"cannot reach Redis at {url}" in err
    assert "--redis-url (env LOOKASIDE_LAB_REDIS_URL)" in err


@pytest.mark.timeout(180)
def test_lab_with_tls_runs_the_production_profile() -> None:
    """`lookaside up --tls`: TLS on the balancer, admin API and backends;
    backends registered with the pool's own token; the balancer's health
    checks reach the TLS backends, so every backend stays SERVING (they
    all failed their checks when the checks dialled plaintext)."""
    import re

    import grpc
    import requests
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    ports = {name: free_port() for name in ("balancer", "metrics", "dns", "dns_metrics", "admin")}
    lab = subprocess.Popen(
        [sys.executable, "-m", "lookaside", "up", "--tls", "--backends", "2",
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
        admin_line = next(ln for ln in banner if ln.strip().startswith("admin"))
        token = Path(admin_line.split("token in ")[1].strip()).read_text().strip()
        admin = f"https://127.0.0.1:{ports['admin']}"
        health = requests.get(f"{admin}/healthz", verify=ca, timeout=5)
        assert health.status_code == 200
        creds = grpc.ssl_channel_credentials(open(ca, "rb").read())  # noqa: SIM115
        with grpc.secure_channel(f"127.0.0.1:{ports['balancer']}", creds) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

        def probes(result: str) -> float:
            metrics = requests.get(
                f"https://127.0.0.1:{ports['metrics']}/metrics", verify=ca, timeout=5
            )
            found = re.search(
                rf'health_probes_total{{pool="routeguide",result="{result}"}} (\S+)', metrics.text
            )
            return float(found.group(1)) if found else 0.0

        # Each backend probed a few times (2 s apart by default) ...
        deadline = time.monotonic() + 60
        while probes("ok") + probes("fail") < 6 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert probes("ok") >= 6, f"ok {probes('ok')}, fail {probes('fail')}"
        assert probes("fail") == 0
        dns_metrics = f"https://127.0.0.1:{ports['dns_metrics']}/metrics"
        assert requests.get(dns_metrics, verify=ca, timeout=5).status_code == 200
        # ... and all serving, registered with the pool's token.
        api = {"Authorization": f"Bearer {token}"}
        listed = requests.get(
            f"{admin}/api/v1/pools/routeguide/backends", headers=api, verify=ca, timeout=5
        ).json()
        assert [b["state"] for b in listed["backends"]] == ["serving", "serving"], listed
        events = requests.get(
            f"{admin}/api/v1/pools/routeguide/events", headers=api, verify=ca, timeout=5
        ).json()
        actors = {e["actor"] for e in events["events"] if e["kind"] == "registered"}
        # the principal names the pool's token and its id: one token for both
        assert len(actors) == 1, events
        assert actors.pop().startswith("registration:pool-token:routeguide#"), events
        # The banner's ctl line, as a shell runs it: the CA from the context.
        [ctl_line] = [line for line in banner if line.endswith(" ctl pools")]
        ctl = subprocess.run(
            shlex.split(ctl_line), capture_output=True, text=True, timeout=60, check=False
        )
        assert ctl.returncode == 0, (ctl_line, ctl.stderr)
        assert "routeguide" in ctl.stdout
        # The banner's xDS client line: the stock xDS client over TLS to the
        # balancer and to the TLS backends (the Cluster's UpstreamTlsContext,
        # the bootstrap's certificate providers).
        [xds_line] = [line for line in banner if "--lb xds" in line]
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_XDS_BOOTSTRAP")}
        xds = subprocess.run(
            shlex.split(xds_line), capture_output=True, text=True, timeout=60, env=env
        )
        assert xds.returncode == 0, (xds_line, xds.stderr[-2000:])
        assert "errors per status code:\n  (none)" in xds.stdout, xds.stdout
    finally:
        lab.send_signal(signal.SIGTERM)
        lab.wait(60)


def lookaside(*args: str) -> subprocess.CompletedProcess[str]:
    """The command with no flag naming the lab: only the context does."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOOKASIDE_ADMIN_", "LOOKASIDE_WATCH_", "LOOKASIDE_STATE_"))}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "lookaside", *args],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip


def stop_lab(lab: subprocess.Popen[str]) -> None:
    os.killpg(lab.pid, signal.SIGINT)
    try:
        lab.wait(60)
    except subprocess.TimeoutExpired:
        lab.kill()
        raise


@pytest.mark.timeout(300)
def test_lab_writes_a_context_and_keeps_its_token_and_ca(context_file: str) -> None:
    import json

    ports = lab_ports()
    lab = start_lab(ports, "--tls", "--backends", "1")
    try:
        text = "\n".join(read_until(lab, "Ctrl-C stops everything"))
        assert "Lookaside lab is up" in text, text
        context = json.loads(Path(context_file).read_text())
        admin_url = f"https://127.0.0.1:{ports['admin']}"
        assert context["admin_url"] == admin_url
        assert context["balancer"] == f"127.0.0.1:{ports['balancer']}"
        token = Path(context["token_file"]).read_text().strip()
        ca = Path(context["ca"]).read_bytes()
        assert f"{admin_url}/#token={token}" in text  # the dashboard link, logged in
        assert f"context    {context_file}" in text

        done = lookaside("ctl", "pools", "-o", "json")
        assert done.returncode == 0, done.stderr
        [pool] = [p for p in json.loads(done.stdout)["pools"] if p["name"] == "routeguide"]
        assert pool["report_interval_ms"] == 1000  # short, so a short demo run shows up
        done = lookaside("export")
        assert done.returncode == 0 and "name: routeguide" in done.stdout, done.stderr
        done = lookaside("watch", "routeguide", "--count", "1", "-o", "json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout.splitlines()[1])["length"] == 1

        # The README's 15-call run shows in `ctl load` (the last report is
        # sent when the client closes; the balancer writes reports each second).
        target = f"routeguide.lookaside.test:{ports['balancer']}"
        client(
            "--lb", "lookaside", "--balancer", f"127.0.0.1:{ports['balancer']}",
            "--target", target, "--mode", "repeatn", "-n", "15", "--tls-ca", context["ca"],
        )  # fmt: skip

        def started() -> int:
            done = lookaside("ctl", "load", "routeguide", "-o", "json")
            assert done.returncode == 0, done.stderr
            return int(json.loads(done.stdout)["windows"][0]["counts"]["started"])

        wait_until(lambda: started() == 15, timeout=30, interval=0.5)
    finally:
        stop_lab(lab)

    lab = start_lab(ports, "--tls", "--backends", "1")
    try:
        text = "\n".join(read_until(lab, "Ctrl-C stops everything"))
        assert "Lookaside lab is up" in text, text
        context = json.loads(Path(context_file).read_text())
        assert Path(context["token_file"]).read_text().strip() == token  # kept
        assert Path(context["ca"]).read_bytes() == ca  # the same CA: clients still trust it
        assert lookaside("ctl", "pools").returncode == 0
    finally:
        stop_lab(lab)
