"""Generated from protos/nexus/vision/v1. Do not edit: run `make protos`."""
