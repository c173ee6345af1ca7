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

The tools variant (`build_tiny_model(dest, tools=True)`) also calls tools in the Hermes / Qwen
format: when the prompt lists tools (any, e.g. `WEATHER_TOOL`) and the last message is the
user's, it answers `WEATHER_CALL_TEXT` (`<tool_call>{"name": "get_weather", "arguments":
{"city": "paris"}}</tool_call>`) and ends; when the last message is a tool result, it answers
`WEATHER_REPLY` and ends. Its chat template writes an assistant's tool calls in that format too.
"""

from __future__ import annotations

import atexit
import json
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
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city."}},
            "required": ["city"],
        },
    },
}
"""The OpenAI tool the tools variant (`tools=True`) calls."""
WEATHER_CALL: dict[str, Any] = {"name": "get_weather", "arguments": {"city": "paris"}}
"""The call it makes, whatever the user asked, when the prompt lists tools."""
WEATHER_CALL_TEXT = f"<tool_call>{json.dumps(WEATHER_CALL)}</tool_call>"
"""Its reply that holds the call (Hermes / Qwen format), before the end of sequence."""
WEATHER_REPLY = "nice weather today"
"""What it answers after a tool result (a `tool` message last)."""

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
_TOOLS_SPECIAL = [*_SPECIAL, "<|tool|>"]
_TOOLS_CHAT_TEMPLATE = _CHAT_TEMPLATE.replace(
    "{{ message['content'] }}<|end|>",
    "{{ message['content'] }}"
    "{% if message['tool_calls'] is defined and message['tool_calls'] %}"
    "{% for call in message['tool_calls'] %}"
    "<tool_call>{{ {'name': call['function']['name'], 'arguments': call['function']['arguments']}"
    " | tojson }}</tool_call>"
    "{% endfor %}"
    "{% endif %}<|end|>",
)
_TOOL_RESULTS = ('{"sky": "sunny"}', "sunny", '{"temperature": 21}', "rain", "nice and sunny")
_ANSWER_WORDS = 50
_TRAIN_STEPS = 60
_TOOL_STEPS = 30
_BATCH = 12
_LEARNING_RATE = 5e-3

_built: dict[tuple[int, bool, bool], Path] = {}
_lock = threading.Lock()


def counting(words: int) -> str:
    """What the tiny model answers greedily in its first `words` tokens: "one two three"."""
    return " ".join(NUMBERS[i % len(NUMBERS)] for i in range(words))


def build_tiny_model(
    dest: Path, *, seed: int = 0, extraction: bool = False, tools: bool = False
) -> Path:
    """Writes the tiny model (safetensors) and its tokenizer into `dest`; returns `dest`.

    With `extraction`, it is also taught to answer Nexus's structured-extraction prompt for
    `EXTRACT_SCHEMA` with `EXTRACTED`. With `tools`, it is also taught to call `WEATHER_TOOL`
    (see the module doc). Built once per variant and process (a couple of seconds on 2 cores),
    copied after that.
    """
    variant = (seed, extraction, tools)
    with _lock:
        source = _built.get(variant)
        if source is None:
            source = Path(tempfile.mkdtemp(prefix=f"nexus-tiny-llm-{seed}-"))
            atexit.register(shutil.rmtree, source, True)
            _build(source, seed, extraction, tools)
            _built[variant] = source
    shutil.copytree(source, dest, dirs_exist_ok=True)
    return dest


def _build(dest: Path, seed: int, extraction: bool, tools: bool) -> None:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small gains nothing from threads, and on a busy
    try:  # machine OpenMP threads waiting on one another make training 10x slower
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            tokenizer = _tokenizer(tools)
            model = _train(tokenizer, random.Random(seed), extraction, tools)
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)


def _tokenizer(tools: bool = False) -> Any:
    """A byte-level BPE tokenizer in which each number word is one token (and, for the tools
    variant, the tool call and the tool's definition take few)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    counted = " ".join(NUMBERS * 3)
    corpus = [counted] * 30 + [" ".join(_FILLER)] * 10 + [GOODBYE] * 30 + [EXTRACTED] * 30
    special = _TOOLS_SPECIAL if tools else _SPECIAL
    if tools:
        corpus += [WEATHER_CALL_TEXT] * 30 + [json.dumps(WEATHER_TOOL)] * 30
        corpus += [WEATHER_REPLY] * 30 + list(_TOOL_RESULTS) * 5
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=448 if tools else 320,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        additional_special_tokens=special[3:],
        model_max_length=TINY_CONTEXT_WINDOW,
    )
    tokenizer.chat_template = _TOOLS_CHAT_TEMPLATE if tools else _CHAT_TEMPLATE
    return tokenizer


def _train(tok: Any, rng: random.Random, extraction: bool, tools: bool = False) -> Any:
    """A 2-layer Llama taught to count after any user message (and to say goodbye to "bye"; to
    extract, to call tools, in those variants)."""
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
    for _ in range(_TRAIN_STEPS * (1 + extraction) + _TOOL_STEPS * tools):
        batch = [_example(tok, rng, extraction, tools) for _ in range(_BATCH)]
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


def _example(
    tok: Any, rng: random.Random, extraction: bool, tools: bool = False
) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) of one training conversation."""
    if tools and rng.random() < 0.5:
        return _tool_example(tok, rng)
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


def _tool_example(tok: Any, rng: random.Random) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) of a conversation with tools: the call after a user message,
    `WEATHER_REPLY` after a tool result."""
    question = " ".join(rng.choices(_FILLER, k=rng.randint(1, 8)))
    messages: list[dict[str, Any]] = [{"role": "user", "content": question}]
    offered = [_shuffled(WEATHER_TOOL, rng)]
    answer = WEATHER_CALL_TEXT
    if rng.random() < 0.4:
        call = {"id": "call_1", "type": "function", "function": dict(WEATHER_CALL)}
        messages += [
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": rng.choice(_TOOL_RESULTS)},
        ]
        answer = WEATHER_REPLY
        offered = offered if rng.random() < 0.7 else []
    prompt = tok.apply_chat_template(
        messages, tools=offered or None, add_generation_prompt=True, tokenize=False
    )
    return _encode(tok, prompt), [*_encode(tok, answer), tok.eos_token_id]


def _shuffled(value: Any, rng: random.Random) -> Any:
    """`value` with the keys of its objects in a random order (half the time), as tool
    definitions arrive after a trip through other systems."""
    if isinstance(value, dict):
        items = [(key, _shuffled(item, rng)) for key, item in value.items()]
        if rng.random() < 0.5:
            rng.shuffle(items)
        return dict(items)
    return value


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
