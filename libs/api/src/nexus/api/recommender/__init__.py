"""Generated from protos/nexus/recommender. Do not edit: run `make protos`."""
