"""Generated from protos/nexus/forecast. Do not edit: run `make protos`."""
