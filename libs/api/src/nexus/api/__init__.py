"""Generated from protos/nexus. Do not edit: run `make protos`."""
