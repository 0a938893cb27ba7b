"""Stock grpcio xDS clients for tests, each in a process of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def bootstrap(
    address: str,
    node_id: str = "test-node",
    channel_creds: list[dict[str, Any]] | None = None,
    call_creds: list[dict[str, Any]] | None = None,
) -> str:
    """A bootstrap naming the balancer as the xDS server."""
    server: dict[str, Any] = {
        "server_uri": address,
        "channel_creds": channel_creds or [{"type": "insecure"}],
        "server_features": ["xds_v3"],
    }
    if call_creds:
        server["call_creds"] = call_creds
    return json.dumps(
        {"xds_servers": [server], "node": {"id": node_id, "locality": {"region": "local"}}}
    )


class XdsClient:
    """tests/xds/xds_client.py on `xds:///POOL`, bootstrap given through
    GRPC_XDS_BOOTSTRAP_CONFIG."""

    def __init__(self, pool: str, config: str, env: dict[str, str] | None = None) -> None:
        environ = dict(os.environ)
        environ.pop("GRPC_XDS_BOOTSTRAP", None)
        environ["GRPC_XDS_BOOTSTRAP_CONFIG"] = config
        environ["PYTHONPATH"] = f"{ROOT}{os.pathsep}{environ.get('PYTHONPATH', '')}"
        environ.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.xds.xds_client", f"xds:///{pool}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=environ,
        )
        self.stderr: list[str] = []
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()
        self._ask_raw(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def _ask_raw(self, command: dict[str, Any] | None) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if command is not None:
            self.proc.stdin.write(json.dumps(command) + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"xDS client exited: {''.join(self.stderr)[-2000:]}")
        return json.loads(line)  # type: ignore[no-any-return]

    def calls(self, n: int, timeout: float = 5.0) -> Counter[str]:
        """n calls, one after another: backend name (or error:CODE) -> count."""
        return Counter(self._ask_raw({"op": "calls", "n": n, "timeout": timeout})["seen"])

    def first_error(self, n: int = 1, timeout: float = 5.0) -> tuple[Counter[str], str]:
        out = self._ask_raw({"op": "error", "n": n, "timeout": timeout})
        return Counter(out["seen"]), out["details"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(10)
