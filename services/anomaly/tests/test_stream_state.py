"""A source's streaming configuration and state, without a network: validation naming the field,
a saved state that resumes as if nothing had stopped, the record of learnt points."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nexus.anomaly.detectors.online import (
    DEFAULT_KIND,
    DEFAULT_SUPPRESS,
    DEFAULT_THRESHOLD,
    MAX_STATE_BYTES,
    OnlineVerdict,
    TailsAndContext,
    WindowedGaussian,
)
from nexus.anomaly.streamconfig import (
    StreamingConfig,
    config_from_json,
    default_config,
    streaming_config,
)
from nexus.anomaly.streamstate import SourceStream, StateLimits
from nexus.common.errors import InvalidArgument

KIND = WindowedGaussian.KIND
LIMITS = StateLimits(MAX_STATE_BYTES, 10_000)
"""What a KV value holds (NATS's default payload), and the service's default record."""


def series(n: int, seed: int = 0) -> list[list[float]]:
    """Two values per point, a spike every 40th."""
    rows = np.random.default_rng(seed).normal(size=(n, 2))
    rows[39::40] += 30.0
    return rows.tolist()


def config(**params: str) -> StreamingConfig:
    return streaming_config(KIND, {"window": "30", "step": "5", **params}, 0.99, 0)


def run(stream: SourceStream, rows: list[list[float]], first_seq: int = 1) -> list[OnlineVerdict]:
    return stream.apply([(first_seq + i, row) for i, row in enumerate(rows)])


@pytest.mark.parametrize(
    ("kind", "params", "threshold", "suppress", "field"),
    [
        ("no-such-kind", {}, None, None, "streaming.kind"),
        (KIND, {"window": "1"}, None, None, "streaming.parameters.window"),
        (KIND, {"window": "many"}, None, None, "streaming.parameters.window"),
        (KIND, {"nope": "1"}, None, None, "streaming.parameters.nope"),
        (KIND, {}, 0.0, None, "streaming.threshold"),
        (KIND, {}, 1.5, None, "streaming.threshold"),
        (KIND, {}, math.nan, None, "streaming.threshold"),
        (KIND, {}, None, -1, "streaming.suppress"),
        (KIND, {}, None, 10**7, "streaming.suppress"),
    ],
)
def test_a_bad_configuration_names_its_field(
    kind: str, params: dict[str, str], threshold: float | None, suppress: int | None, field: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        streaming_config(kind, params, threshold, suppress)
    assert [v.field for v in caught.value.violations] == [field]


def test_what_is_left_out_takes_the_defaults_and_a_stored_configuration_reads_back() -> None:
    chosen = streaming_config("", {}, None, None)
    assert (chosen.kind, chosen.threshold, chosen.suppress) == (
        DEFAULT_KIND,
        DEFAULT_THRESHOLD,
        DEFAULT_SUPPRESS,
    )
    assert chosen == default_config()
    assert chosen.detector_name == f"streaming:{DEFAULT_KIND}"
    stored = config(step="7")
    assert config_from_json(stored.to_json()) == stored


def test_the_model_is_the_kind_and_parsed_parameters_not_the_threshold() -> None:
    assert config().model == streaming_config(KIND, {"window": "30", "step": "5"}).model
    assert config().model != config(window="31").model
    assert config().model != streaming_config(KIND).model  # defaults are parameters too


def test_a_saved_state_resumes_as_an_uninterrupted_run() -> None:
    rows = series(200)
    whole = run(SourceStream("s", config(), limits=LIMITS), rows)
    first = SourceStream("s", config(), limits=LIMITS)
    before = run(first, rows[:90])
    resumed = SourceStream.decode("s", first.encode(), config(), revision=3, limits=LIMITS)
    after = run(resumed, rows[90:], first_seq=91)
    fresh = run(SourceStream("s", config(), limits=LIMITS), rows[90:], first_seq=91)
    assert before + after == whole
    assert after != fresh  # a fresh start would have answered otherwise
    assert resumed.revision == 3


def test_a_learnt_point_is_answered_from_the_record_and_not_learnt_again() -> None:
    rows = series(80)
    stream = SourceStream("s", config(), limits=LIMITS)
    verdicts = run(stream, rows)
    state = stream.detector.get_state()
    again = run(stream, rows[30:50], first_seq=31)  # redelivered: already learnt
    assert again == [OnlineVerdict(v.likelihood if v.is_anomaly else 0.0, v.is_anomaly, 0)
                     for v in verdicts[30:50]]  # fmt: skip
    assert all(np.array_equal(state[k], v) for k, v in stream.detector.get_state().items())
    assert any(v.is_anomaly for v in again)  # the spike at 40 is answered again


def test_the_record_forgets_below_the_ack_floor_and_past_its_size() -> None:
    stream = SourceStream("s", config(), limits=LIMITS)
    run(stream, series(50))
    stream.compact(ack_floor=20, max_recent=100)
    assert (stream.floor, min(stream.recent), len(stream.recent)) == (20, 21, 30)
    stream.compact(ack_floor=0, max_recent=10)
    assert (stream.floor, min(stream.recent), len(stream.recent)) == (40, 41, 10)
    assert stream.recorded(5) == OnlineVerdict(0.0, False, 0)  # at or below the floor: learnt
    assert stream.recorded(51) is None
    decoded = SourceStream.decode("s", stream.encode(), config(), revision=1, limits=LIMITS)
    assert (decoded.floor, list(decoded.recent)) == (stream.floor, list(stream.recent))
    assert [decoded.recorded(seq) for seq in stream.recent] == [
        stream.recorded(seq) for seq in stream.recent
    ]


def test_a_state_of_another_model_is_not_resumed_but_a_new_threshold_keeps_it() -> None:
    stream = SourceStream("s", config(), limits=LIMITS)
    run(stream, series(60))
    other = SourceStream.decode(
        "s", stream.encode(), config(window="31"), revision=9, limits=LIMITS
    )
    assert other.detector.get_state()["width"] == 0  # fresh
    assert (other.revision, other.floor, other.recent) == (9, 0, {})
    stricter = streaming_config(KIND, {"window": "30", "step": "5"}, 0.999, 2)
    kept = stream.configure(stricter)
    assert kept is stream
    assert (kept.detector.threshold, kept.detector.suppress) == (0.999, 2)
    assert kept.detector.get_state()["width"] == 2
    assert stream.configure(config(window="31")).detector.get_state()["width"] == 0


def test_a_state_that_is_not_one_is_refused() -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (numpy says why in its own words)
        SourceStream.decode("s", b"not an npz", config(), revision=1, limits=LIMITS)


@pytest.mark.parametrize(
    ("kind", "width", "points"), [(DEFAULT_KIND, 8, 14_000), ("context", 64, 1_500)]
)
def test_a_wide_source_state_fits_its_limit_at_every_batch_and_resumes_exactly(
    kind: str, width: int, points: int
) -> None:
    """Each value's detector once bounded only its own state, so a source's whole state (a
    detector per value and the record) outgrew a KV value: 8 values of the default detector
    after about 10,000 points, 64 context detectors after a few hundred; from then on nothing
    was saved. Now each value gets a share: well past those points, with the record full, every
    batch's state fits, uses most of the room, and resumes as if it had never stopped."""
    cfg = streaming_config(kind)
    rows = np.random.default_rng(width).normal(size=(points, width)).tolist()
    stream = SourceStream("s", cfg, limits=LIMITS)
    cut = points * 3 // 4
    largest = 0
    for start in range(0, cut, 1024):
        run(stream, rows[start : min(start + 1024, cut)], first_seq=start + 1)
        stream.compact(ack_floor=0, max_recent=LIMITS.max_recent)
        largest = max(largest, len(stream.encode()))
        assert largest <= LIMITS.bytes
    resumed = SourceStream.decode("s", stream.encode(), cfg, revision=1, limits=LIMITS)
    assert run(resumed, rows[cut:], first_seq=cut + 1) == run(stream, rows[cut:], cut + 1)
    stream.compact(ack_floor=0, max_recent=LIMITS.max_recent)
    resumed.compact(ack_floor=0, max_recent=LIMITS.max_recent)
    assert resumed.encode() == stream.encode()
    assert len(stream.encode()) <= LIMITS.bytes
    assert largest > LIMITS.bytes * 0.6  # the room is used (the learning buffer is reserved)


def test_a_single_value_source_keeps_the_whole_context_memory() -> None:
    """One value's detector gets (nearly) the whole budget: its 20,000 contexts, and so the
    same likelihoods as the detector alone (the NAB figures), on values that fill its memory."""
    cfg = default_config()
    source = cfg.source_detector(LIMITS.detector_budget(cfg))
    rng = np.random.default_rng(1)  # a range learnt, then 18 levels in any order: many contexts
    values = np.concatenate([rng.uniform(size=300), rng.uniform(-0.4, 1.4, size=25_000)])
    got = [v.likelihood for v in source.update_many(values[:, None])]
    assert got == TailsAndContext().update_many(values).tolist()
    assert len(source.get_state()["0.context/counts"]) == 20_000


def test_a_point_wider_than_a_state_can_hold_is_refused_naming_values() -> None:
    cfg = default_config()
    source = cfg.source_detector(LIMITS.detector_budget(cfg))
    most = source.max_width
    assert 8 <= most < 64  # the default detector's windows: 48 KB per value
    source.update([0.0] * most)
    with pytest.raises(InvalidArgument) as caught:
        source.update([0.0] * (most + 1))
    assert [v.field for v in caught.value.violations] == ["values"]
    context = streaming_config("context")
    assert context.source_detector(LIMITS.detector_budget(context)).max_width >= 64
    tiny = StateLimits(LIMITS.max_recent * 16, LIMITS.max_recent)  # the record takes it all
    assert cfg.source_detector(tiny.detector_budget(cfg)).max_width == 0


def test_a_state_saved_with_more_room_resumes_with_its_most_recent_contexts() -> None:
    """A state saved before a source's values shared the budget (or under a larger one) keeps
    the most recently seen contexts that fit, as its memory would have evicted the others."""
    cfg = streaming_config("context", {"learning": "20"})
    rows = np.random.default_rng(2).normal(size=(3_000, 4)).tolist()
    roomy = SourceStream("s", cfg, limits=LIMITS)
    run(roomy, rows)
    small = StateLimits(LIMITS.bytes // 8, 100)
    resumed = SourceStream.decode("s", roomy.encode(), cfg, revision=1, limits=small)
    run(resumed, rows[:500], first_seq=10_000)
    resumed.compact(ack_floor=0, max_recent=small.max_recent)
    assert len(resumed.encode()) <= small.bytes
