"""Generated from protos/nexus/vision. Do not edit: run `make protos`."""
