"""nexus.gateway: the HTTP face of Nexus, generated from the protos.

Every RPC with a `google.api.http` annotation under `nexus.api` becomes a route: JSON in and out
(server-streaming RPCs as Server-Sent Events), API keys and rate limits checked at the edge, one
error body, and an OpenAPI document built from the same descriptors. See docs/adr/0008-gateway.md.
"""

from nexus.gateway.app import build_app
from nexus.gateway.descriptors import HttpBinding, discover
from nexus.gateway.errors import GatewayError, http_status
from nexus.gateway.openapi import build_openapi
from nexus.gateway.server import GatewayServer
from nexus.gateway.settings import GatewaySettings

__all__ = [
    "GatewayError",
    "GatewayServer",
    "GatewaySettings",
    "HttpBinding",
    "build_app",
    "build_openapi",
    "discover",
    "http_status",
]
