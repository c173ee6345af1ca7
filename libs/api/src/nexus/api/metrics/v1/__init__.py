"""Generated from protos/nexus/metrics/v1. Do not edit: run `make protos`."""
