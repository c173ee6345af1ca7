"""The OpenAI-compatible surface's paths, and the error body of whatever goes wrong on them.

Every request to one of these paths, or under one (`/v1/models/<anything>`,
`/v1/chat/completions/<anything>`), is answered in OpenAI's error body whichever layer refuses
it: the routes themselves, the URL limit (414), the server's own head checks (414, 431), or a
path that matches no route (404). The native paths keep the gateway's one error body.
"""

from __future__ import annotations

from nexus.gateway.errors import GatewayError
from nexus.gateway.openai.errors import OpenAIError, from_gateway_error

CHAT_PATH = "/v1/chat/completions"
EMBEDDINGS_PATH = "/v1/embeddings"
MODELS_PATH = "/v1/models"
MODEL_PATH = "/v1/models/{model}"

_ROOTS = (CHAT_PATH, EMBEDDINGS_PATH, MODELS_PATH)


def on_surface(path: str) -> bool:
    """Whether a request path is the OpenAI surface's: one of its paths or one under them."""
    return any(path == root or path.startswith(f"{root}/") for root in _ROOTS)


def surface_error(path: str, error: GatewayError) -> GatewayError | OpenAIError:
    """`error` in the body of the surface that `path` belongs to."""
    return from_gateway_error(error) if on_surface(path) else error


def unknown_url(method: str, path: str) -> OpenAIError:
    """404 for a path under the surface that no route serves (OpenAI's "Invalid URL")."""
    return OpenAIError(404, f"Invalid URL ({method} {path})")
