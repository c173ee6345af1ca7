"""LLM gateway overhead: litellm in-process vs. Nexus (gateway + llm service) vs. the LiteLLM proxy.

One run starts a minimal OpenAI-compatible upstream on loopback (bench/llm_upstream.py, its own
process, answering at once) and measures every contender against it, one after the other:

- direct: `litellm.acompletion` in this process (the baseline every ratio is against);
- upstream: the same requests as HTTP straight to the upstream with the benchmark's HTTP client
  (the cost of one loopback HTTP hop with this client, for reference);
- nexus-openai: the real platform (embedded NATS, `python -m nexus.llm`, the gateway, each its
  own process as `nexus up` runs them, auth on with a fresh key), `POST /v1/chat/completions`;
- nexus-native: the same platform, the native routes `POST /v1/llm/chat` and `/v1/llm/chat:stream`;
- litellm-proxy: `litellm --config` in a subprocess (no database, no master key, local cache).

For each: unary latency p50/p99 (concurrency 1, a unique message each time, so never a cache
hit), time to first token of streams, cache-hit latency (one request repeated; a hit is a request
that did not reach the upstream, counted by the upstream itself), and optionally requests/s at
`--concurrency` in flight. Every HTTP contender is called with the same httpx.AsyncClient
(keep-alive) and the same request bodies. A contender that fails is reported as failed; the run
still writes its results, exits 0 and stops every process it started.

Usage: python bench/llm_overhead.py [-n 300] [--warmup 30] [--concurrency 16] [--requests 800]
Writes bench/results/llm_overhead.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol

import grpc
import httpx
import numpy as np
import yaml

from nexus.api.llm.v1 import llm_service_pb2 as pb
from nexus.api.llm.v1 import llm_service_pb2_grpc as pb_grpc
from nexus.common.auth import open_key_store
from nexus.common.launcher import Child, Platform
from nexus.common.natsserver import free_port
from nexus.common.settings import NexusSettings
from nexus.llm._litellm import litellm

RESULTS = Path(__file__).resolve().parent / "results" / "llm_overhead.json"
UPSTREAM_SCRIPT = Path(__file__).resolve().parent / "llm_upstream.py"
MODEL = "bench-model"
UPSTREAM_KEY = "sk-bench"
SYSTEM = "You are a helpful assistant. Answer in one sentence."
CONTENDERS = ("direct", "upstream", "nexus", "proxy")
AIM_ADDED_P50_MS = 2.0
AIM_CACHE_HIT_MS = 3.0
LOG_TAIL_CHARS = 1_500


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
        return Child(name, port, proc.process, proc.log_path)

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
    """What one contender measured (times in ms); `error` says why the rest is missing."""

    label: str
    unary_ms: dict[str, float] | None = None
    ttft_ms: dict[str, float] | None = None
    cache_hit_ms: dict[str, float] | None = None
    cache_hit_ratio: float | None = None
    cache_flag_ratio: float | None = None
    throughput_rps: float | None = None
    note: str = ""
    error: str = ""


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


class Bench:
    """Runs the measurements of one contender after another with the same settings."""

    def __init__(self, args: argparse.Namespace, upstream: Upstream) -> None:
        self.args, self.upstream = args, upstream
        self.run_id = uuid.uuid4().hex[:12]
        self.texts = (
            f"Question {i} of run {self.run_id}: why is the sky blue?" for i in itertools.count()
        )

    async def measure(self, target: Target, out: Measured) -> None:
        """Unary latency, TTFT, cache hits and throughput of `target`, into `out` as it goes."""
        n, warmup = self.args.n, self.args.warmup
        for _ in range(warmup):
            await target.unary(next(self.texts))
        out.unary_ms = stats_ms(
            [await timed(lambda: target.unary(next(self.texts))) for _ in range(n)]
        )
        for _ in range(warmup):
            await target.stream(next(self.texts))
        out.ttft_ms = stats_ms([await target.stream(next(self.texts)) for _ in range(n)])
        if target.has_cache:
            await self.cache_hits(target, out)
        if self.args.concurrency > 0:
            out.throughput_rps = await self.throughput(target)

    async def cache_hits(self, target: Target, out: Measured) -> None:
        """The same request repeated: latency, and how many never reached the upstream."""
        text = f"The cached question of {out.label} in run {self.run_id}."
        for _ in range(max(self.args.warmup, 1)):
            await target.unary(text)
        before = await self.upstream.served()
        flags: list[bool | None] = []
        samples: list[float] = []
        for _ in range(self.args.n):
            started = time.perf_counter()
            flags.append(await target.unary(text))
            samples.append(time.perf_counter() - started)
        reached = await self.upstream.served() - before
        out.cache_hit_ms = stats_ms(samples)
        out.cache_hit_ratio = 1.0 - reached / self.args.n
        if flags[0] is not None:
            out.cache_flag_ratio = sum(1 for f in flags if f) / len(flags)
        if out.cache_hit_ratio < 0.99:
            out.note = f"cache: only {out.cache_hit_ratio:.0%} of repeats were served from cache"

    async def throughput(self, target: Target) -> float:
        """Requests/s of unique unary requests, `--concurrency` in flight."""
        await asyncio.gather(
            *(target.unary(next(self.texts)) for _ in range(self.args.concurrency))
        )
        todo = iter(range(self.args.requests))

        async def worker() -> None:
            for _ in todo:
                await target.unary(next(self.texts))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(self.args.concurrency)))
        return float(self.args.requests) / (time.perf_counter() - started)

    async def unary(self, target: Target, out: Measured) -> None:
        """Unary latency only (the baseline again at the end: how much the machine drifted)."""
        for _ in range(self.args.warmup):
            await target.unary(next(self.texts))
        samples = [await timed(lambda: target.unary(next(self.texts))) for _ in range(self.args.n)]
        out.unary_ms = stats_ms(samples)

    async def safely(self, target: Target, out: Measured, *, unary_only: bool = False) -> Measured:
        """`measure` (or `unary`), with a failure recorded in `out` rather than raised."""
        try:
            await (self.unary if unary_only else self.measure)(target, out)
        except Exception as err:  # one failed contender must not end the run
            out.error = f"{type(err).__name__}: {err}"
        return out


# --- contenders' set-up ----------------------------------------------------------------------


def model_list(upstream_url: str) -> list[dict[str, Any]]:
    """The one deployment, for the llm service and the LiteLLM proxy alike."""
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


async def nexus(
    bench: Bench, http: httpx.AsyncClient, upstream_url: str, tmp: Path
) -> list[Measured]:
    """The platform (NATS, llm service, gateway), measured on both HTTP surfaces and on gRPC
    without the gateway, then stopped."""
    rows = [Measured("nexus-openai"), Measured("nexus-native"), Measured("nexus-grpc")]
    config = tmp / "nexus-llm.yaml"
    config.write_text(yaml.safe_dump({"model_list": model_list(upstream_url)}))
    env = {"NEXUS_LLM_CONFIG_PATH": str(config), "BENCH_UPSTREAM_KEY": UPSTREAM_KEY}
    platform = BenchPlatform(
        tmp / "nexus", nats_port=0, gateway_port=0, services=["llm"], extra_env=env
    )
    try:
        nats_url = platform.start_nats()
        await platform.start_services()
        await platform.start_gateway()
        key = await admin_key(nats_url)
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        url = platform.gateway_url
        surface = OpenAITarget(http, f"{url}/v1", headers, cache_header="x-nexus-cached")
        await bench.safely(surface, rows[0])
        await bench.safely(NativeTarget(http, url, headers), rows[1])
        async with grpc.aio.insecure_channel(f"127.0.0.1:{platform.children[0].port}") as channel:
            await bench.safely(GrpcTarget(pb_grpc.LlmServiceStub(channel), key), rows[2])
    except Exception as err:  # the platform did not start: say why, go on
        rows[0].error = f"the platform did not start: {type(err).__name__}: {err}"
        for row in rows[1:]:
            row.error = "the platform did not start (see nexus-openai)"
    finally:
        failed = [row for row in rows if row.error]
        dead = [c.name for c in platform.dead_children()]
        tails = platform.log_tails() if failed else ""
        platform.stop()
    if failed:
        exited = f" (exited: {', '.join(dead)})" if dead else ""
        failed[0].error += f"{exited}\n{tails}"
    return rows


async def proxy(bench: Bench, http: httpx.AsyncClient, upstream_url: str, tmp: Path) -> Measured:
    """The LiteLLM proxy in a subprocess (local cache, no database, no master key), measured."""
    row = Measured("litellm-proxy")
    binary = Path(sys.executable).parent / "litellm"
    if not binary.exists() and not shutil.which("litellm"):
        row.error = "the litellm CLI is not installed (`make bench` installs the bench group)"
        return row
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
    command = [
        str(binary if binary.exists() else shutil.which("litellm")),
        *("--config", str(config), "--host", "127.0.0.1", "--port", str(port)),
    ]
    child = spawn("litellm-proxy", command, env, tmp / "logs")
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_http(child, f"{base}/health/liveliness", timeout_s=120)
        target = OpenAITarget(http, f"{base}/v1", {"Content-Type": "application/json"})
        await bench.safely(target, row)
    except Exception as err:  # the proxy did not start: say why, go on
        row.error = f"{type(err).__name__}: {err}"
    finally:
        stop_process(child.process)
    if row.error:
        row.error += f"\n{child.log_tail()}"
    return row


async def run(args: argparse.Namespace) -> list[Measured]:
    """Starts the upstream, measures every contender in turn, stops everything."""
    rows: list[Measured] = []
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
            async with httpx.AsyncClient(timeout=30.0, limits=limits) as http:
                bench = Bench(args, Upstream(http, upstream_url))
                direct = DirectTarget(f"{upstream_url}/v1")
                if "direct" not in args.skip:
                    rows.append(await bench.safely(direct, Measured("direct")))
                if "upstream" not in args.skip:
                    raw = OpenAITarget(http, f"{upstream_url}/v1", {}, has_cache=False)
                    rows.append(await bench.safely(raw, Measured("upstream")))
                if "nexus" not in args.skip:
                    rows.extend(await nexus(bench, http, upstream_url, tmp))
                if "proxy" not in args.skip:
                    rows.append(await proxy(bench, http, upstream_url, tmp))
                if "direct" not in args.skip:
                    again = Measured("direct-again")
                    rows.append(await bench.safely(direct, again, unary_only=True))
        finally:
            stop_process(server.process)
    return rows


# --- report ----------------------------------------------------------------------------------

LABELS = {
    "direct": "direct litellm.acompletion",
    "direct-again": "direct again (drift check)",
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


def print_table(rows: list[Measured], base: Measured | None, args: argparse.Namespace) -> None:
    """The table: one line per contender."""
    head = (
        f"{'contender':<28}{'p50':>8}{'p99':>8}{'+p50':>8}{'+p99':>8}{'x direct':>9}"
        f"{'TTFT50':>8}{'TTFT99':>8}{'hit p50':>9}{'hit p99':>9}{'hits':>6}"
        f"{'req/s':>8}"
    )
    print(
        f"n={args.n} after {args.warmup} warm-up, concurrency 1 for latency "
        + (
            f"({args.concurrency} in flight for req/s, {args.requests} requests), "
            if args.concurrency > 0
            else "(no req/s row), "
        )
        + f"{os.cpu_count()} cores, litellm {_version('litellm')}; times in ms"
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
            f"{_fmt(row.throughput_rps, '.0f'):>8}"
        )
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
        "concurrency": args.concurrency,
        "throughput_requests": args.requests,
        "cores": os.cpu_count(),
        "litellm": _version("litellm"),
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
    parser.add_argument("--concurrency", type=int, default=16, help="0: no throughput row")
    parser.add_argument("--requests", type=int, default=800, help="requests of the req/s row")
    parser.add_argument(
        "--skip",
        type=lambda s: set(filter(None, s.split(","))),
        default=set(),
        help=f"comma-separated contenders to leave out: {','.join(CONTENDERS)}",
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
