"""What every server shares: settings parsers, the /metrics server, the pool and backend documents and the declared-state keeper."""
