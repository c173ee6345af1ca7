"""Workflow definitions: parsed from YAML or JSON, checked against the published schema and the
platform's descriptors, with errors that name the field and the line."""

from nexus.orchestrator.definitions.model import Definition, Retry, Step, Trigger
from nexus.orchestrator.definitions.parsing import parse_definition
from nexus.orchestrator.definitions.schema import SCHEMA

__all__ = ["SCHEMA", "Definition", "Retry", "Step", "Trigger", "parse_definition"]
