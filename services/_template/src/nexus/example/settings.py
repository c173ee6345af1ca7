"""Settings of the example service (env prefix `NEXUS_EXAMPLE_`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from nexus.common.settings import ServiceSettings


class ExampleSettings(ServiceSettings):
    """The example service's limits (ports, workers and the rest come from ServiceSettings)."""

    model_config = SettingsConfigDict(env_prefix="NEXUS_EXAMPLE_", extra="ignore")

    max_texts: int = Field(default=1_000, gt=0)
    """Most texts one CountWords call may carry."""

    max_text_chars: int = Field(default=100_000, gt=0)
    """Longest text, in characters."""
