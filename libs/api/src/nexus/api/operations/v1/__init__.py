"""Generated from protos/nexus/operations/v1. Do not edit: run `make protos`."""
