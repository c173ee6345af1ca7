"""Generated from protos/nexus/common. Do not edit: run `make protos`."""
