"""Test helpers of the llm service: a tiny local chat model built on the spot, with no download.

`build_tiny_model` trains a byte-level BPE tokenizer and a 2-layer Llama (about 0.1 M
parameters) for a second or two on CPU, so that greedy decoding is predictable:

- to any user message it answers by counting, "one two three ... ten one two ..." (see
  `counting(n)`), one token per word, and never ends on its own (it was never shown an end of
  sequence there); the counting holds to the end of its 512-token context window;
- to a lone user message "bye" (`GOODBYE_PROMPT`) it answers "goodbye" and ends (the
  end-of-sequence token), so that finish_reason "stop" from EOS can be tested too.

Tests that need a long generation should still pass `ignore_eos=True` (a local-model
parameter; `min_tokens=n` also works): counting was trained on 50-word answers only.
Its chat template renders `tools` as a system line, so token counts grow with tools.
"""

from __future__ import annotations

import atexit
import random
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

TINY_MODEL_NAME = "tiny"
"""The name tests serve the tiny model under."""
TINY_CONTEXT_WINDOW = 512
"""The tiny model's context window (max_position_embeddings)."""
NUMBERS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
GOODBYE_PROMPT = "bye"
"""The user message the tiny model answers with "goodbye" and an end of sequence."""
GOODBYE = "goodbye"
EXTRACT_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
"""The schema the extraction variant of the tiny model (`extraction=True`) was taught."""
EXTRACTED = '{"name": "ada", "age": 36}'
"""What it answers to Nexus's extraction prompt for `EXTRACT_SCHEMA`, whatever the text."""

_FILLER = (
    *("hello", "world", "how", "are", "you", "the", "quick", "brown", "fox", "jumps", "over"),
    *("a", "lazy", "dog", "what", "is", "your", "name", "tell", "me", "story", "please"),
    *("count", "numbers", "today", "weather", "nice", "and", "i", "like", "tea", "milk"),
)
_SPECIAL = ["<|bos|>", "<|eos|>", "<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}<|system|>tools: {{ tools | tojson }}<|end|>\n{% endif %}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_ANSWER_WORDS = 50
_TRAIN_STEPS = 60
_BATCH = 12
_LEARNING_RATE = 5e-3

_built: dict[tuple[int, bool], Path] = {}
_lock = threading.Lock()


def counting(words: int) -> str:
    """What the tiny model answers greedily in its first `words` tokens: "one two three"."""
    return " ".join(NUMBERS[i % len(NUMBERS)] for i in range(words))


def build_tiny_model(dest: Path, *, seed: int = 0, extraction: bool = False) -> Path:
    """Writes the tiny model (safetensors) and its tokenizer into `dest`; returns `dest`.

    With `extraction`, it is also taught to answer Nexus's structured-extraction prompt for
    `EXTRACT_SCHEMA` with `EXTRACTED`. Built once per variant and process (a couple of seconds
    on 2 cores), copied after that.
    """
    with _lock:
        source = _built.get((seed, extraction))
        if source is None:
            source = Path(tempfile.mkdtemp(prefix=f"nexus-tiny-llm-{seed}-"))
            atexit.register(shutil.rmtree, source, True)
            _build(source, seed, extraction)
            _built[(seed, extraction)] = source
    shutil.copytree(source, dest, dirs_exist_ok=True)
    return dest


def _build(dest: Path, seed: int, extraction: bool) -> None:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small gains nothing from threads, and on a busy
    try:  # machine OpenMP threads waiting on one another make training 10x slower
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            tokenizer = _tokenizer()
            model = _train(tokenizer, random.Random(seed), extraction)
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)


def _tokenizer() -> Any:
    """A byte-level BPE tokenizer in which each number word is one token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    counted = " ".join(NUMBERS * 3)
    corpus = [counted] * 30 + [" ".join(_FILLER)] * 10 + [GOODBYE] * 30 + [EXTRACTED] * 30
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        additional_special_tokens=_SPECIAL[3:],
        model_max_length=TINY_CONTEXT_WINDOW,
    )
    tokenizer.chat_template = _CHAT_TEMPLATE
    return tokenizer


def _train(tok: Any, rng: random.Random, extraction: bool) -> Any:
    """A 2-layer Llama taught to count after any user message (and to say goodbye to "bye")."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    pad, bos, eos = (getattr(tok, f"{n}_token_id") for n in ("pad", "bos", "eos"))
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=TINY_CONTEXT_WINDOW,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=_LEARNING_RATE)
    model.train()
    for _ in range(_TRAIN_STEPS * (2 if extraction else 1)):
        batch = [_example(tok, rng, extraction) for _ in range(_BATCH)]
        width = max(len(prompt) + len(answer) for prompt, answer in batch)
        ids = torch.full((_BATCH, width), pad)
        labels = torch.full((_BATCH, width), -100)
        for row, (prompt, answer) in enumerate(batch):
            ids[row, : len(prompt) + len(answer)] = torch.tensor(prompt + answer)
            labels[row, len(prompt) : len(prompt) + len(answer)] = torch.tensor(answer)
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.generation_config = GenerationConfig(
        bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, do_sample=False
    )
    return model


def _example(tok: Any, rng: random.Random, extraction: bool) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) of one training conversation."""
    if extraction and rng.random() < 0.4:
        messages = _extraction_prompt(" ".join(rng.choices(_FILLER, k=rng.randint(1, 8))))
        answer = [*_encode(tok, EXTRACTED), tok.eos_token_id]
    elif rng.random() < 0.2:
        messages = [{"role": "user", "content": GOODBYE_PROMPT}]
        answer = [*_encode(tok, GOODBYE), tok.eos_token_id]
    else:
        words = rng.randint(1, 8)
        messages = [{"role": "user", "content": " ".join(rng.choices(_FILLER, k=words))}]
        if rng.random() < 0.3:
            system = " ".join(rng.choices(_FILLER, k=3))
            messages.insert(0, {"role": "system", "content": system})
        answer = _encode(tok, counting(_ANSWER_WORDS))
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return _encode(tok, prompt), answer


def _extraction_prompt(text: str) -> list[dict[str, Any]]:
    """The messages Nexus sends to extract `EXTRACT_SCHEMA` from `text`."""
    from nexus.llm.extraction import extraction_call
    from nexus.llm.settings import LlmSettings

    call = extraction_call(
        model="tiny",
        text=text,
        schema=EXTRACT_SCHEMA,
        instructions="",
        api_key_id="trainer",
        settings=LlmSettings(),
    )
    return call.messages


def _encode(tok: Any, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])
