"""The Nexus orchestrator: durable workflows over every service (calls, events, schedules)."""
