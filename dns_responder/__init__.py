"""DNS for stock gRPC clients: SRV records that point C-core and grpc-go
clients at the Lookaside balancers, and A records of each pool's serving
backends for their fallback. See docs/stock-clients.md."""
