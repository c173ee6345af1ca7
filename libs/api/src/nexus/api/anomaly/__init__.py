"""Generated from protos/nexus/anomaly. Do not edit: run `make protos`."""
