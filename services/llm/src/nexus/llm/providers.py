"""Provider errors in the platform's terms, with provider secrets kept out of them.

litellm raises OpenAI-style exceptions whose messages may quote a request, a URL or a key; they
are mapped once here to `nexus.common.errors` and every configured secret is masked first.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from nexus.common.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NexusError,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from nexus.llm._litellm import litellm

MASK = "***"
CONTEXT_WINDOW_EXCEEDED = "CONTEXT_WINDOW_EXCEEDED"
PROVIDER_RATE_LIMITED = "PROVIDER_RATE_LIMITED"
_SECRET_NAME = re.compile(r"(key|secret|token|password|credential)", re.IGNORECASE)
_ENV_REF = "os.environ/"
_MIN_SECRET_LEN = 6


class Redactor:
    """Masks known secret values in text.

    Args:
        secrets: The values to mask (short ones are ignored: masking "abc" everywhere would
            garble messages and protects nothing).
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        values = sorted({s for s in secrets if len(s) >= _MIN_SECRET_LEN}, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, values))) if values else None

    @classmethod
    def from_params(cls, params: Iterable[dict[str, object]]) -> Redactor:
        """Every secret-looking value of the deployments' parameters (resolving `os.environ/`
        references) and of the environment."""
        secrets = [_resolve(str(v)) for p in params for k, v in p.items() if _SECRET_NAME.search(k)]
        secrets += [v for k, v in os.environ.items() if _SECRET_NAME.search(k)]
        return cls(secrets)

    def __call__(self, text: str) -> str:
        """`text` with every secret replaced by "***"."""
        return self._pattern.sub(MASK, text) if self._pattern else text


def _resolve(value: str) -> str:
    return os.environ.get(value.removeprefix(_ENV_REF), "") if value.startswith(_ENV_REF) else value


def provider_error(err: Exception, redact: Redactor, model: str) -> NexusError:
    """The platform error for a litellm exception raised while calling `model`."""
    message = f"{model}: {redact(_message(err))}"
    exc = litellm.exceptions
    if isinstance(err, exc.ContextWindowExceededError):
        return InvalidArgument(message, reason=CONTEXT_WINDOW_EXCEEDED)
    if isinstance(err, exc.NotFoundError):
        return NotFound(message)
    if isinstance(err, exc.BadRequestError | exc.UnprocessableEntityError):
        return InvalidArgument(message)
    if isinstance(err, exc.AuthenticationError | exc.PermissionDeniedError):
        return FailedPrecondition(f"{model}: the provider refused this deployment's credentials")
    if isinstance(err, exc.RateLimitError):
        return ResourceExhausted(message, reason=PROVIDER_RATE_LIMITED)
    if isinstance(err, exc.Timeout | TimeoutError):
        return DeadlineExceeded(message)
    return Unavailable(message)


def _message(err: Exception) -> str:
    text = str(getattr(err, "message", "") or err) or type(err).__name__
    return text.removeprefix("litellm.").split("\nReceived Model Group", 1)[0][:1000]
