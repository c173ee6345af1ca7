"""One local causal language model: loaded from safetensors, generating token by token.

`LocalModel.generate` is synchronous and meant for a worker thread: it renders and checks the
request at once (errors raise there), and returns a `Generation` that produces text as it is
iterated, one forward pass per token with a KV cache. Setting the caller's cancel event stops it
before the next token. Sampling is seeded per call (a `torch.Generator` of its own), so
concurrent generations never share random state.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import threading
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jinja2 import TemplateError

from nexus.common.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable
from nexus.llm.local.templates import FALLBACK_CHAT_TEMPLATE, normalize_messages
from nexus.llm.types import Message

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 256
"""Tokens generated when a request sets no max_tokens (always capped by the context window)."""
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
CONTEXT_WINDOW_EXCEEDED = "CONTEXT_WINDOW_EXCEEDED"
"""The reason of the ResourceExhausted raised when a prompt does not fit the context window."""
_CONTEXT_ATTRIBUTES = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length")
_DETOKENIZE_WINDOW = 5  # prompt tokens decoded with the first new ones, for leading spaces
_SEED_RANGE = (-(2**63), 2**64 - 1)


def resolve_device(device: str) -> str:
    """The torch device for a setting: "auto" is "cuda" when CUDA is present, else "cpu".

    Raises:
        InvalidArgument: Not "auto", "cpu", "cuda" or "cuda:<index>".
        FailedPrecondition: CUDA asked for where none is present.
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    index = device.removeprefix("cuda").removeprefix(":")
    if not device.startswith("cuda") or (index and not index.isdigit()):
        raise InvalidArgument.for_field(
            "device", f'must be "auto", "cpu", "cuda" or "cuda:<index>", got {device!r}'
        )
    if not torch.cuda.is_available():
        raise FailedPrecondition(f"device {device!r} asked for, but CUDA is not available")
    if index and int(index) >= torch.cuda.device_count():
        raise FailedPrecondition(f"device {device!r} does not exist")
    return device


@dataclass(frozen=True)
class SamplingParams:
    """The generation parameters of one call, checked.

    Attributes:
        max_tokens: Most tokens to generate (before capping by the context window).
        temperature: 0 decodes greedily; above 0 samples.
        top_p: Nucleus sampling mass (1 keeps every token).
        seed: Seed of this call's sampling, None for a random one.
        stop: Strings that end the output (not included in it).
        presence_penalty: OpenAI's presence penalty, -2..2.
        frequency_penalty: OpenAI's frequency penalty, -2..2.
        min_tokens: The end-of-sequence token is not generated before this many tokens.
        ignore_eos: The end-of-sequence token is never generated (the output runs to
            max_tokens or a stop string).
    """

    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    min_tokens: int = 0
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        """Whether decoding takes the most likely token at each step."""
        return self.temperature == 0.0

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> SamplingParams:
        """Reads OpenAI parameters (unknown keys are ignored: tools, response_format, user ...).

        Raises:
            InvalidArgument: A value of the wrong type or out of range, or n other than 1.
        """
        if "n" in params and params["n"] not in (None, 1):
            raise InvalidArgument.for_field("n", "local models return one choice")
        max_tokens = params.get("max_tokens")
        if max_tokens is None:
            max_tokens = params.get("max_completion_tokens")
        return cls(
            max_tokens=_int("max_tokens", max_tokens, DEFAULT_MAX_TOKENS, low=1),
            temperature=_number(params, "temperature", 0.0, 0.0, 2.0),
            top_p=_top_p(params.get("top_p")),
            seed=_seed(params.get("seed")),
            stop=_stop(params.get("stop")),
            presence_penalty=_number(params, "presence_penalty", 0.0, -2.0, 2.0),
            frequency_penalty=_number(params, "frequency_penalty", 0.0, -2.0, 2.0),
            min_tokens=_int("min_tokens", params.get("min_tokens"), 0, low=0),
            ignore_eos=_flag(params, "ignore_eos"),
        )


class LocalModel:
    """A causal language model and its tokenizer, on one torch device.

    Safe to use from several threads at once: forward passes only read the weights, and the
    tokenizer is used under a lock. Build one with `LocalModel.load`.
    """

    def __init__(
        self, *, name: str, model: Any, tokenizer: Any, device: str, context_window: int
    ) -> None:
        self._name = name
        self._model = model
        self._tokenizer = tokenizer
        self._device = device
        self._context_window = context_window
        self._chat_template = None if tokenizer.chat_template else FALLBACK_CHAT_TEMPLATE
        self._eos_ids = _eos_ids(model, tokenizer)
        self._keep_last_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._tokenizer_lock = threading.Lock()
        self._counter_lock = threading.Lock()
        self._active = 0
        self._generated = 0
        self._closed = threading.Event()

    @classmethod
    def load(
        cls, path: Path, *, name: str, device: str = "auto", context_window: int = 0
    ) -> LocalModel:
        """Loads a model directory (safetensors weights only; never runs code from it).

        Blocking: call it from a worker thread.

        Args:
            path: The directory (config.json, *.safetensors, tokenizer files).
            name: The name it is served under.
            device: "auto", "cpu", "cuda" or "cuda:<index>".
            context_window: Most tokens of prompt and output together; 0 reads it from the
                config (max_position_embeddings).

        Raises:
            InvalidArgument: A bad device or a negative context window.
            FailedPrecondition: The directory does not hold a loadable model, CUDA is asked for
                but absent, or the context window is nowhere to be found.
        """
        if context_window < 0:
            raise InvalidArgument.for_field("context_window", "must not be negative")
        torch_device = resolve_device(device)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dtype: Any = torch.float32 if torch_device == "cpu" else "auto"
        try:
            tokenizer: Any = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model: Any = AutoModelForCausalLM.from_pretrained(
                path, use_safetensors=True, local_files_only=True, dtype=dtype
            )
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
            raise FailedPrecondition(
                f"cannot load local model {name!r} from {path}: {err}", "MODEL_LOAD_FAILED"
            ) from err
        model.to(torch_device)
        model.eval()
        window = context_window or _config_context_window(model.config)
        if window <= 1:
            raise FailedPrecondition(
                f"local model {name!r} states no context window; set context_window"
            )
        log.info(
            "loaded local model %s from %s on %s (context %d)", name, path, torch_device, window
        )
        return cls(
            name=name,
            model=model,
            tokenizer=tokenizer,
            device=torch_device,
            context_window=window,
        )

    @property
    def name(self) -> str:
        """The name the model is served under."""
        return self._name

    @property
    def device(self) -> str:
        """The torch device ("cpu", "cuda", "cuda:1")."""
        return self._device

    @property
    def context_window(self) -> int:
        """Most tokens of prompt and output together."""
        return self._context_window

    @property
    def active_generations(self) -> int:
        """Generations running now."""
        return self._active

    @property
    def tokens_generated(self) -> int:
        """Tokens generated since the model was loaded."""
        return self._generated

    @property
    def closed(self) -> bool:
        """Whether `close` was called: no new generations, running ones stop."""
        return self._closed.is_set()

    def close(self) -> None:
        """Stops the running generations before their next token and refuses new ones."""
        self._closed.set()

    def render(
        self, messages: Sequence[Message], tools: list[dict[str, Any]] | None = None
    ) -> list[int]:
        """The token ids of the prompt: the chat template (or the fallback) with the
        assistant's generation prompt.

        Raises:
            InvalidArgument: Bad messages or tools, or messages the template refuses.
        """
        normalized = normalize_messages(messages)
        _check_tools(tools)
        try:
            with self._tokenizer_lock:
                text = self._tokenizer.apply_chat_template(
                    normalized,
                    tools=tools or None,
                    chat_template=self._chat_template,
                    add_generation_prompt=True,
                    tokenize=False,
                )
                ids = self._tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        except (TemplateError, ValueError, TypeError, KeyError) as err:
            raise InvalidArgument.for_field(
                "messages", f"the chat template of {self._name!r} refuses them: {err}"
            ) from err
        return [int(i) for i in ids]

    def count_tokens(
        self, messages: Sequence[Message], tools: list[dict[str, Any]] | None = None
    ) -> int:
        """Tokens of the rendered prompt.

        Raises:
            InvalidArgument: As `render`.
        """
        return len(self.render(messages, tools))

    def generate(
        self, messages: Sequence[Message], params: dict[str, Any], cancel: threading.Event
    ) -> Generation:
        """Starts a generation: checks and renders now, generates as the result is iterated.

        Blocking (tokenizing a long prompt takes a while): call it from a worker thread, and
        iterate the result there too.

        Args:
            messages: OpenAI-format messages.
            params: OpenAI parameters (see `SamplingParams.from_params`; "tools" is rendered
                by the chat template), plus `ignore_eos` and `min_tokens`.
            cancel: Set it to stop before the next token.

        Returns:
            An iterator of text pieces; its counts and finish reason are final once exhausted.

        Raises:
            InvalidArgument: Bad messages or parameters.
            ResourceExhausted: The prompt does not fit the context window (reason
                CONTEXT_WINDOW_EXCEEDED).
            Unavailable: The model was closed.
        """
        if self.closed:
            raise Unavailable(f"local model {self._name!r} was unloaded")
        sampling = SamplingParams.from_params(params)
        prompt = self.render(messages, params.get("tools"))
        room = self._context_window - len(prompt)
        if room < 1:
            raise ResourceExhausted(
                f"the prompt has {len(prompt)} tokens; {self._name!r} takes at most "
                f"{self._context_window - 1} with one token of output",
                CONTEXT_WINDOW_EXCEEDED,
            )
        return Generation(self, prompt, sampling, min(sampling.max_tokens, room), cancel)

    # Used by Generation.

    def _forward(self, ids: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        """Logits of the last position (float32, 1-D) and the updated KV cache."""
        kwargs: dict[str, Any] = {"logits_to_keep": 1} if self._keep_last_logits else {}
        out = self._model(input_ids=ids, past_key_values=cache, use_cache=True, **kwargs)
        return out.logits[0, -1].float(), out.past_key_values

    def _decode(self, ids: Sequence[int]) -> str:
        with self._tokenizer_lock:
            return str(self._tokenizer.decode(list(ids), skip_special_tokens=True))

    def _started(self) -> None:
        with self._counter_lock:
            self._active += 1

    def _finished(self) -> None:
        with self._counter_lock:
            self._active -= 1

    def _counted(self) -> None:
        with self._counter_lock:
            self._generated += 1


class Generation(Iterator[str]):
    """A running generation: iterate it for text pieces.

    `prompt_tokens`, `completion_tokens` and `finish_reason` ("stop": end of sequence or a stop
    string; "length": max_tokens or the context window; "cancelled": the cancel event or the
    model closed) are final
    once the iterator is exhausted. Closing it early ends the generation.
    """

    def __init__(
        self,
        model: LocalModel,
        prompt: list[int],
        params: SamplingParams,
        max_tokens: int,
        cancel: threading.Event,
    ) -> None:
        self._model = model
        self._prompt = prompt
        self._params = params
        self._max_tokens = max_tokens
        self._cancel = cancel
        self.prompt_tokens = len(prompt)
        self.completion_tokens = 0
        self.finish_reason = ""
        self._pieces = self._run()

    def __iter__(self) -> Generation:
        return self

    @property
    def stopped(self) -> bool:
        """Whether the generation was told to stop: its cancel event, or its model closed."""
        return self._cancel.is_set() or self._model.closed

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        """Ends the generation (a no-op once finished)."""
        self._pieces.close()

    def _run(self) -> Generator[str, None, None]:
        """Text pieces: decoded tokens, cut at the first stop string."""
        self._model._started()
        try:
            decoder = _Detokenizer(self._model, self._prompt[-_DETOKENIZE_WINDOW:])
            stops = _StopFinder(self._params.stop)
            with contextlib.closing(self._tokens()) as tokens:
                for token in tokens:
                    text, stopped = stops.feed(decoder.add(token))
                    if text:
                        yield text
                    if stopped:
                        self.finish_reason = "stop"
                        return
            if self.finish_reason != "cancelled":
                tail, stopped = stops.finish(decoder.flush())
                if stopped:
                    self.finish_reason = "stop"
                if tail:
                    yield tail
        finally:
            self._model._finished()

    def _tokens(self) -> Generator[int, None, None]:
        """Token ids, one forward pass each, until end of sequence, max_tokens or cancel."""
        params = self._params
        device = self._model.device
        sampler = _Sampler(params, device)
        with torch.inference_mode():
            ids = torch.tensor([self._prompt], dtype=torch.long, device=device)
            cache: Any = None
            for index in range(self._max_tokens):
                if self.stopped:
                    self.finish_reason = "cancelled"
                    return
                logits, cache = self._model._forward(ids, cache)
                if params.ignore_eos or index < params.min_tokens:
                    _suppress(logits, self._model._eos_ids)
                token = sampler.pick(logits)
                self.completion_tokens += 1
                self._model._counted()
                if token in self._model._eos_ids:
                    self.finish_reason = "stop"
                    return
                yield token
                ids = torch.tensor([[token]], dtype=torch.long, device=device)
        self.finish_reason = "length"


class _Sampler:
    """Picks the next token: greedy, or temperature / top-p sampling with penalties."""

    def __init__(self, params: SamplingParams, device: str) -> None:
        self._params = params
        self._generator: torch.Generator | None = None
        self._counts: torch.Tensor | None = None
        if not params.greedy:
            self._generator = torch.Generator(device=device)
            if params.seed is None:
                self._generator.seed()
            else:
                self._generator.manual_seed(params.seed)

    def pick(self, logits: torch.Tensor) -> int:
        """The next token id from the last position's logits."""
        params = self._params
        if params.presence_penalty or params.frequency_penalty:
            logits = self._penalized(logits)
        if self._generator is None:
            token = int(torch.argmax(logits).item())
        else:
            probs = torch.softmax(logits / params.temperature, dim=-1)
            if params.top_p < 1.0:
                probs = _nucleus(probs, params.top_p)
            token = int(torch.multinomial(probs, 1, generator=self._generator).item())
        if self._counts is not None:
            self._counts[token] += 1
        return token

    def _penalized(self, logits: torch.Tensor) -> torch.Tensor:
        if self._counts is None:
            self._counts = torch.zeros_like(logits)
        counts = self._counts
        return (
            logits
            - self._params.frequency_penalty * counts
            - self._params.presence_penalty * (counts > 0).to(logits.dtype)
        )


class _Detokenizer:
    """Turns token ids into text incrementally, holding back incomplete characters.

    Decodes a sliding window (as vLLM does) so that each step costs the same however long the
    output gets, and so that tokenizers which drop a leading space at the start of a decode
    still produce the right text.
    """

    def __init__(self, model: LocalModel, context: list[int]) -> None:
        self._model = model
        self._ids = list(context)
        self._prefix = 0
        self._read = len(self._ids)

    def add(self, token: int) -> str:
        """The new text that `token` completes ("" while a character is incomplete)."""
        self._ids.append(token)
        prefix_text = self._model._decode(self._ids[self._prefix : self._read])
        text = self._model._decode(self._ids[self._prefix :])
        if len(text) <= len(prefix_text) or text.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(prefix_text) :]

    def flush(self) -> str:
        """Whatever text is still held back at the end."""
        prefix_text = self._model._decode(self._ids[self._prefix : self._read])
        text = self._model._decode(self._ids[self._prefix :])
        return text[len(prefix_text) :] if len(text) > len(prefix_text) else ""


class _StopFinder:
    """Cuts the output at the first stop string, holding back text that may start one."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = stops
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """The text safe to emit now, and whether a stop string was reached."""
        if not self._stops:
            return text, False
        self._pending += text
        hits = [i for i in (self._pending.find(stop) for stop in self._stops) if i >= 0]
        if hits:
            out, self._pending = self._pending[: min(hits)], ""
            return out, True
        keep = self._held_back()
        out = self._pending[: len(self._pending) - keep]
        self._pending = self._pending[len(self._pending) - keep :]
        return out, False

    def finish(self, tail: str) -> tuple[str, bool]:
        """The held-back text and `tail` at the end of the output, cut at a stop string, and
        whether one was reached."""
        text, stopped = self.feed(tail)
        rest, self._pending = self._pending, ""
        return text + rest, stopped

    def _held_back(self) -> int:
        """Length of the longest end of the pending text that begins a stop string."""
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(self._pending)), longest, -1):
                if self._pending.endswith(stop[:size]):
                    longest = size
                    break
        return longest


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """`probs` with the tokens outside the smallest set of mass `top_p` zeroed."""
    sorted_probs, order = torch.sort(probs, descending=True)
    outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs > top_p
    sorted_probs[outside] = 0.0
    return torch.zeros_like(probs).scatter(-1, order, sorted_probs)


def _suppress(logits: torch.Tensor, token_ids: frozenset[int]) -> None:
    for token in token_ids:
        if token < logits.shape[-1]:
            logits[token] = -math.inf


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """The end-of-sequence ids of the generation config, the model config and the tokenizer."""
    ids: set[int] = set()
    sources = (getattr(model, "generation_config", None), model.config, tokenizer)
    for source in sources:
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(v for v in value if isinstance(v, int))
    return frozenset(ids)


def _config_context_window(config: Any) -> int:
    for attribute in _CONTEXT_ATTRIBUTES:
        value = getattr(config, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    return 0


def _check_tools(tools: object) -> None:
    if tools is None:
        return
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise InvalidArgument.for_field("tools", "must be a list of objects")


def _int(field: str, value: object, default: int, *, low: int) -> int:
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument.for_field(field, "must be an integer")
    if value < low:
        raise InvalidArgument.for_field(field, f"must be at least {low}")
    return value


def _number(params: dict[str, Any], field: str, default: float, low: float, high: float) -> float:
    value = params.get(field)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidArgument.for_field(field, "must be a finite number")
    if not low <= value <= high:
        raise InvalidArgument.for_field(field, f"must be between {low:g} and {high:g}")
    return float(value)


def _top_p(value: object) -> float:
    top_p = _number({"top_p": value}, "top_p", 1.0, 0.0, 1.0)
    if top_p <= 0.0:
        raise InvalidArgument.for_field("top_p", "must be above 0")
    return top_p


def _seed(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument.for_field("seed", "must be an integer")
    if not _SEED_RANGE[0] <= value <= _SEED_RANGE[1]:
        raise InvalidArgument.for_field("seed", "must fit in 64 bits")
    return value


def _stop(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list | tuple) or not all(isinstance(s, str) for s in stops):
        raise InvalidArgument.for_field("stop", "must be a string or a list of strings")
    if len(stops) > MAX_STOP_STRINGS:
        raise InvalidArgument.for_field("stop", f"must hold at most {MAX_STOP_STRINGS} strings")
    for index, stop in enumerate(stops):
        if not stop or len(stop) > MAX_STOP_CHARS:
            raise InvalidArgument.for_field(
                f"stop[{index}]", f"must hold 1 to {MAX_STOP_CHARS} characters"
            )
    return tuple(stops)


def _flag(params: dict[str, Any], field: str) -> bool:
    value = params.get(field)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidArgument.for_field(field, "must be true or false")
    return value
