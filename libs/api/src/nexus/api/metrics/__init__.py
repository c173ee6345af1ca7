"""Generated from protos/nexus/metrics. Do not edit: run `make protos`."""
