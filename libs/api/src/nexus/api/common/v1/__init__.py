"""Generated from protos/nexus/common/v1. Do not edit: run `make protos`."""
