"""nexus.common: the plumbing every Nexus service shares.

Settings, server bootstrap, errors, auth, telemetry, events, the model registry, caching and
micro-batching. Each concern lives in one module; services import from here rather than
re-implementing any of it.
"""
