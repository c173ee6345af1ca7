"""Generated from protos/nexus/llm. Do not edit: run `make protos`."""
