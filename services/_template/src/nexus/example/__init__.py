"""The Nexus example service: counts words (the template every service starts from)."""
