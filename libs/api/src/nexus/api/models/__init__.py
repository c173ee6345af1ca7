"""Generated from protos/nexus/models. Do not edit: run `make protos`."""
