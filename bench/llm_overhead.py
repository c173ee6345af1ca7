"""LLM gateway overhead: litellm in-process vs. Nexus (gateway + llm service) vs. the LiteLLM proxy.

One run starts a minimal OpenAI-compatible upstream on loopback (bench/llm_upstream.py, its own
process, answering at once) and measures every contender against it:

- direct: `litellm.acompletion` in this process (the baseline every ratio is against);
- router: `litellm.Router.acompletion` in this process, over the deployment the llm service gets
  (what litellm's Router itself costs over `litellm.acompletion`);
- upstream: the same requests as HTTP straight to the upstream with the benchmark's HTTP client
  (the cost of one loopback HTTP hop with this client, for reference);
- nexus-openai: the real platform (embedded NATS, `python -m nexus.llm`, the gateway, each its
  own process as `nexus up` runs them, auth on with a fresh key), `POST /v1/chat/completions`;
- nexus-native: the same platform, the native routes `POST /v1/llm/chat` and `/v1/llm/chat:stream`;
- nexus-grpc: the same llm service over gRPC, without the gateway;
- litellm-proxy: `litellm --config` in a subprocess (no database, no master key, local cache), run
  from its own virtual environment (`--proxy-bin`; `make bench` creates `.venv-bench` with the
  same litellm version as `.venv`), so that its extras never enter the platform's environment.

Every contender is up at once and they take turns in blocks of `--block` requests, in an order
that rotates every round: a machine that slows down or speeds up during the run (a shared one
does) affects every contender alike. For each: unary latency p50/p99 (concurrency 1, a unique
message each time, so never a cache hit), time to first token of streams, cache-hit latency (one
request repeated; a hit is a request that did not reach the upstream, counted by the upstream
itself), CPU time per unary request of this process (the client, or litellm itself for the
in-process contenders) and of the contender's server processes, and optionally requests/s at
`--concurrency` in flight (measured one contender after the other). Every HTTP contender is
called with the same httpx.AsyncClient (keep-alive) and the same request bodies. A contender that
fails is reported as failed; the run still writes its results, exits 0 and stops every process
it started.

Usage: python -m bench.llm_overhead [-n 300] [--warmup 30] [--block 10] [--concurrency 16]
       [--requests 800] [--skip router,proxy] [--proxy-bin .venv-bench/bin/litellm]
Writes bench/results/llm_overhead.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol

import grpc
import httpx
import numpy as np
import yaml

from bench.proc_cpu import cpu_seconds
from nexus.api.llm.v1 import llm_service_pb2 as pb
from nexus.api.llm.v1 import llm_service_pb2_grpc as pb_grpc
from nexus.common.auth import open_key_store
from nexus.common.launcher import Child, Platform
from nexus.common.natsserver import free_port
from nexus.common.settings import NexusSettings
from nexus.llm._litellm import Router, litellm

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results" / "llm_overhead.json"
UPSTREAM_SCRIPT = BENCH_DIR / "llm_upstream.py"
DEFAULT_PROXY_BIN = BENCH_DIR.parent / ".venv-bench" / "bin" / "litellm"
MODEL = "bench-model"
UPSTREAM_KEY = "sk-bench"
SYSTEM = "You are a helpful assistant. Answer in one sentence."
CONTENDERS = ("direct", "router", "upstream", "nexus", "proxy")
ROUTER_TIMEOUT_S = 120.0
"""The Router's timeout: the llm service's default `request_timeout_s`."""
AIM_ADDED_P50_MS = 2.0
AIM_CACHE_HIT_MS = 3.0
LOG_TAIL_CHARS = 1_500
SETTLE_S = 0.02
"""Pause after each block: the background work of its calls (litellm's logging, the llm
service's usage accounting) runs then, and counts toward its contender's CPU time."""


# --- processes -------------------------------------------------------------------------------


@dataclass
class Proc:
    """A child process in its own process group, with its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self) -> str:
        """The end of its log, for an error message."""
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        return ""


def spawn(name: str, cmd: list[str], env: dict[str, str], logs: Path) -> Proc:
    """Starts `cmd` in a new session (its own process group), output to logs/<name>.log."""
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}.log"
    with log_path.open("ab") as out:
        process = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Proc(name, process, log_path)


def kill_group(pid: int, sig: signal.Signals) -> None:
    """Signals the process group led by `pid`, if any member is left."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """SIGTERM to its group, SIGKILL after `timeout_s`, then SIGKILL to whatever is left of it."""
    if process.poll() is None:
        kill_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            kill_group(process.pid, signal.SIGKILL)
            process.wait(timeout_s)
    kill_group(process.pid, signal.SIGKILL)


async def wait_http(proc: Proc, url: str, timeout_s: float) -> None:
    """Polls GET `url` until it answers 200; fails early if the process exits."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2.0) as http:
        while time.monotonic() < deadline:
            if proc.process.poll() is not None:
                raise RuntimeError(f"{proc.name} exited at start:\n{proc.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{proc.name} was not ready in {timeout_s:.0f}s:\n{proc.log_tail()}")


@dataclass
class BenchPlatform(Platform):
    """The launcher's platform, with extra environment and each child in its own process group
    (so that stopping it also stops anything a child started)."""

    extra_env: dict[str, str] = field(default_factory=dict)
    pids: list[int] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """The launcher's environment plus `extra_env`."""
        return {**super().env(), **self.extra_env}

    def _spawn(self, name: str, port: int, env: dict[str, str]) -> Child:
        proc = spawn(name, [sys.executable, "-m", f"nexus.{name}"], env, self.data_dir / "logs")
        self.pids.append(proc.process.pid)
        return Child(name, port, proc.process, proc.log_path, env)

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stops the platform as the launcher does, then kills what is left of each group."""
        try:
            super().stop(timeout_s)
        finally:
            for pid in self.pids:
                kill_group(pid, signal.SIGKILL)

    def log_tails(self) -> str:
        """The end of every child's log."""
        return "\n".join(
            f"--- {c.name} ---\n{Proc(c.name, c.process, c.log_path).log_tail()}"
            for c in self.children
        )


class ProcessSet:
    """Processes whose CPU time is counted: the given ones and their descendants at the time.

    Args:
        pids: Processes by name ("llm", "gateway", ...).
    """

    def __init__(self, pids: dict[str, int] | None = None) -> None:
        children = _children()
        self.pids = {name: _with_descendants(pid, children) for name, pid in (pids or {}).items()}

    def cpu(self) -> dict[str, float]:
        """CPU seconds (user + system) used so far, by name; a process gone counts as 0."""
        return {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in self.pids.items()}


def _children() -> dict[int, list[int]]:
    """The child processes of every process (from /proc; empty where there is none)."""
    children: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(f"/proc/{entry.name}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
    return children


def _with_descendants(pid: int, children: dict[int, list[int]]) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


# --- contenders ------------------------------------------------------------------------------


def messages(text: str) -> list[dict[str, str]]:
    """The messages of one request: a system prompt and the user's text."""
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]


class Target(Protocol):
    """One way of asking the upstream's model."""

    has_cache: bool

    async def unary(self, text: str) -> bool | None:
        """One unary completion; returns the response's "served from cache" flag (None: the
        surface has none)."""

    async def stream(self, text: str) -> float:
        """One streamed completion, read to the end; returns the seconds to the first content."""


class DirectTarget:
    """`litellm.acompletion` in this process (the baseline)."""

    has_cache = False

    def __init__(self, api_base: str) -> None:
        self.api_base = api_base

    async def unary(self, text: str) -> bool | None:
        """One `litellm.acompletion`."""
        reply = await litellm.acompletion(
            model=f"openai/{MODEL}",
            api_base=self.api_base,
            api_key=UPSTREAM_KEY,
            messages=messages(text),
        )
        if not reply.choices[0].message.content:
            raise RuntimeError("direct: empty reply")
        return None

    async def stream(self, text: str) -> float:
        """One streamed `litellm.acompletion`."""
        started, first = time.perf_counter(), 0.0
        response = await litellm.acompletion(
            model=f"openai/{MODEL}",
            api_base=self.api_base,
            api_key=UPSTREAM_KEY,
            messages=messages(text),
            stream=True,
        )
        async for part in response:
            if not first and part.choices and part.choices[0].delta.content:
                first = time.perf_counter() - started
        if not first:
            raise RuntimeError("direct: a stream without content")
        return first


class RouterTarget:
    """`litellm.Router.acompletion` in this process, over the one deployment the llm service gets,
    with its timeout: what litellm's Router costs over `litellm.acompletion`."""

    has_cache = False

    def __init__(self, upstream_url: str) -> None:
        os.environ.setdefault("BENCH_UPSTREAM_KEY", UPSTREAM_KEY)
        self.router: Any = Router(model_list=model_list(upstream_url), timeout=ROUTER_TIMEOUT_S)

    async def unary(self, text: str) -> bool | None:
        """One `Router.acompletion`."""
        reply = await self.router.acompletion(model=MODEL, messages=messages(text))
        if not reply.choices[0].message.content:
            raise RuntimeError("router: empty reply")
        return None

    async def stream(self, text: str) -> float:
        """One streamed `Router.acompletion`."""
        started, first = time.perf_counter(), 0.0
        response = await self.router.acompletion(model=MODEL, messages=messages(text), stream=True)
        async for part in response:
            if not first and part.choices and part.choices[0].delta.content:
                first = time.perf_counter() - started
        if not first:
            raise RuntimeError("router: a stream without content")
        return first


CALLBACK_LISTS = (
    "input_callback",
    "success_callback",
    "failure_callback",
    "_async_input_callback",
    "_async_success_callback",
    "_async_failure_callback",
    "callbacks",
    "service_callback",
)


class CallbackScope:
    """litellm's process-wide callback lists as they were when this was made.

    A Router adds its own callbacks to litellm's global lists, so in one process the direct
    contender would run the Router's callbacks on every call too. Each contender's calls run
    inside the scope taken when its own set-up was done (`with scope():`).
    """

    def __init__(self) -> None:
        self.lists = {
            name: list(value)
            for name in CALLBACK_LISTS
            if isinstance(value := getattr(litellm, name, None), list)
        }

    def apply(self) -> None:
        """Puts these lists in place."""
        for name, value in self.lists.items():
            getattr(litellm, name)[:] = value

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        """These lists in place for the block of calls inside."""
        self.apply()
        yield


def _check(reply: httpx.Response, where: str) -> None:
    """Raises with the status and the start of the body unless the reply is a 200."""
    if reply.status_code != 200:
        raise RuntimeError(f"{where}: HTTP {reply.status_code}: {reply.text[:300]}")


class OpenAITarget:
    """An OpenAI-compatible HTTP surface: `POST <base>/chat/completions`.

    Args:
        http: The shared client.
        base: The URL before `/chat/completions` (ending in /v1).
        headers: Headers of every request (authorization).
        cache_header: The response header that says "served from cache", if the surface has one.
        has_cache: Whether the contender has a response cache to measure.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        base: str,
        headers: dict[str, str],
        *,
        cache_header: str | None = None,
        has_cache: bool = True,
    ) -> None:
        self.http, self.url, self.headers = http, f"{base}/chat/completions", headers
        self.cache_header, self.has_cache = cache_header, has_cache

    def _body(self, text: str, stream: bool) -> bytes:
        return json.dumps({"model": MODEL, "messages": messages(text), "stream": stream}).encode()

    async def unary(self, text: str) -> bool | None:
        """One unary request."""
        reply = await self.http.post(
            self.url, content=self._body(text, False), headers=self.headers
        )
        _check(reply, self.url)
        if not reply.json()["choices"][0]["message"]["content"]:
            raise RuntimeError(f"{self.url}: empty reply")
        if self.cache_header is None:
            return None
        return str(reply.headers.get(self.cache_header, "")).lower() == "true"

    async def stream(self, text: str) -> float:
        """One streamed request, read to `[DONE]`."""
        started, first = time.perf_counter(), 0.0
        body = self._body(text, True)
        async with self.http.stream("POST", self.url, content=body, headers=self.headers) as reply:
            if reply.status_code != 200:
                await reply.aread()
                _check(reply, self.url)
            async for line in reply.aiter_lines():
                if first or not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                choices = json.loads(line[6:]).get("choices") or [{}]
                if (choices[0].get("delta") or {}).get("content"):
                    first = time.perf_counter() - started
        if not first:
            raise RuntimeError(f"{self.url}: a stream without content")
        return first


class NativeTarget:
    """Nexus's native routes: `POST /v1/llm/chat` and `POST /v1/llm/chat:stream`."""

    has_cache = True

    def __init__(self, http: httpx.AsyncClient, gateway: str, headers: dict[str, str]) -> None:
        self.http, self.gateway, self.headers = http, gateway, headers

    @staticmethod
    def _body(text: str) -> bytes:
        return json.dumps({"model": MODEL, "messages": messages(text)}).encode()

    async def unary(self, text: str) -> bool | None:
        """One `POST /v1/llm/chat`; returns its `cached` field."""
        url = f"{self.gateway}/v1/llm/chat"
        reply = await self.http.post(url, content=self._body(text), headers=self.headers)
        _check(reply, url)
        answer = reply.json()
        if not answer["message"]["content"]:
            raise RuntimeError(f"{url}: empty reply")
        return answer.get("cached") is True

    async def stream(self, text: str) -> float:
        """One `POST /v1/llm/chat:stream`, read to its end."""
        url = f"{self.gateway}/v1/llm/chat:stream"
        started, first = time.perf_counter(), 0.0
        body = self._body(text)
        async with self.http.stream("POST", url, content=body, headers=self.headers) as reply:
            if reply.status_code != 200:
                await reply.aread()
                _check(reply, url)
            async for line in reply.aiter_lines():
                if line.startswith("event: error"):
                    raise RuntimeError(f"{url}: error event")
                if not first and line.startswith("data: ") and json.loads(line[6:]).get("content"):
                    first = time.perf_counter() - started
        if not first:
            raise RuntimeError(f"{url}: a stream without content")
        return first


class GrpcTarget:
    """The llm service's gRPC API, no gateway: `Chat` and `StreamChat` (to tell the gateway's
    share of the overhead from the service's)."""

    has_cache = True

    def __init__(self, stub: pb_grpc.LlmServiceStub, key: str) -> None:
        self.stub, self.metadata = stub, (("authorization", f"Bearer {key}"),)

    @staticmethod
    def _request(text: str) -> pb.ChatRequest:
        return pb.ChatRequest(
            model=MODEL,
            messages=[pb.ChatMessage(role=m["role"], content=m["content"]) for m in messages(text)],
        )

    async def unary(self, text: str) -> bool | None:
        """One `Chat`; returns its `cached` field."""
        reply = await self.stub.Chat(self._request(text), metadata=self.metadata)
        if not reply.message.content:
            raise RuntimeError("Chat: empty reply")
        return bool(reply.cached)

    async def stream(self, text: str) -> float:
        """One `StreamChat`, read to its end."""
        started, first = time.perf_counter(), 0.0
        request = pb.StreamChatRequest(request=self._request(text))
        async for part in self.stub.StreamChat(request, metadata=self.metadata):
            if not first and part.content:
                first = time.perf_counter() - started
        if not first:
            raise RuntimeError("StreamChat: a stream without content")
        return first


# --- measurements ----------------------------------------------------------------------------


@dataclass
class Measured:
    """What one contender measured (times in ms); `error` says why the rest is missing.

    `cpu_client_ms` is this process's CPU time per unary request while the contender ran (the
    HTTP or gRPC client, or litellm itself for the in-process contenders); `cpu_server_ms` that
    of each of the contender's server processes.
    """

    label: str
    unary_ms: dict[str, float] | None = None
    ttft_ms: dict[str, float] | None = None
    cache_hit_ms: dict[str, float] | None = None
    cache_hit_ratio: float | None = None
    cache_flag_ratio: float | None = None
    cpu_client_ms: float | None = None
    cpu_server_ms: dict[str, float] | None = None
    throughput_rps: float | None = None
    note: str = ""
    error: str = ""


@dataclass(eq=False)
class Contender:
    """A target to measure, with its row, its server processes and its litellm callbacks."""

    row: Measured
    target: Target
    processes: ProcessSet = field(default_factory=ProcessSet)
    scope: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext


def stats_ms(seconds: list[float]) -> dict[str, float]:
    """p50, p99, mean, min and max in milliseconds."""
    ms = np.asarray(seconds) * 1000.0
    return {
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "mean": float(ms.mean()),
        "min": float(ms.min()),
        "max": float(ms.max()),
    }


async def timed(call: Callable[[], Awaitable[object]]) -> float:
    """Seconds one call takes."""
    started = time.perf_counter()
    await call()
    return time.perf_counter() - started


class Upstream:
    """The running upstream: its URL and its count of chat completions answered."""

    def __init__(self, http: httpx.AsyncClient, url: str) -> None:
        self.http, self.url = http, url

    async def served(self) -> int:
        """Chat completions it has answered so far."""
        return int((await self.http.get(f"{self.url}/stats")).json()["chat_requests"])


@dataclass
class _Block:
    """What one block of calls of one contender gave."""

    samples: list[float]
    client_s: float
    server_s: dict[str, float]
    reached: int


Call = Callable[[Contender], Awaitable[float]]
"""One timed call of a contender: its seconds (wall time, or time to first token)."""


class Bench:
    """Measures every contender with the same settings, their calls interleaved in blocks."""

    def __init__(self, args: argparse.Namespace, upstream: Upstream) -> None:
        self.args, self.upstream = args, upstream
        self.run_id = uuid.uuid4().hex[:12]
        self.texts = (
            f"Question {i} of run {self.run_id}: why is the sky blue?" for i in itertools.count()
        )

    def _text(self) -> str:
        return next(self.texts)

    async def measure(self, contenders: list[Contender]) -> None:
        """Unary latency (and CPU), TTFT, cache hits and throughput of every contender."""
        await self.interleaved(contenders, self.args.warmup, self._unary)
        unary = await self.interleaved(contenders, self.args.n, self._unary)
        for contender, blocks in unary.items():
            row, samples = contender.row, [s for b in blocks for s in b.samples]
            row.unary_ms = stats_ms(samples)
            row.cpu_client_ms = 1000.0 * sum(b.client_s for b in blocks) / len(samples)
            if contender.processes.pids:
                row.cpu_server_ms = {
                    name: 1000.0 * sum(b.server_s[name] for b in blocks) / len(samples)
                    for name in contender.processes.pids
                }
        await self.interleaved(contenders, self.args.warmup, self._stream)
        for contender, blocks in (
            await self.interleaved(contenders, self.args.n, self._stream)
        ).items():
            contender.row.ttft_ms = stats_ms([s for b in blocks for s in b.samples])
        await self.cache_hits([c for c in contenders if c.target.has_cache])
        if self.args.concurrency > 0:
            for contender in self._live(contenders):
                try:
                    with contender.scope():
                        contender.row.throughput_rps = await self.throughput(contender.target)
                except Exception as err:  # one failed contender must not end the run
                    contender.row.error = f"{type(err).__name__}: {err}"

    async def cache_hits(self, contenders: list[Contender]) -> None:
        """The same request repeated: latency, and how many never reached the upstream."""
        texts = {
            c: f"The cached question of {c.row.label} in run {self.run_id}." for c in contenders
        }
        flags: dict[Contender, list[bool | None]] = {c: [] for c in contenders}

        async def hit(contender: Contender) -> float:
            started = time.perf_counter()
            flags[contender].append(await contender.target.unary(texts[contender]))
            return time.perf_counter() - started

        await self.interleaved(contenders, max(self.args.warmup, 1), hit)
        for values in flags.values():
            values.clear()
        found = await self.interleaved(contenders, self.args.n, hit, count_upstream=True)
        for contender, blocks in found.items():
            row, samples = contender.row, [s for b in blocks for s in b.samples]
            row.cache_hit_ms = stats_ms(samples)
            row.cache_hit_ratio = 1.0 - sum(b.reached for b in blocks) / len(samples)
            answers = flags[contender]
            if answers and answers[0] is not None:
                row.cache_flag_ratio = sum(1 for f in answers if f) / len(answers)
            if row.cache_hit_ratio < 0.99:
                row.note = (
                    f"cache: only {row.cache_hit_ratio:.0%} of repeats were served from cache"
                )

    async def interleaved(
        self, contenders: list[Contender], n: int, call: Call, *, count_upstream: bool = False
    ) -> dict[Contender, list[_Block]]:
        """`n` calls of each contender, in blocks of `--block` that take turns, the order
        rotating every round. A contender whose call fails is left out from then on."""
        size = max(self.args.block, 1)
        found: dict[Contender, list[_Block]] = {}
        for round_ in range(math.ceil(n / size)):
            live = self._live(contenders)
            shift = round_ % len(live) if live else 0
            for contender in live[shift:] + live[:shift]:
                calls = min(size, n - round_ * size)
                try:
                    block = await self._block(contender, calls, call, count_upstream)
                except Exception as err:  # one failed contender must not end the run
                    contender.row.error = f"{type(err).__name__}: {err}"
                    found.pop(contender, None)
                    continue
                found.setdefault(contender, []).append(block)
        return found

    async def _block(
        self, contender: Contender, calls: int, call: Call, count_upstream: bool
    ) -> _Block:
        served = await self.upstream.served() if count_upstream else 0
        with contender.scope():
            server = contender.processes.cpu()
            client = time.process_time()
            samples = [await call(contender) for _ in range(calls)]
            await asyncio.sleep(SETTLE_S)
            client = time.process_time() - client
            after = contender.processes.cpu()
        reached = await self.upstream.served() - served if count_upstream else 0
        return _Block(samples, client, {k: after[k] - v for k, v in server.items()}, reached)

    async def _unary(self, contender: Contender) -> float:
        return await timed(lambda: contender.target.unary(self._text()))

    async def _stream(self, contender: Contender) -> float:
        return await contender.target.stream(self._text())

    @staticmethod
    def _live(contenders: list[Contender]) -> list[Contender]:
        return [c for c in contenders if not c.row.error]

    async def throughput(self, target: Target) -> float:
        """Requests/s of unique unary requests, `--concurrency` in flight."""
        await asyncio.gather(*(target.unary(self._text()) for _ in range(self.args.concurrency)))
        todo = iter(range(self.args.requests))

        async def worker() -> None:
            for _ in todo:
                await target.unary(self._text())

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(self.args.concurrency)))
        return float(self.args.requests) / (time.perf_counter() - started)


# --- contenders' set-up ----------------------------------------------------------------------


def model_list(upstream_url: str) -> list[dict[str, Any]]:
    """The one deployment, for the llm service, the in-process Router and the LiteLLM proxy."""
    params = {
        "model": f"openai/{MODEL}",
        "api_base": f"{upstream_url}/v1",
        "api_key": "os.environ/BENCH_UPSTREAM_KEY",
    }
    return [{"model_name": MODEL, "litellm_params": params}]


async def admin_key(nats_url: str) -> str:
    """A fresh key with every scope."""
    async with open_key_store(NexusSettings(nats_url=nats_url), "bench-keys") as keys:
        _, secret = await keys.create("bench", ["*"], rate_limit_per_minute=10_000_000)
    return secret


NEXUS_LABELS = ("nexus-openai", "nexus-native", "nexus-grpc")


async def start_nexus(
    stack: contextlib.AsyncExitStack, http: httpx.AsyncClient, upstream_url: str, tmp: Path
) -> tuple[list[Contender], BenchPlatform]:
    """The platform (NATS, llm service, gateway) as three contenders: both HTTP surfaces, and
    gRPC without the gateway. It stops with `stack`."""
    config = tmp / "nexus-llm.yaml"
    config.write_text(yaml.safe_dump({"model_list": model_list(upstream_url)}))
    env = {"NEXUS_LLM_CONFIG_PATH": str(config), "BENCH_UPSTREAM_KEY": UPSTREAM_KEY}
    platform = BenchPlatform(
        tmp / "nexus", nats_port=0, gateway_port=0, services=["llm"], extra_env=env
    )
    stack.callback(platform.stop)
    try:
        nats_url = await platform.start_nats()
        await platform.start_services()
        await platform.start_gateway()
        key = await admin_key(nats_url)
    except Exception as err:  # the platform did not start: say why, go on
        rows = [Measured(label) for label in NEXUS_LABELS]
        rows[0].error = f"the platform did not start: {type(err).__name__}: {err}"
        for row in rows[1:]:
            row.error = "the platform did not start (see nexus-openai)"
        return [Contender(row, _Failed()) for row in rows], platform
    pids = {c.name: c.process.pid for c in platform.children}
    nats = getattr(platform.nats, "_proc", None)  # NatsServer keeps its process to itself
    if isinstance(nats, subprocess.Popen):
        pids["nats"] = nats.pid
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    url = platform.gateway_url
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{platform.children[0].port}")
    stack.push_async_callback(channel.close)
    surface = OpenAITarget(http, f"{url}/v1", headers, cache_header="x-nexus-cached")
    service = ProcessSet({name: pid for name, pid in pids.items() if name != "gateway"})
    contenders = [
        Contender(Measured(NEXUS_LABELS[0]), surface, ProcessSet(pids)),
        Contender(Measured(NEXUS_LABELS[1]), NativeTarget(http, url, headers), ProcessSet(pids)),
        Contender(
            Measured(NEXUS_LABELS[2]), GrpcTarget(pb_grpc.LlmServiceStub(channel), key), service
        ),
    ]
    return contenders, platform


async def start_proxy(
    stack: contextlib.AsyncExitStack,
    http: httpx.AsyncClient,
    upstream_url: str,
    tmp: Path,
    binary: Path,
) -> Contender:
    """The LiteLLM proxy in a subprocess (local cache, no database, no master key), run from
    its own virtual environment. It stops with `stack`."""
    row = Measured("litellm-proxy")
    if not os.access(binary, os.X_OK):
        row.error = (
            f"no LiteLLM proxy at {binary}: `make bench` installs it in .venv-bench "
            "(or pass --proxy-bin)"
        )
        return Contender(row, _Failed())
    config = tmp / "litellm-proxy.yaml"
    settings = {"cache": True, "cache_params": {"type": "local"}}
    config.write_text(
        yaml.safe_dump({"model_list": model_list(upstream_url), "litellm_settings": settings})
    )
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "LITELLM_MASTER_KEY", "REDIS_HOST", "REDIS_URL"}
    }
    env |= {
        "BENCH_UPSTREAM_KEY": UPSTREAM_KEY,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
        # No master key, as the brief of this benchmark asks; the proxy refuses that unless told.
        "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
    }
    command = [str(binary), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    child = spawn("litellm-proxy", command, env, tmp / "logs")
    stack.callback(stop_process, child.process)
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_http(child, f"{base}/health/liveliness", timeout_s=120)
    except Exception as err:  # the proxy did not start: say why, go on
        row.error = f"{type(err).__name__}: {err}\n{child.log_tail()}"
        return Contender(row, _Failed())
    target = OpenAITarget(http, f"{base}/v1", {"Content-Type": "application/json"})
    return Contender(row, target, ProcessSet({"proxy": child.process.pid}))


class _Failed:
    """The target of a contender that could not be set up (its row has the error)."""

    has_cache = False

    async def unary(self, text: str) -> bool | None:
        """Never called."""
        raise RuntimeError("not set up")

    async def stream(self, text: str) -> float:
        """Never called."""
        raise RuntimeError("not set up")


async def set_up(
    args: argparse.Namespace,
    stack: contextlib.AsyncExitStack,
    http: httpx.AsyncClient,
    upstream_url: str,
    tmp: Path,
) -> tuple[list[Contender], BenchPlatform | None]:
    """Every contender not skipped, in the order of the table (and the platform, if started).
    Each in-process contender runs with the litellm callbacks of its own set-up."""
    plain = CallbackScope()  # before any Router added its callbacks
    contenders = [Contender(Measured("direct"), DirectTarget(f"{upstream_url}/v1"), scope=plain)]
    if "router" not in args.skip:
        router = RouterTarget(upstream_url)
        contenders.append(Contender(Measured("router"), router, scope=CallbackScope()))
        plain.apply()
    if "upstream" not in args.skip:
        raw = OpenAITarget(http, f"{upstream_url}/v1", {}, has_cache=False)
        contenders.append(Contender(Measured("upstream"), raw))
    platform = None
    if "nexus" not in args.skip:
        nexus, platform = await start_nexus(stack, http, upstream_url, tmp)
        contenders += nexus
    if "proxy" not in args.skip:
        contenders.append(await start_proxy(stack, http, upstream_url, tmp, args.proxy_bin))
    if "direct" in args.skip:
        contenders = contenders[1:]
    return contenders, platform


async def run(args: argparse.Namespace) -> list[Measured]:
    """Starts the upstream and every contender, measures them, stops everything."""
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        port = free_port()
        upstream_url = f"http://127.0.0.1:{port}"
        server = spawn(
            "upstream",
            [sys.executable, str(UPSTREAM_SCRIPT), "--port", str(port)],
            dict(os.environ),
            tmp / "logs",
        )
        try:
            await wait_http(server, f"{upstream_url}/v1/models", timeout_s=30)
            limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
            async with (
                httpx.AsyncClient(timeout=30.0, limits=limits) as http,
                contextlib.AsyncExitStack() as stack,
            ):
                contenders, platform = await set_up(args, stack, http, upstream_url, tmp)
                bench = Bench(args, Upstream(http, upstream_url))
                await bench.measure([c for c in contenders if not c.row.error])
                if platform is not None:
                    _add_platform_logs([c.row for c in contenders], platform)
        finally:
            stop_process(server.process)
    return [c.row for c in contenders]


def _add_platform_logs(rows: list[Measured], platform: BenchPlatform) -> None:
    """The end of every platform log, after the first failed Nexus row's error."""
    failed = [r for r in rows if r.label in NEXUS_LABELS and r.error]
    if failed:
        dead = [c.name for c in platform.dead_children()]
        exited = f" (exited: {', '.join(dead)})" if dead else ""
        failed[0].error += f"{exited}\n{platform.log_tails()}"


# --- report ----------------------------------------------------------------------------------

LABELS = {
    "direct": "direct litellm.acompletion",
    "router": "litellm Router (in-process)",
    "upstream": "upstream over HTTP (floor)",
    "nexus-openai": "nexus /v1/chat/completions",
    "nexus-native": "nexus /v1/llm/chat",
    "nexus-grpc": "nexus gRPC (no gateway)",
    "litellm-proxy": "litellm proxy",
}


def _fmt(value: float | None, spec: str = ".2f") -> str:
    """A table cell: the value formatted, or "-" when missing."""
    return "-" if value is None else format(value, spec)


def _get(stats: dict[str, float] | None, key: str) -> float | None:
    """One figure of a measurement that may be missing."""
    return None if stats is None else stats[key]


def added(row: Measured, base: Measured | None) -> dict[str, float] | None:
    """Unary p50/p99 of `row` minus the baseline's, in ms."""
    if row.unary_ms is None or base is None or base.unary_ms is None:
        return None
    return {k: row.unary_ms[k] - base.unary_ms[k] for k in ("p50", "p99")}


def _server_cpu(row: Measured) -> float | None:
    return None if row.cpu_server_ms is None else sum(row.cpu_server_ms.values())


def print_table(rows: list[Measured], base: Measured | None, args: argparse.Namespace) -> None:
    """The table: one line per contender, then each one's server CPU by process."""
    head = (
        f"{'contender':<28}{'p50':>8}{'p99':>8}{'+p50':>8}{'+p99':>8}{'x direct':>9}"
        f"{'TTFT50':>8}{'TTFT99':>8}{'hit p50':>9}{'hit p99':>9}{'hits':>6}"
        f"{'cpu cl':>8}{'cpu srv':>8}{'req/s':>8}"
    )
    print(
        f"n={args.n} after {args.warmup} warm-up, interleaved in blocks of {args.block}, "
        "concurrency 1 for latency "
        + (
            f"({args.concurrency} in flight for req/s, {args.requests} requests, one contender "
            "after the other), "
            if args.concurrency > 0
            else "(no req/s row), "
        )
        + f"{os.cpu_count()} cores, litellm {_version('litellm')}; times in ms; cpu: CPU ms "
        "per unary request of the client (this process) and of the server processes"
    )
    print(head)
    print("-" * len(head))
    for row in rows:
        plus = added(row, base)
        ratio = (
            row.unary_ms["p50"] / base.unary_ms["p50"]
            if row.unary_ms and base and base.unary_ms
            else None
        )
        hits = None if row.cache_hit_ratio is None else row.cache_hit_ratio * 100
        print(
            f"{LABELS.get(row.label, row.label):<28}"
            f"{_fmt(_get(row.unary_ms, 'p50')):>8}{_fmt(_get(row.unary_ms, 'p99')):>8}"
            f"{_fmt(_get(plus, 'p50'), '+.2f'):>8}{_fmt(_get(plus, 'p99'), '+.2f'):>8}"
            f"{_fmt(ratio):>9}"
            f"{_fmt(_get(row.ttft_ms, 'p50')):>8}{_fmt(_get(row.ttft_ms, 'p99')):>8}"
            f"{_fmt(_get(row.cache_hit_ms, 'p50')):>9}{_fmt(_get(row.cache_hit_ms, 'p99')):>9}"
            f"{_fmt(hits, '.0f') + ('%' if hits is not None else ''):>6}"
            f"{_fmt(row.cpu_client_ms):>8}{_fmt(_server_cpu(row)):>8}"
            f"{_fmt(row.throughput_rps, '.0f'):>8}"
        )
    for row in rows:
        if row.cpu_server_ms:
            parts = ", ".join(f"{name} {ms:.2f}" for name, ms in row.cpu_server_ms.items())
            print(f"server cpu ms per request, {row.label}: {parts}")
    for row in rows:
        if row.note:
            print(f"note, {row.label}: {row.note}")
        if row.error:
            print(f"FAILED, {row.label}: {row.error}")


def aims(rows: list[Measured], base: Measured | None) -> dict[str, Any]:
    """The aims, printed with their verdicts and returned for the JSON file."""
    found: dict[str, Any] = {}
    for row in rows:
        if row.label not in ("nexus-openai", "nexus-native"):
            continue
        plus = added(row, base)
        if plus is not None:
            met = plus["p50"] < AIM_ADDED_P50_MS
            found[f"{row.label}_added_p50_ms"] = {"value": plus["p50"], "met": met}
            print(
                f"aim: {LABELS[row.label]} adds < {AIM_ADDED_P50_MS:g} ms at p50: "
                f"{plus['p50']:+.2f} ms ({'met' if met else 'NOT met'})"
            )
        if row.cache_hit_ms is not None:
            value = row.cache_hit_ms["p50"]
            met = value < AIM_CACHE_HIT_MS and (row.cache_hit_ratio or 0.0) >= 0.99
            found[f"{row.label}_cache_hit_p50_ms"] = {"value": value, "met": met}
            print(
                f"aim: {LABELS[row.label]} cache hit < {AIM_CACHE_HIT_MS:g} ms end to end (p50): "
                f"{value:.2f} ms ({'met' if met else 'NOT met'})"
            )
    return found


def _version(package: str) -> str:
    """The installed version of `package`."""
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def report(rows: list[Measured], args: argparse.Namespace) -> dict[str, object]:
    """Prints the table and the aims; returns what goes into the JSON file."""
    base = next((r for r in rows if r.label == "direct" and r.unary_ms), None)
    print_table(rows, base, args)
    verdicts = aims(rows, base)
    return {
        "n": args.n,
        "warmup": args.warmup,
        "block": args.block,
        "concurrency": args.concurrency,
        "throughput_requests": args.requests,
        "cores": os.cpu_count(),
        "litellm": _version("litellm"),
        "proxy_bin": str(args.proxy_bin),
        "nexus_auth": True,
        "proxy_auth": False,
        "baseline": "direct",
        "contenders": {r.label: asdict(r) for r in rows},
        "added_ms": {r.label: added(r, base) for r in rows if r.label != "direct"},
        "p50_ratio_to_direct": {
            r.label: r.unary_ms["p50"] / base.unary_ms["p50"]
            for r in rows
            if r.unary_ms and base and base.unary_ms
        },
        "aims": verdicts,
    }


def _interrupt(signum: int, _: object) -> None:
    """A signal handler that unwinds the run as Ctrl-C does."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main() -> None:
    """Runs the benchmark and writes the JSON results (exit 0 even when a contender failed)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300, help="timed requests per measurement")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--block", type=int, default=10, help="requests per turn of a contender")
    parser.add_argument("--concurrency", type=int, default=16, help="0: no throughput row")
    parser.add_argument("--requests", type=int, default=800, help="requests of the req/s row")
    parser.add_argument(
        "--skip",
        type=lambda s: set(filter(None, s.split(","))),
        default=set(),
        help=f"comma-separated contenders to leave out: {','.join(CONTENDERS)}",
    )
    parser.add_argument(
        "--proxy-bin",
        type=Path,
        default=DEFAULT_PROXY_BIN,
        help="the `litellm` executable of the proxy's own virtual environment",
    )
    args = parser.parse_args()
    # SIGTERM (and SIGINT, even where a shell started us in the background with it ignored)
    # unwinds like Ctrl-C, so that every `finally` stops the processes this run started.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        rows = asyncio.run(run(args))
    except KeyboardInterrupt as stop:
        print(f"interrupted ({stop or 'SIGINT'}); every process this run started is stopped")
        raise SystemExit(130) from None
    except Exception as err:  # the upstream did not start: still exit 0
        rows = [Measured("direct", error=f"{type(err).__name__}: {err}")]
    summary = report(rows, args)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
