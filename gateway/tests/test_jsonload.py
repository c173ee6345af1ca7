"""The incremental loader reads every document as json.loads does, and refuses the same ones."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus.gateway.jsonload import IncrementalLoader


def _refuse(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


LOADER = IncrementalLoader(_refuse)

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=40,
)
layouts = st.sampled_from(
    [{}, {"indent": 2}, {"separators": (",", ":")}, {"indent": "\t", "separators": (" ,", " : ")}]
)


def _outcome(text: str | bytes) -> tuple[str, Any]:
    try:
        return "ok", json.loads(text, parse_constant=_refuse)
    except ValueError:
        return "refused", None


def _incremental(text: str | bytes) -> tuple[str, Any]:
    try:
        return "ok", LOADER.loads(text)
    except ValueError:
        return "refused", None


@settings(max_examples=300, deadline=None)
@given(values, layouts, st.sampled_from(["", " ", "\n\t "]))
def test_the_same_value_as_json_loads(value: Any, layout: dict[str, Any], pad: str) -> None:
    text = pad + json.dumps(value, **layout) + pad
    assert LOADER.loads(text) == json.loads(text)
    assert LOADER.loads(text.encode()) == json.loads(text.encode())
    assert LOADER.loads(text.encode("utf-16")) == json.loads(text.encode("utf-16"))


@settings(max_examples=500, deadline=None)
@given(
    values, st.integers(min_value=0), st.sampled_from(["", ",", "]", "}", ":", '"', "x", "[", "{"])
)
def test_the_same_documents_refused(value: Any, at: int, insert: str) -> None:
    text = json.dumps(value)
    at %= len(text) + 1
    for broken in (text[:at] + insert + text[at:], text[:at]):
        assert _incremental(broken) == _outcome(broken)


@pytest.mark.parametrize(
    "text",
    ['{"a": NaN}', "[Infinity]", "{} {}", "", "\ufeff{}", '{"a" 1}', "[1 2]", '{"a":1,}', "[1,]"],
)
def test_edge_cases_as_json_loads(text: str) -> None:
    assert _incremental(text) == _outcome(text)


def test_other_threads_run_while_a_large_document_is_parsed() -> None:
    text = json.dumps({"points": [{"values": [0.5, 1.5, 2.5]}] * 200_000})
    stop = threading.Event()
    ticks: list[float] = []

    def tick() -> None:
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    ticker = threading.Thread(target=tick)
    ticker.start()
    started = time.perf_counter()
    parsed = LOADER.loads(text)
    finished = time.perf_counter()
    stop.set()
    ticker.join()

    assert parsed == json.loads(text)
    # The ticker kept running during the parse (json.loads would hold it still throughout).
    assert sum(started < t < finished for t in ticks) >= 5
