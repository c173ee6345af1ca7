"""Generated from protos/nexus/orchestrator. Do not edit: run `make protos`."""
