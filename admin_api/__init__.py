"""The admin REST API and dashboard over the Lookaside registry.

It talks only to the registry, through its port (lookaside_registry.port.
AdminPort: RegistryStore in Redis); the balancers pick its writes up from
there.
"""
