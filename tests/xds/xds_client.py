"""A stock grpcio client on `xds:///POOL`, in a process of its own: gRPC
reads its xDS bootstrap once per process, and each test's balancer has a
port of its own. The bootstrap comes in GRPC_XDS_BOOTSTRAP_CONFIG (set
by the parent, before this process creates its channel).

With `--xds-creds` the channel has xDS credentials (plaintext fallback),
so that the Cluster's UpstreamTlsContext applies: TLS to the backends.

Commands on stdin, one JSON line each; one JSON line answers each:
  {"op": "calls", "n": N}      N GetFeature calls: {"backend name" or "error:CODE": count}
  {"op": "error", "n": N}      like calls, but also the first error's details
  {"op": "quit"}
"""

from __future__ import annotations

import json
import sys
from collections import Counter

import grpc
import grpc.experimental

from lookaside_proto.routeguide.v1 import route_guide_pb2 as rg
from lookaside_proto.routeguide.v1 import route_guide_pb2_grpc as rg_grpc


def main() -> None:
    target = sys.argv[1]
    # The balancer's transport is the bootstrap's. The backends': plaintext,
    # or with xDS credentials what the Cluster says.
    if "--xds-creds" in sys.argv[2:]:
        creds = grpc.xds_channel_credentials(grpc.experimental.insecure_channel_credentials())
        channel = grpc.secure_channel(target, creds)
    else:
        channel = grpc.insecure_channel(target)
    stub = rg_grpc.RouteGuideStub(channel)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "quit":
            break
        seen: Counter[str] = Counter()
        details = ""
        for _ in range(int(command["n"])):
            try:
                reply = stub.GetFeature(
                    rg.Point(latitude=1, longitude=2), timeout=float(command.get("timeout", 5))
                )
                seen[reply.name] += 1
            except grpc.RpcError as exc:
                seen[f"error:{exc.code().name}"] += 1
                details = details or (exc.details() or "")
        out: dict[str, object] = {"seen": dict(seen)}
        if command["op"] == "error":
            out["details"] = details
        print(json.dumps(out), flush=True)
    channel.close()


if __name__ == "__main__":
    main()
