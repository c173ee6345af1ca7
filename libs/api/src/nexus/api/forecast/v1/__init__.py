"""Generated from protos/nexus/forecast/v1. Do not edit: run `make protos`."""
