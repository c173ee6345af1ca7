"""Triggers: what starts runs by itself. Event triggers read a stream through a durable
consumer shared by every replica; cron triggers fire once per tick, claimed by the run's id.
See docs/adr/0032-orchestrator-triggers.md."""

from nexus.orchestrator.triggers.manager import Triggers
from nexus.orchestrator.triggers.streams import EventStreams

__all__ = ["EventStreams", "Triggers"]
