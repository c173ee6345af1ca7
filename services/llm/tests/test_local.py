"""Local models: the archive, loading (directory and real registry), generation, and the litellm
provider driven through a real litellm Router.

The model is the tiny one of `llm_testing` (built once per session, no download): greedy
decoding counts "one two three ...", and answers "bye" with "goodbye" and an end of sequence.
"""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from llm_testing import GOODBYE, GOODBYE_PROMPT, TINY_CONTEXT_WINDOW, build_tiny_model, counting
from nats.aio.client import Client

from nexus.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from nexus.common.events import EventBus
from nexus.common.registry import ModelRegistry
from nexus.llm._litellm import litellm
from nexus.llm.local import (
    CONTEXT_WINDOW_EXCEEDED,
    DEFAULT_MAX_TOKENS,
    FRAMEWORK,
    PROVIDER,
    LocalModel,
    LocalModels,
    LocalModelSpec,
    NexusLocalProvider,
    SamplingParams,
    local_model_id,
    pack_model_dir,
    register_provider,
    unpack_model,
)

HI = [{"role": "user", "content": "hello, how are you"}]
LONG = {"max_tokens": 480, "ignore_eos": True}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Runs torch on one thread here: a model this small gains nothing from threads, and on a
    busy 2-core machine OpenMP threads waiting on one another make each token 5-10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's directory."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny(tiny_dir: Path) -> LocalModel:
    """The tiny model, loaded once."""
    return LocalModel.load(tiny_dir, name="tiny", device="cpu")


@pytest.fixture
async def start_models(tiny_dir: Path, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Starts LocalModels serving the tiny model as "tiny" and registers the provider."""
    started: list[LocalModels] = []

    async def start(**options: Any) -> LocalModels:
        specs = [LocalModelSpec("tiny", path=tiny_dir)]
        models = LocalModels(
            specs, device="cpu", registry=None, cache_dir=tmp_path / "cache", **options
        )
        await models.start()
        register_provider(models)
        started.append(models)
        return models

    yield start
    for models in started:
        await models.stop()


@pytest.fixture
async def models(start_models: Callable[..., Any]) -> LocalModels:
    """Running local models with the provider registered."""
    return await start_models()  # type: ignore[no-any-return]


@pytest.fixture
def router(models: LocalModels) -> Any:
    """A litellm Router with one deployment on the local model."""
    return _router(models)


def _router(models: LocalModels, model: str = "tiny") -> Any:
    deployment = {"model_name": "tiny", "litellm_params": {"model": local_model_id(models, model)}}
    return litellm.Router(model_list=[deployment], num_retries=0)


def _generate(model: LocalModel, messages: list[dict[str, Any]], **params: Any) -> tuple[str, Any]:
    generation = model.generate(messages, params, threading.Event())
    return "".join(generation), generation


async def _until(condition: Callable[[], bool], timeout_s: float = 3.0) -> None:
    """Waits until `condition()` holds (polling: the counters are plain numbers)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.002)


async def _settled(model: LocalModel) -> None:
    """Waits until no generation runs on `model`."""
    await _until(lambda: model.active_generations == 0)


# The archive.


def _tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buffer.getvalue()


def _file(name: str, data: bytes = b"{}") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, b""


BASE = (_file("config.json"), _file("model.safetensors", b"weights"))


def test_pack_unpack_round_trip(tmp_path: Path) -> None:
    tiny_dir = build_tiny_model(tmp_path / "tiny")
    (tiny_dir / ".gitattributes").write_text("*.safetensors lfs")  # hidden: left out
    artifact = pack_model_dir(tiny_dir)
    dest = unpack_model(artifact, tmp_path / "unpacked")
    packed = {p.name for p in tiny_dir.iterdir() if not p.name.startswith(".")}
    assert {p.name for p in dest.iterdir()} == packed
    for name in packed:
        assert (dest / name).read_bytes() == (tiny_dir / name).read_bytes()
    assert {"config.json", "model.safetensors"} <= packed


@pytest.mark.parametrize(
    ("members", "complaint"),
    [
        ((*BASE, _file("/etc/evil.json")), "absolute"),
        ((*BASE, _file("../evil.json")), "leaves"),
        ((*BASE, _file("sub/../../evil.json")), "leaves"),
        ((*BASE, _link("tokenizer.json", "/etc/passwd")), "link"),
        ((*BASE, _link("tokenizer.json", "config.json", tarfile.LNKTYPE)), "link"),
        ((*BASE, _file("pytorch_model.bin", b"pickle")), "not an accepted"),
        ((*BASE, _file("weights.pkl", b"pickle")), "not an accepted"),
        ((*BASE, _file("modeling_evil.py", b"import os")), "not an accepted"),
        ((*BASE, _file("config.json")), "twice"),
        ((_file("model.safetensors"),), "no config.json"),
        ((_file("config.json"),), "no .safetensors"),
    ],
)
def test_unpack_refuses_unsafe_archives(
    members: tuple[tuple[tarfile.TarInfo, bytes], ...], complaint: str, tmp_path: Path
) -> None:
    with pytest.raises(InvalidArgument, match=complaint):
        unpack_model(_tar(*members), tmp_path / "dest")
    assert not (tmp_path / "dest").exists()  # nothing half-unpacked is left
    assert not (tmp_path.parent / "evil.json").exists()


def test_unpack_refuses_garbage_and_used_destinations(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="not a model archive"):
        unpack_model(b"not a tar at all", tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.json").write_text("{}")
    with pytest.raises(InvalidArgument, match="not an empty directory"):
        unpack_model(_tar(*BASE), tmp_path / "b")


def test_unpack_size_limits(tmp_path: Path) -> None:
    big = _tar(_file("config.json"), _file("model.safetensors", b"x" * 10_000))
    with pytest.raises(ResourceExhausted, match=r"model\.safetensors"):
        unpack_model(big, tmp_path / "a", max_bytes=5_000)
    many = _tar(*BASE, *(_file(f"extra{i}.json") for i in range(10)))
    with pytest.raises(ResourceExhausted, match="archive"):
        unpack_model(many, tmp_path / "b", max_members=5)
    assert unpack_model(many, tmp_path / "c", max_members=12).is_dir()


def test_pack_refuses_pickles_links_and_incomplete_dirs(tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="not a directory"):
        pack_model_dir(tmp_path / "missing")
    pickled = tmp_path / "pickled"
    build_tiny_model(pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(InvalidArgument, match=r"pytorch_model\.bin"):
        pack_model_dir(pickled)
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "config.json").symlink_to(tiny_dir / "config.json")
    with pytest.raises(InvalidArgument, match="link"):
        pack_model_dir(linked)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidArgument, match=r"config\.json"):
        pack_model_dir(empty)


# Loading.


def test_load_from_a_directory(tiny: LocalModel, tiny_dir: Path) -> None:
    assert (tiny.name, tiny.device, tiny.context_window) == ("tiny", "cpu", TINY_CONTEXT_WINDOW)
    small = LocalModel.load(tiny_dir, name="small", device="auto", context_window=64)
    assert small.context_window == 64
    assert small.device in ("cpu", "cuda")


def test_load_refusals(tmp_path: Path, tiny_dir: Path) -> None:
    with pytest.raises(FailedPrecondition, match="cannot load"):
        LocalModel.load(tmp_path, name="nothing", device="cpu")
    with pytest.raises(InvalidArgument, match="device"):
        LocalModel.load(tiny_dir, name="tiny", device="tpu")
    with pytest.raises(InvalidArgument, match="context_window"):
        LocalModel.load(tiny_dir, name="tiny", device="cpu", context_window=-1)


def test_specs_are_checked(tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="exactly one"):
        LocalModelSpec("tiny", path=tiny_dir, registry_model="tiny")
    with pytest.raises(InvalidArgument, match="exactly one"):
        LocalModelSpec("tiny")
    with pytest.raises(InvalidArgument, match="must match"):
        LocalModelSpec("no/slashes", path=tiny_dir)
    twice = [LocalModelSpec("tiny", path=tiny_dir)] * 2
    with pytest.raises(InvalidArgument, match="unique"):
        LocalModels(twice, device="cpu", registry=None, cache_dir=tmp_path)
    remote = [LocalModelSpec("tiny", registry_model="tiny")]
    with pytest.raises(FailedPrecondition, match="registry"):
        LocalModels(remote, device="cpu", registry=None, cache_dir=tmp_path)
    specs = [LocalModelSpec("tiny", path=tiny_dir)]
    for bad in ({"max_concurrency": 0}, {"stall_timeout_s": 0.0}):
        with pytest.raises(InvalidArgument, match=next(iter(bad))):
            LocalModels(specs, device="cpu", registry=None, cache_dir=tmp_path, **bad)


async def test_unknown_local_model_is_not_found(models: LocalModels) -> None:
    assert models.names() == ["tiny"]
    with pytest.raises(NotFound, match="local models: tiny"):
        models.get("huge")
    with pytest.raises(litellm.NotFoundError, match="huge"):
        await _router(models, "huge").acompletion(model="tiny", messages=HI)


async def test_load_from_the_registry_and_follow_promotions(
    nats_client: Client, tiny_dir: Path, tmp_path: Path
) -> None:
    registry = ModelRegistry(
        EventBus(nats_client, "test"), "llm", signing_key=b"", upload_frameworks=[FRAMEWORK]
    )
    await registry.start()
    name = f"tiny-{uuid.uuid4().hex[:8]}"
    artifact = pack_model_dir(tiny_dir)
    await registry.upload(name, artifact, framework=FRAMEWORK)
    await registry.promote(name, "1")
    specs = [LocalModelSpec("chat", registry_model=name)]
    models = LocalModels(specs, device="cpu", registry=registry, cache_dir=tmp_path)
    try:
        await models.start()
        assert models.version("chat") == "1"
        text, _ = _generate(models.get("chat"), HI, max_tokens=3)
        assert text == counting(3)
        assert len(list((tmp_path / name).iterdir())) == 1  # unpacked once, by version

        await registry.register(name, artifact, framework=FRAMEWORK)
        await registry.promote(name, "2")
        await _until(lambda: models.version("chat") == "2", timeout_s=10)
        assert _generate(models.get("chat"), HI, max_tokens=3)[0] == counting(3)
        await _until(lambda: [p.name[0] for p in (tmp_path / name).iterdir()] == ["2"])
    finally:
        await models.stop()
        await registry.stop()


async def test_registry_models_must_be_local_model_artifacts(
    nats_client: Client, tmp_path: Path
) -> None:
    registry = ModelRegistry(EventBus(nats_client, "test"), "llm", signing_key=b"")
    await registry.start()
    name = f"onnx-{uuid.uuid4().hex[:8]}"
    await registry.register(name, b"onnx bytes", framework="onnx")
    await registry.promote(name, "1")
    specs = [LocalModelSpec("chat", registry_model=name)]
    models = LocalModels(specs, device="cpu", registry=registry, cache_dir=tmp_path)
    try:
        with pytest.raises(FailedPrecondition, match="onnx"):
            await models.start()
        missing = [LocalModelSpec("chat", registry_model=f"missing-{uuid.uuid4().hex[:8]}")]
        with pytest.raises(NotFound):
            await LocalModels(missing, device="cpu", registry=registry, cache_dir=tmp_path).start()
    finally:
        await models.stop()
        await registry.stop()


# Generation.


def test_greedy_decoding_is_deterministic(tiny: LocalModel) -> None:
    first, generation = _generate(tiny, HI, max_tokens=12)
    assert first == counting(12)
    assert (generation.finish_reason, generation.completion_tokens) == ("length", 12)
    assert generation.prompt_tokens == tiny.count_tokens(HI)
    assert _generate(tiny, HI, max_tokens=12, temperature=0)[0] == first


def test_sampling_is_seeded_per_call(tiny: LocalModel) -> None:
    params = {"max_tokens": 10, "temperature": 2.0, "top_p": 0.95, "seed": 7}
    first, _ = _generate(tiny, HI, **params)
    assert _generate(tiny, HI, **params)[0] == first
    outputs = {_generate(tiny, HI, **{**params, "seed": seed})[0] for seed in range(4)}
    assert len(outputs) > 1  # temperature 2 over 4 seeds: not all the same


def test_top_p_zero_keeps_only_the_most_probable_token(tiny: LocalModel) -> None:
    """OpenAI takes top_p from 0 to 1: at 0, even a hot sampler is greedy."""
    text, _ = _generate(tiny, HI, max_tokens=10, temperature=2.0, top_p=0, seed=3)
    assert text == counting(10)


def test_penalties_are_accepted(tiny: LocalModel) -> None:
    text, generation = _generate(
        tiny, HI, max_tokens=8, presence_penalty=1.5, frequency_penalty=-0.5
    )
    assert generation.completion_tokens == 8
    assert text


@pytest.mark.parametrize(
    ("stop", "expected"),
    [
        ("five", "one two three four "),
        (["seven", "three"], "one two "),  # the earliest stop wins
        ("ur fi", "one two three fo"),  # across tokens
        ("two three", "one "),
    ],
)
def test_stop_strings_cut_the_output(tiny: LocalModel, stop: Any, expected: str) -> None:
    text, generation = _generate(tiny, HI, max_tokens=30, stop=stop)
    assert text == expected
    assert generation.finish_reason == "stop"


def test_stop_string_never_reached(tiny: LocalModel) -> None:
    text, generation = _generate(tiny, HI, max_tokens=6, stop=["eleven", "one two three x"])
    assert (text, generation.finish_reason) == (counting(6), "length")


def test_end_of_sequence_and_its_overrides(tiny: LocalModel) -> None:
    bye = [{"role": "user", "content": GOODBYE_PROMPT}]
    text, generation = _generate(tiny, bye, max_tokens=20)
    assert (text, generation.finish_reason, generation.completion_tokens) == (GOODBYE, "stop", 2)
    for params in ({"ignore_eos": True}, {"min_tokens": 6}):
        _, generation = _generate(tiny, bye, max_tokens=6, **params)
        assert (generation.finish_reason, generation.completion_tokens) == ("length", 6)


def test_max_tokens_is_capped_by_the_context_window(tiny_dir: Path) -> None:
    small = LocalModel.load(tiny_dir, name="small", device="cpu", context_window=24)
    prompt = small.count_tokens(HI)
    text, generation = _generate(small, HI, max_tokens=1000)
    assert generation.completion_tokens == 24 - prompt
    assert generation.finish_reason == "length"
    assert text == counting(24 - prompt)
    long = [{"role": "user", "content": "hello " * 30}]
    with pytest.raises(ResourceExhausted, match="at most 23") as caught:
        small.generate(long, {}, threading.Event())
    assert caught.value.reason == CONTEXT_WINDOW_EXCEEDED


def test_default_max_tokens() -> None:
    assert SamplingParams.from_params({}).max_tokens == DEFAULT_MAX_TOKENS == 256
    assert SamplingParams.from_params({"max_completion_tokens": 9}).max_tokens == 9
    assert SamplingParams.from_params({"max_tokens": 8.0}).max_tokens == 8


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "ten"}, "max_tokens"),
        ({"max_completion_tokens": True}, "max_tokens"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": -0.1}, "top_p"),
        ({"seed": "7"}, "seed"),
        ({"seed": 2**70}, "seed"),
        ({"stop": [""]}, "stop[0]"),
        ({"stop": ["x"] * 17}, "stop"),
        ({"stop": "x" * 257}, "stop[0]"),
        ({"stop": 5}, "stop"),
        ({"n": 2}, "n"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"ignore_eos": "yes"}, "ignore_eos"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"tools": "all of them"}, "tools"),
    ],
)
def test_parameters_are_checked(tiny: LocalModel, params: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        tiny.generate(HI, params, threading.Event())
    assert caught.value.violations[0].field == field


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        ([], "messages"),
        (["hello"], "messages[0]"),
        ([{"role": "wizard", "content": "hi"}], "messages[0].role"),
        ([{"role": "user", "content": 5}], "messages[0].content"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            "messages[0].content[0]",
        ),
    ],
)
def test_messages_are_checked(tiny: LocalModel, messages: list[Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        tiny.count_tokens(messages)
    assert caught.value.violations[0].field == field


def test_rendering_and_token_counts(tiny: LocalModel) -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "hello, how are you"}]}]
    assert tiny.render(parts) == tiny.render(HI)
    tools = [{"type": "function", "function": {"name": "add", "parameters": {}}}]
    assert tiny.count_tokens(HI, tools) > tiny.count_tokens(HI)  # the template shows tools
    longer = [*HI, {"role": "assistant", "content": "one two"}, {"role": "user", "content": "ok"}]
    assert tiny.count_tokens(longer) > tiny.count_tokens(HI)


def test_fallback_template_without_a_chat_template(tiny_dir: Path, tmp_path: Path) -> None:
    plain = build_tiny_model(tmp_path / "plain")
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    config_path = plain / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config))
    model = LocalModel.load(plain, name="plain", device="cpu")
    ids = model.render([{"role": "system", "content": "be brief"}, *HI])
    text = model._tokenizer.decode(ids)
    assert text == "<|bos|>system: be brief\nuser: hello, how are you\nassistant:"


def test_multibyte_characters_are_never_split(tiny: LocalModel) -> None:
    from nexus.llm.local.model import _Detokenizer

    text = "Zürich, 東京 ✓ 🙂 done"
    ids = tiny._tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text)  # byte-level: characters span tokens
    detokenizer = _Detokenizer(tiny, [])
    pieces = [detokenizer.add(token) for token in ids]
    pieces.append(detokenizer.flush())
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)


def test_cancel_event_stops_a_generation(tiny: LocalModel) -> None:
    cancel = threading.Event()
    generation = tiny.generate(HI, LONG, cancel)
    pieces = []
    for piece in generation:
        pieces.append(piece)
        if len(pieces) == 3:
            cancel.set()
    assert generation.finish_reason == "cancelled"
    assert len(pieces) == 3
    assert tiny.active_generations == 0


def test_a_closed_model_refuses_and_stops(tiny_dir: Path) -> None:
    model = LocalModel.load(tiny_dir, name="closing", device="cpu")
    generation = model.generate(HI, LONG, threading.Event())
    assert next(generation) == "one"
    model.close()
    assert list(generation) == []
    assert generation.finish_reason == "cancelled"
    with pytest.raises(Unavailable):
        model.generate(HI, {}, threading.Event())


# The litellm provider, through a Router.


async def test_router_completion(router: Any, models: LocalModels) -> None:
    response = await router.acompletion(model="tiny", messages=HI, max_tokens=5)
    choice = response.choices[0]
    assert (choice.message.content, choice.message.role) == (counting(5), "assistant")
    assert choice.finish_reason == "length"
    prompt = models.get("tiny").count_tokens(HI)
    usage = response.usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (prompt, 5)
    assert usage.total_tokens == prompt + 5
    bye = [{"role": "user", "content": GOODBYE_PROMPT}]
    response = await router.acompletion(model="tiny", messages=bye)
    assert (response.choices[0].message.content, response.choices[0].finish_reason) == (
        GOODBYE,
        "stop",
    )


async def test_router_stream_with_usage(router: Any, models: LocalModels) -> None:
    stream = await router.acompletion(
        model="tiny",
        messages=HI,
        max_tokens=6,
        stop=["six"],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three four five "
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert [f for f in finishes if f] == ["stop"]
    usage = chunks[-1].usage  # the last chunk: usage only
    assert usage.prompt_tokens == models.get("tiny").count_tokens(HI)
    assert usage.completion_tokens == 6


async def test_concurrent_streams(router: Any) -> None:
    async def text(max_tokens: int) -> str:
        stream = await router.acompletion(
            model="tiny", messages=HI, max_tokens=max_tokens, stream=True
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream])

    sizes = [12, 7, 20, 3, 9]  # more than the 4 worker threads: the fifth waits its turn
    assert await asyncio.gather(*map(text, sizes)) == [counting(n) for n in sizes]


async def test_router_stream_keeps_usage_without_include_usage(router: Any) -> None:
    stream = await router.acompletion(model="tiny", messages=HI, max_tokens=4, stream=True)
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == counting(4)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1]._hidden_params["usage"].completion_tokens == 4


async def test_json_mode_and_tools_do_not_fail(router: Any) -> None:
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    response = await router.acompletion(
        model="tiny",
        messages=HI,
        max_tokens=3,
        response_format={"type": "json_object"},
        tools=tools,
    )
    assert response.choices[0].message.content == counting(3)  # not JSON: a tiny model can't
    assert not response.choices[0].message.tool_calls


async def test_router_errors(router: Any) -> None:
    with pytest.raises(litellm.BadRequestError, match="temperature"):
        await router.acompletion(model="tiny", messages=HI, temperature=5)
    long = [{"role": "user", "content": "hello " * 600}]
    with pytest.raises(litellm.ContextWindowExceededError):
        await router.acompletion(model="tiny", messages=long, stream=True)
    with pytest.raises(litellm.ContextWindowExceededError) as caught:
        await router.acompletion(model="tiny", messages=long)
    assert isinstance(caught.value.__cause__, ResourceExhausted)


@pytest.mark.parametrize("how", ["cancel the reader", "close the stream"])
async def test_stream_cancellation_stops_generation(
    router: Any, models: LocalModels, how: str
) -> None:
    model = models.get("tiny")
    before = model.tokens_generated
    stream = await router.acompletion(model="tiny", messages=HI, stream=True, **LONG)
    chunks: list[Any] = []
    reader = asyncio.create_task(_consume(stream, chunks))
    await _until(lambda: len(chunks) >= 5)
    assert model.active_generations == 1
    reader.cancel()
    if how == "close the stream":
        await asyncio.gather(reader, return_exceptions=True)
        await stream.aclose()
    await _settled(model)
    generated = model.tokens_generated - before
    await asyncio.sleep(0.2)
    assert model.tokens_generated - before == generated  # no longer growing
    assert generated < 100  # of the 480 asked for


async def _consume(stream: Any, chunks: list[Any]) -> None:
    async for chunk in stream:
        chunks.append(chunk)


async def test_a_stalled_reader_loses_its_stream(start_models: Callable[..., Any]) -> None:
    models = await start_models(stall_timeout_s=0.3)
    model = models.get("tiny")
    stream = await _router(models).acompletion(model="tiny", messages=HI, stream=True, **LONG)
    first = await stream.__anext__()
    assert first.choices[0].delta.content == "one"
    await _settled(model)  # nobody read for 0.3 s: the worker stopped
    with pytest.raises(litellm.Timeout):
        async for _ in stream:
            pass


async def test_unary_cancellation_and_timeout_stop_generation(
    router: Any, models: LocalModels
) -> None:
    model = models.get("tiny")
    call = asyncio.create_task(router.acompletion(model="tiny", messages=HI, **LONG))
    await _until(lambda: model.active_generations == 1)
    call.cancel()
    await _settled(model)
    before = model.tokens_generated
    with pytest.raises(litellm.Timeout):
        await router.acompletion(model="tiny", messages=HI, timeout=0.05, **LONG)
    await _settled(model)
    assert model.tokens_generated - before < 480


async def test_stopping_the_models_ends_running_streams(start_models: Callable[..., Any]) -> None:
    models = await start_models()
    model = models.get("tiny")
    stream = await _router(models).acompletion(model="tiny", messages=HI, stream=True, **LONG)
    await stream.__anext__()
    await models.stop()
    assert model.active_generations == 0
    with pytest.raises(litellm.ServiceUnavailableError):
        async for _ in stream:
            pass


async def test_waiting_calls_fail_when_the_models_stop(start_models: Callable[..., Any]) -> None:
    models = await start_models(max_concurrency=1)
    stream = await _router(models).acompletion(model="tiny", messages=HI, stream=True, **LONG)
    await stream.__anext__()  # the one worker thread is now busy with this stream
    waiting = asyncio.create_task(_router(models).acompletion(model="tiny", messages=HI))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await models.stop()
    with pytest.raises(litellm.ServiceUnavailableError, match="stopped"):
        await waiting
    with pytest.raises(litellm.ServiceUnavailableError, match="unloaded"):
        async for _ in stream:
            pass


def test_synchronous_litellm_calls(models: LocalModels) -> None:
    response = litellm.completion(model=local_model_id(models, "tiny"), messages=HI, max_tokens=3)
    assert response.choices[0].message.content == counting(3)
    assert response.usage.completion_tokens == 3
    stream = litellm.completion(
        model=local_model_id(models, "tiny"), messages=HI, max_tokens=3, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream) == counting(3)


async def test_register_provider_replaces_the_handler(models: LocalModels) -> None:
    register_provider(models)
    register_provider(models)
    handlers = [p for p in litellm.custom_provider_map if p["provider"] == PROVIDER]
    assert len(handlers) == 1
    assert isinstance(handlers[0]["custom_handler"], NexusLocalProvider)
    response = await _router(models).acompletion(model="tiny", messages=HI, max_tokens=2)
    assert response.choices[0].message.content == counting(2)
    info = litellm.get_model_info(local_model_id(models, "tiny"))
    assert info["max_input_tokens"] == TINY_CONTEXT_WINDOW - 1
    assert info["input_cost_per_token"] == info["output_cost_per_token"] == 0
