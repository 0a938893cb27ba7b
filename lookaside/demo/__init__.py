"""The routeguide demo: a server that names itself in every response and
registers in a pool, and a client that shows where its calls land.

    features     the features db and the geometry over it (pure)
    report       per-call lines and the summary table (pure)
    settings     ServerSettings, ClientSettings and their flags
    interceptor  x-served-by, injected latency and faults
    server       the grpc.aio server and `serve`
    client       the channels and the call loops
    cli          `lookaside routeguide server|client`
"""
