"""`lookaside dns` as a process: flags, answers, clean exit on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys

from dnslib import DNSRecord

from lookaside.redis_process import free_port
from lookaside_registry.model import PoolConfig
from lookaside_registry.store import RegistryStore
from tests.dns_responder.dns_handle import ZONE, answers, rcode
from tests.support import LoopThread, wait_until


def test_lookaside_dns_serves_until_sigterm(redis_url: str, pool_name: str) -> None:
    loop = LoopThread("cli-test")
    store = RegistryStore.from_url(redis_url)
    try:
        loop.run(store.put_pool(PoolConfig(name=pool_name)))
        port = free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lookaside",
                "dns",
                "--listen",
                f"127.0.0.1:{port}",
                "--redis-url",
                redis_url,
                "--balancers",
                "127.0.0.1:50077",
                "--metrics-listen",
                "",
                "--ttl",
                "2",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:

            def srv() -> DNSRecord | None:
                question = DNSRecord.question(f"_grpclb._tcp.{pool_name}.{ZONE}", "SRV")
                try:
                    return DNSRecord.parse(question.send("127.0.0.1", port, timeout=0.2))
                except OSError:
                    return None

            wait_until(lambda: (reply := srv()) is not None and rcode(reply) == "NOERROR")
            reply = srv()
            assert reply is not None
            assert answers(reply, "SRV") == [f"0 0 50077 lb-0.{ZONE}."]
            assert {r.ttl for r in reply.rr} == {2}
        finally:
            proc.send_signal(signal.SIGTERM)
            output = proc.communicate(timeout=15)[0].decode()
        assert proc.returncode == 0, output
        assert "dns responder listening" in output
        assert "dns responder stopped" in output
    finally:
        loop.run(store.close())
        loop.close()
