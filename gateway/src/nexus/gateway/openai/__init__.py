"""The OpenAI-compatible HTTP surface: `/v1/chat/completions`, `/v1/embeddings`, `/v1/models`.

An adapter beside the generic gateway: OpenAI JSON in and out (`requests`, `responses`, `errors`),
the llm service's RPCs behind (`routes`), through the gateway's own auth, limits, deadlines and
tracing. The official OpenAI clients work against it unchanged.
"""

from nexus.gateway.openai.document import add_openai
from nexus.gateway.openai.errors import OpenAIError
from nexus.gateway.openai.routes import BACKEND, OpenAIRoutes, openai_routes

__all__ = ["BACKEND", "OpenAIError", "OpenAIRoutes", "add_openai", "openai_routes"]
