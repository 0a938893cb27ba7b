"""The generated code is what protos/ says, and it imports from an
installed package without shadowing grpcio's `grpc` module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lookaside import codegen

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh() -> None:
    assert codegen.main(["--check"]) == 0, "generated code is stale: run `make protos`"


def test_check_detects_a_stale_file(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Point the generator at a copy of the tree with one generated file edited.
    fake_root = tmp_path / "root"
    (fake_root / "protos").parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-r", str(ROOT / "protos"), str(fake_root / "protos")], check=True)
    subprocess.run(
        ["cp", "-r", str(ROOT / "lookaside_proto"), str(fake_root / "lookaside_proto")], check=True
    )
    target = fake_root / "lookaside_proto/lb/v1/load_balancer_pb2.py"
    target.write_text(target.read_text() + "\n# edited\n")
    monkeypatch.setattr(codegen, "ROOT", fake_root)
    monkeypatch.setattr(codegen, "PROTO_ROOT", fake_root / "protos")
    assert codegen.main(["--check"]) == 1


def test_wire_names_are_exact() -> None:
    from lookaside_proto.lb.v1 import load_balancer_pb2 as lb

    service = lb.DESCRIPTOR.services_by_name["LoadBalancer"]
    assert service.full_name == "grpc.lb.v1.LoadBalancer"
    method = service.methods_by_name["BalanceLoad"]
    assert method.client_streaming and method.server_streaming
    fields = {
        "LoadBalanceRequest": {"initial_request": 1, "client_stats": 2},
        "InitialLoadBalanceRequest": {"name": 1},
        "ClientStats": {
            "timestamp": 1,
            "num_calls_started": 2,
            "num_calls_finished": 3,
            "num_calls_finished_with_client_failed_to_send": 6,
            "num_calls_finished_known_received": 7,
            "calls_finished_with_drop": 8,
        },
        "ClientStatsPerToken": {"load_balance_token": 1, "num_calls": 2},
        "LoadBalanceResponse": {"initial_response": 1, "server_list": 2, "fallback_response": 3},
        "InitialLoadBalanceResponse": {"client_stats_report_interval": 2},
        "ServerList": {"servers": 1},
        "Server": {"ip_address": 1, "port": 2, "load_balance_token": 3, "drop": 4},
        "FallbackResponse": {},
    }
    for message, expected in fields.items():
        descriptor = lb.DESCRIPTOR.message_types_by_name[message]
        assert descriptor.full_name == f"grpc.lb.v1.{message}"
        assert {f.name: f.number for f in descriptor.fields} == expected, message


def test_imports_work_outside_the_repo_and_keep_grpc_intact(tmp_path: Path) -> None:
    code = (
        "import grpc, lookaside_proto.lb.v1.load_balancer_pb2_grpc as m;"
        "import lookaside_proto.registry.v1.registry_pb2_grpc;"
        "import lookaside_proto.routeguide.v1.route_guide_pb2_grpc;"
        "assert hasattr(grpc, 'insecure_channel'), grpc.__file__;"
        "print(m.LoadBalancerStub.__name__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "LoadBalancerStub"
