"""Generated from protos/nexus/llm/v1. Do not edit: run `make protos`."""
