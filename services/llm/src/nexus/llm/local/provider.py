"""The local models as a litellm provider, so that the Router retries, falls back and cools down
on them like on any other deployment.

litellm's provider map is process-wide, and a process may hold several services (tests do), so a
deployment names its set of models too: "nexus-local/<instance>/<name>" (`local_model_id`) routes
to `LocalModels.get(name)` of the set whose `instance_id` it names, once `register_provider`
added that set. Configuration files say "nexus-local/<name>"; the router adds the instance.

How litellm drives a custom provider, and what follows from it:

- `acompletion` (not streaming) is awaited on the event loop; the generation runs on one of the
  models' worker threads, and a cancelled caller (or a timeout) sets the cancel event.
- For `stream=True` litellm calls `astreaming` inside its synchronous `completion`, which it runs
  in a thread, and wraps what it returns in a `CustomStreamWrapper`. `astreaming` here is a plain
  method that checks and renders the request right away, so that bad requests and prompts too
  long for the context window fail at call time (where the Router's retry, fallback and
  context-window fallback logic sees them), and returns an async generator of
  `GenericStreamingChunk`s. The wrapper iterates that generator directly in its `__anext__`, so
  cancelling the consumer's task raises CancelledError inside the generator, and closing the
  stream (`aclose`, as the Router does when a consumer goes away) closes it: either way its
  `finally` sets the cancel event and the worker stops before the next token.
- The last chunk carries the usage. litellm strips usage from the chunks it hands out unless the
  caller asks for `stream_options={"include_usage": True}` (OpenAI's rule); either way the
  wrapper keeps it for its own accounting.
- Errors are raised as litellm's exception types (which litellm passes through unchanged), with
  the `nexus.common.errors` exception as `__cause__`.
- Tools are rendered into the prompt by the model's chat template, and a reply in the Hermes /
  Qwen format (`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, one or more) comes
  back as OpenAI `tool_calls` with empty content and finish reason "tool_calls" (see
  `nexus.llm.local.tool_calls`; a malformed call stays text). A stream passes text on as it
  comes, but holds a reply that begins with "<tool_call>" to the end of the generation, then
  sends each call as one `GenericStreamingChunk` `tool_use` (litellm turns them into
  `delta.tool_calls`). `response_format` (JSON mode) is accepted and ignored: a small local
  model cannot be held to JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

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
from nexus.llm.local.model import CONTEXT_WINDOW_EXCEEDED, Generation, LocalModel
from nexus.llm.local.models import LocalModels
from nexus.llm.local.tool_calls import ToolCallSplitter, callable_tools, parse_tool_calls
from nexus.llm.types import Message

PROVIDER = "nexus-local"
"""The litellm provider of local models: deployments name them "nexus-local/<name>"."""
BUFFERED_PIECES = 64
"""Text pieces a generation runs ahead of its stream's reader before it waits."""
_POLL_S = 0.05


class NexusLocalProvider(litellm.llms.custom_llm.CustomLLM):
    """litellm's handler of "nexus-local/<instance>/<name>" models.

    litellm calls the handler methods with keyword arguments only; each method names the ones it
    reads and takes the rest as `**_` (hence the `override` ignores). `astreaming` is a plain
    method returning an async generator, where litellm's base class declares a coroutine: the
    stream wrapper iterates what it gets and would not await a coroutine (see the module doc).

    One handler serves every registered set of models (`_INSTANCES`).
    """

    def completion(  # type: ignore[override]
        self,
        *,
        model: str,
        messages: list[Message],
        model_response: Any,
        optional_params: dict[str, Any],
        **_: Any,
    ) -> Any:
        """A whole completion, generated on the calling thread (litellm's synchronous path)."""
        cancel = threading.Event()
        with _litellm_errors(model):
            generation = self._local(model).generate(messages, optional_params, cancel)
            text = "".join(generation)
        return _response(model_response, model, text, generation, optional_params)

    async def acompletion(  # type: ignore[override]
        self,
        *,
        model: str,
        messages: list[Message],
        model_response: Any,
        optional_params: dict[str, Any],
        **kwargs: Any,
    ) -> Any:
        """A whole completion, generated on a worker thread; stops when the caller goes away.

        Raises:
            litellm.Timeout: When it takes longer than `timeout` seconds.
            litellm.BadRequestError, NotFoundError, ContextWindowExceededError, ...: See
                `_litellm_error`.
        """
        timeout = _seconds(kwargs.get("timeout"))
        cancel = threading.Event()
        with _litellm_errors(model):
            models, local = _resolve(model)
            work = models.run(
                functools.partial(_complete, local, messages, optional_params, cancel)
            )
            try:
                text, generation = await asyncio.wait_for(work, timeout)
            except TimeoutError as err:
                raise litellm.exceptions.Timeout(
                    f"local model {model!r} did not finish in {timeout} s",
                    model=model,
                    llm_provider=PROVIDER,
                ) from err
            except asyncio.CancelledError:
                if _being_cancelled():
                    raise
                raise Unavailable("the local models are stopped") from None
            finally:
                cancel.set()
        return _response(model_response, model, text, generation, optional_params)

    def astreaming(  # type: ignore[override]
        self,
        *,
        model: str,
        messages: list[Message],
        optional_params: dict[str, Any],
        **_: Any,
    ) -> AsyncIterator[Any]:
        """Checks and renders the request now (litellm calls this on a worker thread), and
        returns the stream of `GenericStreamingChunk`s, generated on a worker thread.

        Raises:
            litellm.BadRequestError, NotFoundError, ContextWindowExceededError: At once.
        """
        cancel = threading.Event()
        with _litellm_errors(model):
            generation = self._local(model).generate(messages, optional_params, cancel)
        return self._chunks(model, generation, cancel, callable_tools(optional_params))

    def streaming(  # type: ignore[override]
        self,
        *,
        model: str,
        messages: list[Message],
        optional_params: dict[str, Any],
        **_: Any,
    ) -> Any:
        """The stream on the calling thread (litellm's synchronous path)."""
        cancel = threading.Event()
        with _litellm_errors(model):
            generation = self._local(model).generate(messages, optional_params, cancel)
        return _sync_chunks(model, generation, cancel, callable_tools(optional_params))

    async def _chunks(
        self,
        model: str,
        generation: Generation,
        cancel: threading.Event,
        tools: frozenset[str] | None,
    ) -> AsyncIterator[Any]:
        """The text pieces as chunks (or the tool calls, at the end), then a last chunk with
        finish reason and usage."""
        splitter = ToolCallSplitter(tools)
        try:
            pieces = _pieces(generation, cancel, _resolve(model)[0])
            with _litellm_errors(model):
                async with contextlib.aclosing(pieces):
                    async for piece in pieces:
                        if text := splitter.feed(piece):
                            yield _chunk(text)
            for chunk in _ending(splitter, generation):
                yield chunk
        finally:
            cancel.set()

    def _local(self, model: str) -> LocalModel:
        return _resolve(model)[1]


_INSTANCES: dict[str, LocalModels] = {}
"""The registered sets of local models, by `instance_id`."""


def local_model_id(models: LocalModels, name: str) -> str:
    """litellm's model string of the local model `name` of `models`."""
    return f"{PROVIDER}/{models.instance_id}/{name}"


def _resolve(model: str) -> tuple[LocalModels, LocalModel]:
    """The set and the model a "nexus-local/<instance>/<name>" string names.

    Raises:
        NotFound: No such registered set, or no such model in it.
    """
    instance, _, name = model.removeprefix(f"{PROVIDER}/").partition("/")
    models = _INSTANCES.get(instance)
    if models is None:
        raise NotFound(f"no local models registered as {instance!r} (model {model!r})")
    return models, models.get(name)


def register_provider(models: LocalModels) -> None:
    """Adds `models` to the "nexus-local" provider (installing it in litellm once), and tells
    litellm's model map the context windows of its models (at no cost).

    Call it after `models.start()` and before building a Router whose deployments name its
    models (`local_model_id`); `unregister_provider` when the models stop.
    """
    _INSTANCES[models.instance_id] = models
    installed = [item for item in litellm.custom_provider_map if item["provider"] == PROVIDER]
    if not installed or not isinstance(installed[0]["custom_handler"], NexusLocalProvider):
        others = [item for item in litellm.custom_provider_map if item["provider"] != PROVIDER]
        handler: Any = {"provider": PROVIDER, "custom_handler": NexusLocalProvider()}
        litellm.custom_provider_map = [*others, handler]
        litellm.utils.custom_llm_setup()  # type: ignore[no-untyped-call]
    info = {local_model_id(models, n): _model_info(models.get(n)) for n in models.names()}
    if info:
        litellm.register_model(info)


def unregister_provider(models: LocalModels) -> None:
    """Removes `models` from the provider (its deployments then answer NotFound)."""
    _INSTANCES.pop(models.instance_id, None)


def _model_info(model: LocalModel) -> dict[str, Any]:
    """What litellm's model map says of a local model: its context window, and no cost."""
    return {
        "litellm_provider": PROVIDER,
        "mode": "chat",
        "max_tokens": model.context_window,
        "max_input_tokens": model.context_window - 1,
        "max_output_tokens": model.context_window - 1,
        "input_cost_per_token": 0.0,
        "output_cost_per_token": 0.0,
    }


@dataclass(frozen=True)
class _End:
    """The worker's last word: done, or the error it raised."""

    error: BaseException | None = None


async def _pieces(
    generation: Generation, cancel: threading.Event, models: LocalModels
) -> AsyncGenerator[str, None]:
    """Iterates `generation` on a worker thread, handing its pieces to the event loop.

    The worker runs at most BUFFERED_PIECES ahead of the reader. Leaving the iteration early
    (the reader's task cancelled, or the stream closed) sets `cancel`, which ends the worker. A
    reader that holds the stream but takes nothing for `models.stall_timeout_s` loses it: the
    worker stops, and the reader gets DeadlineExceeded after the pieces already handed over.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | _End] = asyncio.Queue()
    room = threading.Semaphore(BUFFERED_PIECES)

    def hand(item: str | _End) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody reads any more
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def work() -> None:
        error: BaseException | None = None
        try:
            with contextlib.closing(generation):
                for piece in generation:
                    if not _wait_for_room(room, generation, models.stall_timeout_s):
                        error = _stalled(generation, models.stall_timeout_s)
                        break
                    hand(piece)
            if error is None and generation.finish_reason == "cancelled":
                error = Unavailable("the local model was unloaded during the generation")
        except BaseException as err:
            error = err
        hand(_End(error))

    def dropped(future: asyncio.Future[None]) -> None:
        if future.cancelled():  # never ran: the models stopped first
            queue.put_nowait(_End(Unavailable("the local models are stopped")))

    models.run(work).add_done_callback(dropped)
    try:
        while True:
            item = await queue.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            room.release()
            yield item
    finally:
        cancel.set()


def _being_cancelled() -> bool:
    """Whether the current task is being cancelled (rather than the work it awaited dropped,
    unstarted, by the executor's shutdown)."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


def _wait_for_room(room: threading.Semaphore, generation: Generation, stall_s: float) -> bool:
    """Waits until the reader took a piece; False when the generation stopped meanwhile or
    the reader stalled for `stall_s`."""
    deadline = time.monotonic() + stall_s
    while not room.acquire(timeout=_POLL_S):
        if generation.stopped or time.monotonic() > deadline:
            return False
    return True


def _stalled(generation: Generation, stall_s: float) -> NexusError:
    """Why the worker gave up waiting for the reader."""
    if generation.stopped:
        return Unavailable("the local model was unloaded during the generation")
    return DeadlineExceeded(f"the stream's reader took nothing for {stall_s:g} s")


def _complete(
    model: LocalModel, messages: list[Message], params: dict[str, Any], cancel: threading.Event
) -> tuple[str, Generation]:
    """Runs a whole generation (on a worker thread).

    Raises:
        Unavailable: The model was unloaded before the generation finished.
    """
    generation = model.generate(messages, params, cancel)
    with contextlib.closing(generation):
        text = "".join(generation)
    if generation.finish_reason == "cancelled" and not cancel.is_set():
        raise Unavailable("the local model was unloaded during the generation")
    return text, generation


def _sync_chunks(
    model: str, generation: Generation, cancel: threading.Event, tools: frozenset[str] | None
) -> Iterator[dict[str, Any]]:
    splitter = ToolCallSplitter(tools)
    try:
        with _litellm_errors(model), contextlib.closing(generation):
            for piece in generation:
                if text := splitter.feed(piece):
                    yield _chunk(text)
        yield from _ending(splitter, generation)
    finally:
        cancel.set()


def _ending(splitter: ToolCallSplitter, generation: Generation) -> list[dict[str, Any]]:
    """The chunks that end a stream: the text held back or the tool calls (one chunk each),
    then the last chunk."""
    text, calls = splitter.finish()
    chunks = [_chunk(text)] if text else []
    chunks += [_tool_chunk(index, call) for index, call in enumerate(calls or [])]
    return [*chunks, _last_chunk(generation, "tool_calls" if calls else None)]


def _chunk(text: str) -> dict[str, Any]:
    """A GenericStreamingChunk of text."""
    return {
        "text": text,
        "tool_use": None,
        "is_finished": False,
        "finish_reason": "",
        "usage": None,
        "index": 0,
    }


def _tool_chunk(index: int, call: dict[str, Any]) -> dict[str, Any]:
    """A GenericStreamingChunk of one whole tool call (a ChatCompletionToolCallChunk)."""
    return {
        "text": "",
        "tool_use": {**call, "index": index},
        "is_finished": False,
        "finish_reason": "",
        "usage": None,
        "index": 0,
    }


def _last_chunk(generation: Generation, finish_reason: str | None = None) -> dict[str, Any]:
    """The GenericStreamingChunk that ends a stream: finish reason and usage."""
    return {
        "text": "",
        "tool_use": None,
        "is_finished": True,
        "finish_reason": finish_reason or generation.finish_reason or "stop",
        "usage": _usage(generation),
        "index": 0,
    }


def _usage(generation: Generation) -> dict[str, int]:
    return {
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": generation.completion_tokens,
        "total_tokens": generation.prompt_tokens + generation.completion_tokens,
    }


def _response(
    model_response: Any, model: str, text: str, generation: Generation, params: dict[str, Any]
) -> Any:
    """Fills litellm's ModelResponse like any provider's: content (or tool calls), finish
    reason, usage."""
    choice = model_response.choices[0]
    tools = callable_tools(params)
    calls = parse_tool_calls(text, tools) if tools is not None else None
    if calls is None:
        choice.message.content = text
        choice.finish_reason = generation.finish_reason or "stop"
    else:
        choice.message = litellm.Message(content=None, role="assistant", tool_calls=calls)
        choice.finish_reason = "tool_calls"
    model_response.model = model
    model_response.created = int(time.time())
    model_response.usage = litellm.Usage(**_usage(generation))
    return model_response


def _seconds(timeout: Any) -> float | None:
    """A timeout as seconds: a number, an httpx.Timeout (its read timeout), or None."""
    if isinstance(timeout, int | float) and not isinstance(timeout, bool):
        return float(timeout) if timeout > 0 else None
    read = getattr(timeout, "read", None)
    return float(read) if isinstance(read, int | float) and read > 0 else None


@contextlib.contextmanager
def _litellm_errors(model: str) -> Iterator[None]:
    """Raises the platform's errors as litellm's exception types."""
    try:
        yield
    except NexusError as err:
        raise _litellm_error(err, model) from err


def _litellm_error(err: NexusError, model: str) -> Exception:
    """The litellm exception the Router treats as it should: no retry for bad requests,
    context-window fallbacks for prompts too long, retries and cooldowns for the rest."""
    message = str(err)
    if isinstance(err, ResourceExhausted) and err.reason == CONTEXT_WINDOW_EXCEEDED:
        error: Exception = litellm.exceptions.ContextWindowExceededError(message, model, PROVIDER)
    elif isinstance(err, NotFound):
        error = litellm.exceptions.NotFoundError(message, model, PROVIDER)
    elif isinstance(err, InvalidArgument | ResourceExhausted):
        error = litellm.exceptions.BadRequestError(message, model, PROVIDER)
    elif isinstance(err, DeadlineExceeded):
        error = litellm.exceptions.Timeout(message, model, PROVIDER)
    elif isinstance(err, FailedPrecondition | Unavailable):
        error = litellm.exceptions.ServiceUnavailableError(message, PROVIDER, model)
    else:
        error = litellm.exceptions.InternalServerError(message, PROVIDER, model)
    return error
