"""Generated from protos/nexus/models/v1. Do not edit: run `make protos`."""
