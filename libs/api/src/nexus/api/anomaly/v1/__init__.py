"""Generated from protos/nexus/anomaly/v1. Do not edit: run `make protos`."""
