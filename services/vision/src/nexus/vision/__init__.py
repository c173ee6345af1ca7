"""The Nexus vision service."""

from nexus.vision.offline import configure

configure()  # before any module imports ultralytics
