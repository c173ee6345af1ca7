"""Generated from protos/nexus/operations. Do not edit: run `make protos`."""
