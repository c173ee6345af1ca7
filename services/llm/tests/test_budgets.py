"""BudgetStore against a real nats-server: limits, reservations, refusals, atomicity across two
replicas, period rollover with an injected clock, expiry of lost reservations, validation."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from nats.aio.client import Client

from nexus.common.errors import REQUEST_TOO_LARGE, InvalidArgument, NotFound, ResourceExhausted
from nexus.common.nats import connect
from nexus.common.settings import NexusSettings
from nexus.llm import budgets
from nexus.llm.budgets import (
    BUDGET_EXCEEDED,
    MAX_LIMIT_USD,
    BudgetPeriod,
    BudgetState,
    BudgetStore,
    Reservation,
    estimate_cost,
    period_start,
)

pytestmark = pytest.mark.integration


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


class Clock:
    """Time that tests move by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def bucket() -> str:
    """A budgets bucket of this test's own."""
    return f"test_budgets_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def clock() -> Clock:
    return Clock(utc(2025, 3, 10, 12, 0))


@pytest.fixture
async def store(nats_client: Client, bucket: str, clock: Clock) -> AsyncIterator[BudgetStore]:
    store = BudgetStore(nats_client.jetstream(), clock=clock, reservation_ttl_s=60, bucket=bucket)
    await store.start()
    yield store
    await nats_client.jetstream().delete_key_value(bucket)


async def refused(store: BudgetStore, key: str, estimate: float) -> ResourceExhausted:
    with pytest.raises(ResourceExhausted) as caught:
        await store.reserve(key, estimate)
    assert caught.value.reason == BUDGET_EXCEEDED
    return caught.value


async def test_set_get_and_delete(store: BudgetStore, clock: Clock) -> None:
    with pytest.raises(NotFound):
        await store.get("team-a")
    state = await store.set("team-a", 5.0, BudgetPeriod.MONTHLY)
    assert state == BudgetState("team-a", 5.0, BudgetPeriod.MONTHLY, 0.0, 0.0, utc(2025, 3, 1))
    assert await store.get("team-a") == state

    reservation = await store.reserve("team-a", 1.0)
    await store.settle(reservation, 0.75)
    raised = await store.set("team-a", 10.0, BudgetPeriod.MONTHLY)  # keeps what was spent
    assert (raised.limit_usd, raised.spent_usd, raised.period_start) == (
        10.0,
        0.75,
        utc(2025, 3, 1),
    )

    await store.delete("team-a")
    with pytest.raises(NotFound):
        await store.get("team-a")
    with pytest.raises(NotFound):
        await store.delete("team-a")
    again = await store.set("team-a", 1.0, BudgetPeriod.TOTAL)  # over the delete marker
    assert (again.spent_usd, again.period, again.period_start) == (
        0.0,
        BudgetPeriod.TOTAL,
        clock.now,
    )
    assert BudgetPeriod["TOTAL"] is BudgetPeriod.UNSPECIFIED
    assert await store.set("odd/key id.é", 1.0, BudgetPeriod(1)) == BudgetState(
        "odd/key id.é", 1.0, BudgetPeriod.DAILY, 0.0, 0.0, utc(2025, 3, 10)
    )


async def test_reserve_settle_and_release(store: BudgetStore) -> None:
    await store.set("k", 1.0, BudgetPeriod.TOTAL)
    first = await store.reserve("k", 0.3)
    second = await store.reserve("k", 0.2)
    assert first.active
    assert first.estimate_usd == 0.3
    state = await store.get("k")
    assert (state.spent_usd, state.reserved_usd) == (0.0, 0.5)

    await store.settle(first, 0.25)
    state = await store.get("k")
    assert (state.spent_usd, state.reserved_usd) == (0.25, 0.2)
    await store.release(second)
    await store.settle(first, 0.25)  # a second settle or release does nothing
    await store.release(second)
    state = await store.get("k")
    assert (state.spent_usd, state.reserved_usd) == (0.25, 0.0)


async def test_a_key_without_budget_is_not_limited(store: BudgetStore) -> None:
    reservation = await store.reserve("free", 1e6)
    assert reservation == Reservation("free")
    assert not reservation.active
    await store.settle(reservation, 123.0)
    await store.release(reservation)
    with pytest.raises(NotFound):
        await store.get("free")  # nothing was written


async def test_calls_over_budget_are_refused_before_spending(store: BudgetStore) -> None:
    await store.set("k", 1.0, BudgetPeriod.DAILY)
    held = await store.reserve("k", 0.6)
    error = await refused(store, "k", 0.5)  # 0.6 held + 0.5 > 1.0
    assert "over its daily budget" in str(error)
    fits = await store.reserve("k", 0.4)  # up to the limit exactly
    await refused(store, "k", 0.01)
    await store.release(fits)

    await store.settle(held, 1.5)  # the estimate was low: spending goes over the limit
    state = await store.get("k")
    assert state.spent_usd == 1.5
    assert state.spent_usd > state.limit_usd
    await refused(store, "k", 0.0)  # spent >= limit: even a free call is refused


async def test_a_call_that_alone_exceeds_the_limit_is_refused(store: BudgetStore) -> None:
    await store.set("k", 0.01, BudgetPeriod.TOTAL)
    await refused(store, "k", 0.02)
    assert (await store.get("k")).reserved_usd == 0.0


async def test_concurrent_reservations_of_two_replicas_never_overspend(
    nexus_settings: NexusSettings, bucket: str, clock: Clock
) -> None:
    connections = [await connect(nexus_settings, f"replica-{n}") for n in range(2)]
    stores = [BudgetStore(nc.jetstream(), clock=clock, bucket=bucket) for nc in connections]
    try:
        for store in stores:
            await store.start()
        await stores[0].set("shared", 1.0, BudgetPeriod.DAILY)

        attempts = (stores[n % 2].reserve("shared", 0.1) for n in range(20))
        results = await asyncio.gather(*attempts, return_exceptions=True)
        granted = [r for r in results if isinstance(r, Reservation)]
        refusals = [r for r in results if isinstance(r, ResourceExhausted)]
        assert len(granted) == 10
        assert len(refusals) == 10
        assert {r.reason for r in refusals} == {BUDGET_EXCEEDED}
        assert sum(store.conflicts for store in stores) > 0, "the replicas never raced"
        assert (await stores[1].get("shared")).reserved_usd == pytest.approx(1.0)

        await asyncio.gather(*(stores[n % 2].settle(r, 0.1) for n, r in enumerate(granted)))
        state = await stores[0].get("shared")
        assert state.spent_usd == pytest.approx(1.0)
        assert state.reserved_usd == 0.0
        await refused(stores[1], "shared", 0.0)
    finally:
        await connections[0].jetstream().delete_key_value(bucket)
        for nc in connections:
            await nc.drain()


async def test_daily_budget_rolls_over_at_midnight_utc(store: BudgetStore, clock: Clock) -> None:
    clock.now = utc(2025, 3, 10, 23, 59, 30)
    await store.set("k", 1.0, BudgetPeriod.DAILY)
    in_flight = await store.reserve("k", 0.2)
    await store.settle(await store.reserve("k", 0.7), 0.7)
    await refused(store, "k", 0.2)

    clock.now = utc(2025, 3, 11, 0, 0, 1)
    state = await store.get("k")
    assert (state.spent_usd, state.reserved_usd, state.period_start) == (
        0.0,
        0.2,  # calls in flight keep their hold across the boundary
        utc(2025, 3, 11),
    )
    await store.settle(in_flight, 0.2)  # charged to the new day
    await store.reserve("k", 0.8)
    assert (await store.get("k")).spent_usd == pytest.approx(0.2)


async def test_monthly_budget_rolls_over_on_the_first(store: BudgetStore, clock: Clock) -> None:
    clock.now = utc(2025, 2, 1, 0, 0, 5)
    await store.set("k", 2.0, BudgetPeriod.MONTHLY)
    await store.settle(await store.reserve("k", 2.0), 2.0)
    await refused(store, "k", 0.0)
    clock.now = utc(2025, 2, 28, 23, 59, 59)
    assert (await store.get("k")).spent_usd == 2.0  # four weeks later, the same month
    clock.now = utc(2025, 3, 1, 0, 0)
    state = await store.get("k")
    assert (state.spent_usd, state.period_start) == (0.0, utc(2025, 3, 1))
    await store.reserve("k", 2.0)


async def test_a_total_budget_never_resets(store: BudgetStore, clock: Clock) -> None:
    await store.set("k", 1.0, BudgetPeriod.UNSPECIFIED)
    await store.settle(await store.reserve("k", 1.0), 1.0)
    clock.now += 400 * 86400.0
    await refused(store, "k", 0.0)
    assert (await store.get("k")).period_start == utc(2025, 3, 10, 12, 0)


async def test_a_new_period_carries_spending_over(store: BudgetStore, clock: Clock) -> None:
    await store.set("k", 10.0, BudgetPeriod.MONTHLY)
    await store.settle(await store.reserve("k", 3.0), 3.0)
    state = await store.set("k", 4.0, BudgetPeriod.DAILY)
    assert (state.spent_usd, state.period_start) == (3.0, utc(2025, 3, 10))
    await refused(store, "k", 1.5)
    clock.now = utc(2025, 3, 11, 1, 0)
    await store.reserve("k", 3.5)


async def test_lost_reservations_expire(store: BudgetStore, clock: Clock) -> None:
    await store.set("k", 1.0, BudgetPeriod.TOTAL)
    lost = await store.reserve("k", 0.9)  # its replica died: never settled
    await refused(store, "k", 0.5)
    clock.now += 61  # the store's reservation_ttl_s is 60
    assert (await store.get("k")).reserved_usd == 0.0
    await store.reserve("k", 0.5)
    await store.settle(lost, 0.1)  # settled late after all: still charged
    state = await store.get("k")
    assert (state.spent_usd, state.reserved_usd) == (0.1, 0.5)


async def test_deleting_a_budget_with_calls_in_flight(store: BudgetStore) -> None:
    await store.set("k", 1.0, BudgetPeriod.TOTAL)
    in_flight = await store.reserve("k", 0.5)
    await store.delete("k")
    await store.settle(in_flight, 0.5)  # settles into nothing
    with pytest.raises(NotFound):
        await store.get("k")


async def test_calls_in_flight_per_key_are_limited(
    store: BudgetStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(budgets, "MAX_RESERVATIONS", 2)
    await store.set("k", 1.0, BudgetPeriod.TOTAL)
    first, _ = await store.reserve("k", 0.1), await store.reserve("k", 0.1)
    with pytest.raises(ResourceExhausted, match="limit of 2") as caught:
        await store.reserve("k", 0.1)
    assert caught.value.reason == REQUEST_TOO_LARGE
    await store.release(first)
    await store.reserve("k", 0.1)


@pytest.mark.parametrize("limit", [0.0, -1.0, math.nan, math.inf, MAX_LIMIT_USD * 2, 1e-12])
async def test_set_validates_the_limit(store: BudgetStore, limit: float) -> None:
    with pytest.raises(InvalidArgument, match="limit_usd"):
        await store.set("k", limit, BudgetPeriod.DAILY)


async def test_inputs_are_validated(store: BudgetStore, nats_client: Client) -> None:
    for bad_key in ["", "k" * 129]:
        with pytest.raises(InvalidArgument, match="api_key_id"):
            await store.set(bad_key, 1.0, BudgetPeriod.DAILY)
        with pytest.raises(InvalidArgument, match="api_key_id"):
            await store.reserve(bad_key, 0.0)
        with pytest.raises(InvalidArgument, match="api_key_id"):
            await store.get(bad_key)
        with pytest.raises(InvalidArgument, match="api_key_id"):
            await store.delete(bad_key)
    await store.set("k" * 128, 1.0, BudgetPeriod.DAILY)
    with pytest.raises(InvalidArgument, match="period"):
        await store.set("k", 1.0, 7)  # type: ignore[arg-type]
    for bad in [-0.1, math.nan, math.inf]:
        with pytest.raises(InvalidArgument, match="estimate_usd"):
            await store.reserve("k", bad)
    reservation = await store.reserve("k" * 128, 0.1)
    with pytest.raises(InvalidArgument, match="actual_usd"):
        await store.settle(reservation, math.nan)
    await store.settle(reservation, 0.1)  # the failed settle left it open
    assert (await store.get("k" * 128)).spent_usd == pytest.approx(0.1)
    with pytest.raises(InvalidArgument, match="reservation_ttl_s"):
        BudgetStore(nats_client.jetstream(), reservation_ttl_s=0)


def test_estimate_cost() -> None:
    assert estimate_cost(1000, 500, 1e-6, 4e-6) == pytest.approx(0.003)
    assert estimate_cost(0, 0, 1e-6, 4e-6) == 0.0
    with pytest.raises(InvalidArgument, match="prompt_tokens"):
        estimate_cost(-1, 0, 0.0, 0.0)
    with pytest.raises(InvalidArgument, match="max_output_tokens"):
        estimate_cost(0, -1, 0.0, 0.0)
    with pytest.raises(InvalidArgument, match="input_cost_per_token"):
        estimate_cost(1, 1, math.nan, 0.0)
    with pytest.raises(InvalidArgument, match="output_cost_per_token"):
        estimate_cost(1, 1, 0.0, -1.0)


def test_period_start() -> None:
    now = utc(2024, 2, 29, 13, 45, 10)
    assert period_start(BudgetPeriod.DAILY, now) == utc(2024, 2, 29)
    assert period_start(BudgetPeriod.MONTHLY, now) == utc(2024, 2, 1)
    assert period_start(BudgetPeriod.UNSPECIFIED, now) == now
