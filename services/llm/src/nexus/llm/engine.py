"""The chat path: validate, add conversation history, check the context window, serve from the
cache, reserve budget, call the router, account usage, remember the reply.

Everything a chat costs is decided here, before a provider is called: a request over budget or
over the context window never leaves the service.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, replace
from typing import Any

from nexus.common.errors import FieldViolation, InvalidArgument
from nexus.llm.budgets import BudgetStore, Reservation, estimate_cost
from nexus.llm.cache import ResponseCache, SemanticCache, cache_key
from nexus.llm.conversations import ConversationStore, trim_to_context
from nexus.llm.extraction import parse_reply
from nexus.llm.providers import CONTEXT_WINDOW_EXCEEDED
from nexus.llm.router import ModelDescription, ProviderRouter
from nexus.llm.settings import LlmSettings
from nexus.llm.types import (
    CacheMode,
    ChatCall,
    Chunk,
    Completion,
    Message,
    TokenUsage,
    UsageRecord,
)
from nexus.llm.usage import UsageLedger
from nexus.llm.validation import MISSING_REQUIRED_PARAMETER, model_name, validate_call

log = logging.getLogger(__name__)

DEFAULT_OUTPUT_RESERVE = 1024
"""Tokens kept free for the reply when trimming history and the request sets no max_tokens."""

_CHARS_SLACK = 16
"""Per-message allowance in the cheap bound on prompt tokens (role and framing tokens)."""


@dataclass(frozen=True)
class _Plan:
    """A validated call, ready to send."""

    call: ChatCall
    model: ModelDescription
    messages: list[Message]
    new_messages: list[Message]
    prompt_tokens: int
    key: str


class ChatEngine:
    """Chat completions with conversations, caching, budgets and usage accounting.

    Args:
        router: The models.
        conversations: Stored conversations.
        cache: The exact response cache.
        semantic: The semantic cache, or None when it is off.
        ledger: Usage accounting.
        budgets: Per-key spending limits.
        settings: Limits and defaults.
    """

    def __init__(
        self,
        router: ProviderRouter,
        conversations: ConversationStore,
        cache: ResponseCache,
        semantic: SemanticCache | None,
        ledger: UsageLedger,
        budgets: BudgetStore,
        settings: LlmSettings,
    ) -> None:
        self._router = router
        self._conversations = conversations
        self._cache = cache
        self._semantic = semantic
        self._ledger = ledger
        self._budgets = budgets
        self._settings = settings
        self._tasks: set[asyncio.Task[None]] = set()

    async def chat(self, call: ChatCall, *, operation: str = "chat") -> Completion:
        """One completion.

        Raises:
            InvalidArgument: A bad request, or a prompt longer than the context window.
            NotFound: An unknown model or conversation.
            ResourceExhausted: Over budget (reason BUDGET_EXCEEDED) or over a size limit.
            NexusError: The provider's failure.
        """
        started = time.perf_counter()
        plan = await self._plan(call)
        found = await self._lookup_or_reserve(plan)
        if isinstance(found, Completion):
            return await self._finish(plan, found, started, operation)
        reservation = found
        try:
            completion = await self._router.complete(
                plan.model.name, plan.messages, plan.call.params
            )
        except BaseException:
            if reservation.active:
                self._background(self._budgets.release(reservation))
            raise
        if reservation.active:
            self._background(self._budgets.settle(reservation, completion.usage.cost_usd))
        await self._store(plan, completion)
        return await self._finish(plan, completion, started, operation)

    async def stream(self, call: ChatCall) -> AsyncIterator[Chunk]:
        """A completion as it is generated; the last chunk carries the usage.

        Stopping the iteration (a client that goes away) closes the provider stream and bills
        what was generated until then.
        """
        started = time.perf_counter()
        plan = await self._plan(call)
        found = await self._lookup_or_reserve(plan)
        if isinstance(found, Completion):
            for chunk in _replay(found):
                yield replace(chunk, conversation_id=call.conversation_id)
            await self._finish(plan, found, started, "chat")
            return
        reservation = found
        collected = _Collector()
        try:
            async for chunk in self._router.stream(
                plan.model.name, plan.messages, plan.call.params
            ):
                collected.add(chunk)
                if chunk.finish_reason:
                    chunk = replace(chunk, usage=self._stream_usage(plan, collected))
                yield replace(chunk, conversation_id=call.conversation_id)
        finally:
            self._background(self._after_stream(plan, reservation, collected, started))

    async def extract(
        self, call: ChatCall, schema: dict[str, Any]
    ) -> tuple[dict[str, Any], Completion]:
        """Structured data from a chat whose reply must be JSON valid against `schema`.

        Raises:
            FailedPrecondition: The model's reply is not such JSON.
        """
        completion = await self.chat(call, operation="extract")
        return parse_reply(str(completion.message.get("content") or ""), schema), completion

    async def drain(self) -> None:
        """Waits for the background accounting of finished calls."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # Planning.

    async def _plan(self, call: ChatCall) -> _Plan:
        history, name = await self._history(call)
        model = self._router.chat_model(name)  # an unknown model first, as OpenAI does
        call = validate_call(call, self._settings, has_history=bool(history))
        messages = history + call.messages
        if history:
            messages = self._trim(model, messages, call.params)
        tokens = self._prompt_tokens(model, messages, call.params)
        key = cache_key(replace(call, model=model.name), messages)
        return _Plan(replace(call, model=model.name), model, messages, call.messages, tokens, key)

    async def _history(self, call: ChatCall) -> tuple[list[Message], str]:
        named = model_name(call)
        if not call.conversation_id:
            if not named:
                raise InvalidArgument(
                    "You must provide a model parameter.",
                    reason=MISSING_REQUIRED_PARAMETER,
                    violations=[FieldViolation("model", "a model is required")],
                )
            return [], named
        record = await self._conversations.get(call.api_key_id, call.conversation_id)
        model = named or record.model
        if not model:
            raise InvalidArgument.for_field(
                "model", "neither the request nor the conversation names one"
            )
        return list(record.messages), model

    def _trim(
        self, model: ModelDescription, messages: list[Message], params: dict[str, Any]
    ) -> list[Message]:
        if not model.context_window:
            return messages
        reserve = params.get("max_tokens") or min(DEFAULT_OUTPUT_RESERVE, model.context_window // 2)
        budget = max(model.context_window - int(reserve), 1)
        return trim_to_context(messages, lambda m: self._router.count_tokens(model.name, m), budget)

    def _prompt_tokens(
        self, model: ModelDescription, messages: list[Message], params: dict[str, Any]
    ) -> int:
        """Counts the prompt when it matters (a context window to check, or prices to estimate);
        0 when a cheap bound shows it cannot exceed the window and the model is free."""
        priced = model.input_cost_per_token > 0 or model.output_cost_per_token > 0
        if not model.context_window and not priced:
            return 0
        if not priced and _upper_bound(messages, params) <= model.context_window:
            return 0
        tokens = self._router.count_tokens(model.name, messages, params.get("tools"))
        if model.context_window and tokens > model.context_window:
            raise InvalidArgument(
                f"the prompt has {tokens} tokens, more than the {model.context_window} of "
                f"{model.name}'s context window",
                reason=CONTEXT_WINDOW_EXCEEDED,
            )
        return tokens

    # Cache.

    async def _lookup_or_reserve(self, plan: _Plan) -> Completion | Reservation:
        """The call's cached completion, or else its budget reservation.

        This replica's memory answers first. On a miss there the shared tiers (KV, semantic)
        and the budget are asked at once: the call waits for one NATS round trip, not two. A
        reservation made for a call that the shared tiers then answer is released before the
        hit is served; a reservation that completes after the call was cancelled is released
        in the background.

        Raises:
            ResourceExhausted: Over budget, when no cache answers the call.
        """
        mode = plan.call.cache_mode
        if not self._settings.cache_enabled or mode is not CacheMode.DEFAULT:
            return await self._reserve(plan)
        hit = self._cache.get_local(plan.key)
        if hit is not None:
            return hit
        lookup = asyncio.ensure_future(self._lookup_shared(plan))
        reserve = asyncio.ensure_future(self._reserve(plan))
        try:
            await asyncio.wait((lookup, reserve))
        except BaseException:
            lookup.cancel()
            reserve.add_done_callback(self._release_late)
            raise
        if lookup.exception() is None and (hit := lookup.result()) is not None:
            if reserve.exception() is None and reserve.result().active:
                try:
                    await self._budgets.release(reserve.result())
                except Exception:  # the hit is served anyway; the reservation expires
                    log.exception("releasing the reservation of a cached call failed")
            return hit
        if lookup.exception() is not None:
            self._release_late(reserve)
        lookup.result()  # raises the lookup's error
        return reserve.result()

    async def _lookup_shared(self, plan: _Plan) -> Completion | None:
        """The shared KV tier, then the semantic cache."""
        hit = await self._cache.get_shared(plan.key)
        if hit is None and self._semantic is not None:
            hit = await self._semantic.get(plan.call, plan.messages)
        return hit

    def _release_late(self, reserve: asyncio.Future[Reservation]) -> None:
        """Releases, in the background, what a reservation nobody will use holds."""
        if reserve.cancelled() or reserve.exception() is not None:
            return
        if reserve.result().active:
            self._background(self._budgets.release(reserve.result()))

    async def _store(self, plan: _Plan, completion: Completion) -> None:
        if plan.call.conversation_id:
            reply = {k: v for k, v in completion.message.items() if v not in (None, "", [])}
            reply.setdefault("content", "")
            reply["role"] = "assistant"
            await self._conversations.append(
                plan.call.api_key_id, plan.call.conversation_id, [*plan.new_messages, reply]
            )
        if not self._settings.cache_enabled or plan.call.cache_mode is CacheMode.DISABLED:
            return
        if completion.finish_reason not in ("stop", "tool_calls", "length"):
            return
        await self._cache.put(plan.key, completion)
        if self._semantic is not None:
            await self._semantic.put(plan.call, plan.messages, completion)

    # Budgets and accounting.

    async def _reserve(self, plan: _Plan) -> Reservation:
        model = plan.model
        max_out = int(plan.call.params.get("max_tokens") or model.max_output_tokens or 0)
        estimate = estimate_cost(
            plan.prompt_tokens, max_out, model.input_cost_per_token, model.output_cost_per_token
        )
        return await self._budgets.reserve(plan.call.api_key_id, estimate)

    async def _finish(
        self, plan: _Plan, completion: Completion, started: float, operation: str
    ) -> Completion:
        if completion.cached and plan.call.conversation_id:
            await self._store(plan, completion)
        self._account(
            plan, completion.provider, completion.usage, started, operation, completion.cached
        )
        return replace(completion, conversation_id=plan.call.conversation_id)

    def _account(
        self,
        plan: _Plan,
        provider: str,
        usage: TokenUsage,
        started: float,
        operation: str,
        cached: bool,
    ) -> None:
        record = UsageRecord(
            api_key_id=plan.call.api_key_id,
            operation=operation,
            model=plan.model.name,
            provider=provider,
            usage=usage,
            latency_s=time.perf_counter() - started,
            cached=cached,
        )
        self._ledger.submit(record)

    def _stream_usage(self, plan: _Plan, collected: _Collector) -> TokenUsage:
        if collected.usage is not None and collected.usage.total_tokens:
            return collected.usage
        prompt = plan.prompt_tokens or self._router.count_tokens(plan.model.name, plan.messages)
        completion = (
            self._router.count_text_tokens(plan.model.name, collected.text())
            if collected.parts
            else 0
        )
        return TokenUsage(prompt, completion, plan.model.cost(prompt, completion))

    async def _after_stream(
        self, plan: _Plan, reservation: Reservation, collected: _Collector, started: float
    ) -> None:
        usage = self._stream_usage(plan, collected)
        await self._budgets.settle(reservation, usage.cost_usd)
        self._account(plan, collected.provider, usage, started, "chat", False)
        if collected.finish_reason:
            await self._store(plan, collected.completion(plan, usage))

    def _background(self, work: Awaitable[Any]) -> None:
        async def run() -> None:
            try:
                await work
            except Exception:
                log.exception("background accounting failed")

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _Collector:
    """What a stream produced, to bill it, cache it and append it to a conversation."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.provider = ""
        self.finish_reason = ""
        self.usage: TokenUsage | None = None
        self.first: Chunk | None = None

    def add(self, chunk: Chunk) -> None:
        self.first = self.first or chunk
        self.provider = self.provider or chunk.provider
        if chunk.content:
            self.parts.append(chunk.content)
        for delta in chunk.tool_calls:
            self._merge(delta)
        if chunk.finish_reason:
            self.finish_reason = chunk.finish_reason
            self.usage = chunk.usage

    def _merge(self, delta: dict[str, Any]) -> None:
        call = self.calls.setdefault(
            int(delta.get("index", 0)),
            {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
        )
        call["id"] = delta.get("id") or call["id"]
        function = delta.get("function") or {}
        call["function"]["name"] += function.get("name") or ""
        call["function"]["arguments"] += function.get("arguments") or ""

    def text(self) -> str:
        return "".join(self.parts)

    def completion(self, plan: _Plan, usage: TokenUsage) -> Completion:
        message: Message = {"role": "assistant", "content": self.text()}
        if self.calls:
            message["tool_calls"] = [self.calls[i] for i in sorted(self.calls)]
        first = self.first
        return Completion(
            id=first.id if first else "",
            model=plan.model.name,
            provider=self.provider,
            message=message,
            finish_reason=self.finish_reason,
            usage=usage,
            created=first.created if first else time.time(),
        )


def _replay(completion: Completion) -> list[Chunk]:
    """A cached completion as a stream: the reply in one chunk, then the final chunk."""
    base = Chunk(
        id=completion.id,
        model=completion.model,
        provider=completion.provider,
        created=completion.created,
        cached=True,
    )
    calls = [
        {"index": i, **call} for i, call in enumerate(completion.message.get("tool_calls") or [])
    ]
    content = str(completion.message.get("content") or "")
    return [
        replace(base, role="assistant", content=content, tool_calls=calls),
        replace(base, finish_reason=completion.finish_reason, usage=completion.usage),
    ]


def _upper_bound(messages: list[Message], params: dict[str, Any]) -> int:
    """More tokens than the prompt can have: a token is at least one character, plus framing."""
    chars = sum(
        len(str(m.get("content") or "")) + len(str(m.get("tool_calls") or "")) for m in messages
    )
    tools = len(json.dumps(params.get("tools"))) if params.get("tools") else 0
    return chars + tools + _CHARS_SLACK * (len(messages) + 1)
