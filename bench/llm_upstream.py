"""A minimal OpenAI-compatible upstream for the LLM benchmarks (bench infrastructure).

Every contender of bench/llm_overhead.py calls this server, so its cost is the same for all of
them: it answers at once with a fixed reply and realistic usage numbers.

- `POST /v1/chat/completions`: unary, or with `"stream": true` Server-Sent Events of a few content
  chunks, a finish chunk, a usage chunk and `data: [DONE]`;
- `GET /v1/models`: the one model, `bench-model`;
- `GET /stats`: how many chat completions it has answered (the benchmark reads it to tell cache
  hits from calls that reached the upstream).

Usage: python bench/llm_upstream.py --port 8000 [--host 127.0.0.1]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

MODEL = "bench-model"
REPLY = "Nexus benchmark reply: the quick brown fox jumps over the lazy dog."
CHUNKS = ("Nexus benchmark reply:", " the quick brown fox", " jumps over", " the lazy dog.")
COMPLETION_TOKENS = 16

_served = itertools.count(1)
_stats = {"chat_requests": 0}


def usage(messages: list[dict[str, Any]]) -> dict[str, int]:
    """Token counts of a call: about 4 characters a token plus 4 tokens a message, as OpenAI's."""
    chars = sum(len(str(m.get("content") or "")) for m in messages)
    prompt = chars // 4 + 4 * len(messages) + 3
    return {
        "prompt_tokens": prompt,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": prompt + COMPLETION_TOKENS,
    }


def completion(completion_id: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The unary `chat.completion` object."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": REPLY},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": usage(messages),
    }


def chunk(completion_id: str, choices: list[dict[str, Any]], **extra: Any) -> bytes:
    """One `chat.completion.chunk` as an SSE event."""
    body = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": MODEL,
        "choices": choices,
        **extra,
    }
    return f"data: {json.dumps(body)}\n\n".encode()


async def events(completion_id: str, messages: list[dict[str, Any]]) -> AsyncIterator[bytes]:
    """The streamed reply: content chunks, the finish chunk, the usage chunk, [DONE]."""
    for i, text in enumerate(CHUNKS):
        delta = {"role": "assistant", "content": text} if i == 0 else {"content": text}
        yield chunk(completion_id, [{"index": 0, "delta": delta, "finish_reason": None}])
    yield chunk(completion_id, [{"index": 0, "delta": {}, "finish_reason": "stop"}])
    yield chunk(completion_id, [], usage=usage(messages))
    yield b"data: [DONE]\n\n"


async def chat_completions(request: Request) -> Response:
    """POST /v1/chat/completions."""
    body = await request.json()
    messages = body.get("messages") or []
    _stats["chat_requests"] += 1
    completion_id = f"chatcmpl-bench-{next(_served)}"
    if body.get("stream"):
        return StreamingResponse(events(completion_id, messages), media_type="text/event-stream")
    return JSONResponse(completion(completion_id, messages))


async def models(_: Request) -> Response:
    """GET /v1/models."""
    entry = {"id": MODEL, "object": "model", "created": 0, "owned_by": "bench"}
    return JSONResponse({"object": "list", "data": [entry]})


async def stats(_: Request) -> Response:
    """GET /stats: chat completions answered so far."""
    return JSONResponse(_stats)


app = Starlette(
    routes=[
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/stats", stats, methods=["GET"]),
    ]
)


def main() -> None:
    """Serves until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
