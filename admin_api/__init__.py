"""The admin REST API and dashboard over the Lookaside registry.

It talks only to Redis, through lookaside.registry.RegistryStore; the
balancers pick its writes up from there.
"""
