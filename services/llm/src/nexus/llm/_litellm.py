"""The one import of litellm: offline cost map, no telemetry, no secrets in its logs.

litellm fetches a remote cost map at import time unless `LITELLM_LOCAL_MODEL_COST_MAP` is set,
so every module of this service imports litellm from here.
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOG", "ERROR")

import litellm
from litellm.router import Router

litellm.telemetry = False
litellm.suppress_debug_info = True
litellm.drop_params = True  # a parameter a provider lacks is dropped, not an error
for _name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm"):
    logging.getLogger(_name).setLevel(logging.WARNING)

__all__ = ["Router", "litellm"]
