"""Generated from protos/nexus/orchestrator/v1. Do not edit: run `make protos`."""
