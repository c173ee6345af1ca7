"""Generated from protos/nexus/recommender/v1. Do not edit: run `make protos`."""
