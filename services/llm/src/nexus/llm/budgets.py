"""Per-key spending limits, enforced atomically across replicas.

A budget lives in the KV bucket `nexus_llm_budgets` under its key id (escaped by
`encode_token`): the limit, the period, what was spent in the current period and the
reservations of the calls in flight. Every change is a KV compare-and-set retried on conflict, so
the check and the reservation are one atomic step: concurrent calls, on any replica, can never
together reserve more than the limit.

A call goes: `reserve` an estimate (its prompt at the input price and its `max_tokens` at the
output price, `estimate_cost`) before the provider is called, refused with RESOURCE_EXHAUSTED
(reason `BUDGET_EXCEEDED`) when it does not fit; then `settle` with the actual cost, or `release`
when the call failed. Settling replaces the estimate by the actual cost, so spending may end a
little above the limit when an estimate was low (a provider that ignores `max_tokens`, a price
missing from the cost map); the next call is then refused.

A reservation that is never settled (its replica died mid-call) expires after
`reservation_ttl_s` and frees its amount. Amounts are integers of nano-dollars in KV, so sums are
exact whatever order replicas add them in.
"""

from __future__ import annotations

import asyncio
import enum
import json
import math
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from nexus.common.errors import Aborted, InvalidArgument, NotFound, ResourceExhausted
from nexus.common.kv import open_key_value
from nexus.llm.usage import check_key_id, encode_token

BUCKET = "nexus_llm_budgets"
"""The KV bucket of budgets."""
BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
"""The reason of the ResourceExhausted error of a call over its key's budget."""
MAX_LIMIT_USD = 1_000_000_000.0
"""Largest limit (and largest estimate or cost) in US dollars."""
MAX_RESERVATIONS = 10_000
"""Most calls of one key in flight at once while it has a budget."""
RESERVATION_TTL_S = 900.0
"""Default lifetime of a reservation that is neither settled nor released."""

_NANO = 1_000_000_000
_CAS_ATTEMPTS = 64
_MAX_VALUE_BYTES = 1024 * 1024


class BudgetPeriod(enum.Enum):
    """How often spending resets; the values are those of the proto enum
    `nexus.llm.v1.BudgetPeriod`."""

    UNSPECIFIED = 0
    """Never resets: a total limit."""
    TOTAL = 0  # noqa: PIE796 - an alias of UNSPECIFIED, the name this module's callers read
    DAILY = 1
    """Resets at 00:00 UTC."""
    MONTHLY = 2
    """Resets on the first of the month, 00:00 UTC."""


@dataclass(frozen=True)
class BudgetState:
    """A key's limit and what it spent in the current period.

    Attributes:
        api_key_id: The key.
        limit_usd: The limit in US dollars.
        period: How often spending resets.
        spent_usd: Spent in the current period by settled calls.
        reserved_usd: Reserved by calls in flight.
        period_start: Unix time the current period began (for a total limit: when the budget
            was set).
    """

    api_key_id: str
    limit_usd: float
    period: BudgetPeriod
    spent_usd: float
    reserved_usd: float
    period_start: float


@dataclass
class Reservation:
    """An amount held for one call until it is settled or released.

    Attributes:
        api_key_id: The key.
        reservation_id: Its id in the budget; "" when the key has no budget (nothing held).
        estimate_usd: The amount held.
    """

    api_key_id: str
    reservation_id: str = ""
    estimate_usd: float = 0.0
    done: bool = field(default=False, repr=False)
    """Settled or released: a second settle or release does nothing."""

    @property
    def active(self) -> bool:
        """Whether an amount is held (the key had a budget)."""
        return bool(self.reservation_id)


def estimate_cost(
    prompt_tokens: int,
    max_output_tokens: int,
    input_cost_per_token: float,
    output_cost_per_token: float,
) -> float:
    """The most a call can cost: its prompt at the input price and `max_output_tokens` at the
    output price.

    Raises:
        InvalidArgument: A negative count or a negative or non-finite price.
    """
    counts = {"prompt_tokens": prompt_tokens, "max_output_tokens": max_output_tokens}
    for name, count in counts.items():
        if count < 0:
            raise InvalidArgument.for_field(name, "must not be negative")
    prices = {"input_cost_per_token": input_cost_per_token}
    prices["output_cost_per_token"] = output_cost_per_token
    for name, price in prices.items():
        if not math.isfinite(price) or price < 0:
            raise InvalidArgument.for_field(name, "must be a finite amount >= 0")
    return prompt_tokens * input_cost_per_token + max_output_tokens * output_cost_per_token


def period_start(period: BudgetPeriod, now: float) -> float:
    """The start of the period of kind `period` that holds `now`: today 00:00 UTC, the first of
    this month 00:00 UTC, or `now` itself for a total limit (which never resets)."""
    moment = datetime.fromtimestamp(now, UTC)
    if period is BudgetPeriod.DAILY:
        moment = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    elif period is BudgetPeriod.MONTHLY:
        moment = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    else:
        return now
    return moment.timestamp()


def _check_period(period: BudgetPeriod | int) -> BudgetPeriod:
    try:
        return BudgetPeriod(period)
    except ValueError as err:
        raise InvalidArgument.for_field("period", f"unknown budget period {period!r}") from err


def _nano(usd: float) -> int:
    return round(usd * _NANO)


def _check_amount(name: str, usd: float, *, positive: bool = False) -> float:
    low = "> 0" if positive else ">= 0"
    if not math.isfinite(usd) or usd < 0 or (positive and usd == 0):
        raise InvalidArgument.for_field(name, f"must be a finite amount {low}")
    if usd > MAX_LIMIT_USD:
        raise InvalidArgument.for_field(name, f"must be at most {MAX_LIMIT_USD:.0f}")
    return usd


@dataclass
class _Record:
    """A budget as stored in KV: amounts in nano-dollars, reservations by id with their amount
    and expiry."""

    limit: int
    period: BudgetPeriod
    period_start: float
    spent: int = 0
    reservations: dict[str, tuple[int, float]] = field(default_factory=dict)

    @property
    def reserved(self) -> int:
        """What the calls in flight hold."""
        return sum(amount for amount, _ in self.reservations.values())

    def current(self, now: float) -> _Record:
        """This budget as of `now`: expired reservations dropped, and spending reset when a new
        period began (a clock behind another replica's never moves the period back)."""
        live = {k: v for k, v in self.reservations.items() if v[1] > now}
        start = period_start(self.period, now)
        if self.period is not BudgetPeriod.UNSPECIFIED and start > self.period_start:
            return _Record(self.limit, self.period, start, 0, live)
        return _Record(self.limit, self.period, self.period_start, self.spent, live)

    def state(self, api_key_id: str) -> BudgetState:
        """The public view."""
        return BudgetState(
            api_key_id=api_key_id,
            limit_usd=self.limit / _NANO,
            period=self.period,
            spent_usd=self.spent / _NANO,
            reserved_usd=self.reserved / _NANO,
            period_start=self.period_start,
        )

    def encode(self) -> bytes:
        """The JSON value stored in KV."""
        value: dict[str, Any] = {
            "limit_nano_usd": self.limit,
            "period": self.period.name,
            "period_start": self.period_start,
            "spent_nano_usd": self.spent,
            "reservations": {k: list(v) for k, v in self.reservations.items()},
        }
        return json.dumps(value, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, value: bytes) -> _Record:
        """Parses a stored value.

        Raises:
            ValueError: When it is not one `encode` made.
        """
        try:
            data = json.loads(value)
            reservations = {
                str(k): (int(amount), float(expiry))
                for k, (amount, expiry) in data["reservations"].items()
            }
            return cls(
                limit=int(data["limit_nano_usd"]),
                period=BudgetPeriod[data["period"]],
                period_start=float(data["period_start"]),
                spent=int(data["spent_nano_usd"]),
                reservations=reservations,
            )
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"malformed budget: {err!r}") from err


class BudgetStore:
    """Per-key spending limits in KV, checked and reserved atomically.

    Args:
        js: JetStream, for the bucket.
        clock: Unix time now (tests inject one to cross period boundaries).
        reservation_ttl_s: How long a reservation holds its amount when it is neither settled
            nor released (its replica died); longer than the longest call.
        bucket: The KV bucket (tests use their own).
    """

    def __init__(
        self,
        js: JetStreamContext,
        *,
        clock: Callable[[], float] = time.time,
        reservation_ttl_s: float = RESERVATION_TTL_S,
        bucket: str = BUCKET,
    ) -> None:
        if not reservation_ttl_s > 0:
            raise InvalidArgument.for_field("reservation_ttl_s", "must be > 0")
        self._js = js
        self._clock = clock
        self._ttl_s = reservation_ttl_s
        self._bucket_name = bucket
        self._kv: KeyValue | None = None
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self.conflicts = 0
        """Compare-and-set conflicts met (another replica wrote first), for tests and logs."""

    async def start(self) -> None:
        """Creates or binds the bucket."""
        config = api.KeyValueConfig(
            bucket=self._bucket_name,
            description="Nexus llm: spending limits per API key",
            history=1,
            max_value_size=_MAX_VALUE_BYTES,
            storage=api.StorageType.FILE,
        )
        self._kv = await open_key_value(self._js, config)

    async def set(self, api_key_id: str, limit_usd: float, period: BudgetPeriod) -> BudgetState:
        """Sets a key's limit and period.

        A new limit keeps what the current period spent and holds. A new period starts at the
        current start of that period (today, this month; now for a total limit) and carries the
        spending over until its next reset: changing the period never frees money.

        Raises:
            InvalidArgument: An empty or over-long key id, a limit that is not a finite amount
                > 0 (at most `MAX_LIMIT_USD`).
        """
        check_key_id(api_key_id)
        limit = _nano(_check_amount("limit_usd", limit_usd, positive=True))
        if limit == 0:
            raise InvalidArgument.for_field("limit_usd", "must be at least one nano-dollar")
        period = _check_period(period)

        def change(record: _Record | None, now: float) -> _Record:
            if record is None:
                return _Record(limit, period, period_start(period, now))
            if record.period is not period:
                start = period_start(period, now)
                return _Record(limit, period, start, record.spent, record.reservations)
            record.limit = limit
            return record

        record = await self._change(api_key_id, change, create=True)
        assert record is not None, "change() always returns a record"
        return record.state(api_key_id)

    async def get(self, api_key_id: str) -> BudgetState:
        """A key's budget as of now.

        Raises:
            InvalidArgument: A bad key id.
            NotFound: The key has no budget.
        """
        check_key_id(api_key_id)
        found = await self._read(api_key_id)
        if found is None:
            raise NotFound(f"API key {api_key_id!r} has no budget")
        return found[0].current(self._clock()).state(api_key_id)

    async def delete(self, api_key_id: str) -> None:
        """Removes a key's budget; its calls in flight settle into nothing.

        Raises:
            InvalidArgument: A bad key id.
            NotFound: The key has no budget.
        """
        check_key_id(api_key_id)
        if await self._read(api_key_id) is None:
            raise NotFound(f"API key {api_key_id!r} has no budget")
        await self._bucket().delete(encode_token(api_key_id))

    async def reserve(self, api_key_id: str, estimate_usd: float) -> Reservation:
        """Holds `estimate_usd` of a key's budget for one call, or refuses the call.

        A key without a budget gets an inactive reservation (nothing held). Else, in one atomic
        step: the period rolls over if it ended, and the call is refused when the period's
        spending already reached the limit or when spent + held + `estimate_usd` exceeds it;
        otherwise `estimate_usd` is held.

        Raises:
            InvalidArgument: A bad key id, an estimate that is not a finite amount >= 0.
            ResourceExhausted: Over budget, with reason `BUDGET_EXCEEDED`.
            Aborted: Too many concurrent changes (the client may retry).
        """
        check_key_id(api_key_id)
        estimate = _nano(_check_amount("estimate_usd", estimate_usd))
        reservation_id = uuid.uuid4().hex

        def hold(record: _Record | None, now: float) -> _Record | None:
            if record is None:
                return None
            _check_fits(api_key_id, record, estimate)
            if len(record.reservations) >= MAX_RESERVATIONS:
                what = f"calls in flight of API key {api_key_id}"
                size = len(record.reservations) + 1
                raise ResourceExhausted.too_large(what, size, MAX_RESERVATIONS)
            record.reservations[reservation_id] = (estimate, now + self._ttl_s)
            return record

        if await self._change(api_key_id, hold) is None:
            return Reservation(api_key_id)
        return Reservation(api_key_id, reservation_id, estimate / _NANO)

    async def settle(self, reservation: Reservation, actual_usd: float) -> None:
        """Replaces a call's reservation by its actual cost. Spending may end above the limit
        when the estimate was low. Does nothing for an inactive, settled or released
        reservation, or when the budget was deleted meanwhile; a reservation that expired is
        still charged.

        Raises:
            InvalidArgument: A cost that is not a finite amount >= 0.
            Aborted: Too many concurrent changes.
        """
        actual = _nano(_check_amount("actual_usd", actual_usd))
        await self._finish(reservation, actual)

    async def release(self, reservation: Reservation) -> None:
        """Frees a reservation without charging it (the call failed); as `settle` otherwise."""
        await self._finish(reservation, 0)

    async def _finish(self, reservation: Reservation, actual: int) -> None:
        if not reservation.active or reservation.done:
            return
        reservation.done = True

        def charge(record: _Record | None, now: float) -> _Record | None:
            if record is None:
                return None
            record.reservations.pop(reservation.reservation_id, None)
            record.spent += actual
            return record

        try:
            await self._change(reservation.api_key_id, charge)
        except BaseException:
            reservation.done = False  # may be tried again
            raise

    async def _change(
        self,
        api_key_id: str,
        change: Callable[[_Record | None, float], _Record | None],
        *,
        create: bool = False,
    ) -> _Record | None:
        """Applies `change` to the key's budget as of now with compare-and-set, retried on
        conflict; one change per key at a time in this process, so that only other replicas
        conflict (a key without a budget takes one read and no lock). `change` gets None when
        there is no budget and returns the new record, or None to write nothing; only with
        `create` may a budget be made.

        Returns:
            The record written, or None.
        """
        key = encode_token(api_key_id)
        found = await self._read(api_key_id)  # keys without a budget stop here, unserialized
        if found is None and not create:
            return None
        async with self._lock(api_key_id) as waited:
            for attempt in range(_CAS_ATTEMPTS):
                if attempt:
                    self.conflicts += 1
                    await asyncio.sleep(random.uniform(0, 0.002 * min(attempt, 10)))
                if attempt or waited:  # the first read is stale once another change ran
                    found = await self._read(api_key_id)
                now = self._clock()
                current = found[0].current(now) if found is not None else None
                new = change(current, now)
                if new is None or (found is None and not create):
                    return None
                try:
                    if found is None:
                        await self._bucket().create(key, new.encode())
                    else:
                        await self._bucket().update(key, new.encode(), last=found[1])
                except KeyWrongLastSequenceError:
                    continue
                return new
        raise Aborted(f"the budget of API key {api_key_id} keeps changing; try again")

    async def _read(self, api_key_id: str) -> tuple[_Record, int] | None:
        """The key's stored budget and its revision, or None."""
        try:
            entry = await self._bucket().get(encode_token(api_key_id))
        except KeyNotFoundError:  # deleted keys too
            return None
        if entry.value is None:
            return None
        return _Record.decode(entry.value), entry.revision or 0

    @asynccontextmanager
    async def _lock(self, api_key_id: str) -> AsyncIterator[bool]:
        """Serializes this process's changes of one key; the lock goes once nobody uses it.

        Yields:
            Whether another change held the lock when this one came.
        """
        lock, users = self._locks.get(api_key_id) or (asyncio.Lock(), 0)
        self._locks[api_key_id] = (lock, users + 1)
        waited = lock.locked()
        try:
            async with lock:
                yield waited
        finally:
            lock, users = self._locks[api_key_id]
            if users > 1:
                self._locks[api_key_id] = (lock, users - 1)
            else:
                del self._locks[api_key_id]

    def _bucket(self) -> KeyValue:
        assert self._kv is not None, "start() first"
        return self._kv


def _check_fits(api_key_id: str, record: _Record, estimate: int) -> None:
    """Raises ResourceExhausted (BUDGET_EXCEEDED) when `estimate` does not fit the budget."""
    spent, held, limit = record.spent, record.reserved, record.limit
    if spent < limit and spent + held + estimate <= limit:
        return
    period = record.period.name.lower() if record.period is not BudgetPeriod.UNSPECIFIED else ""
    raise ResourceExhausted(
        f"API key {api_key_id} is over its {period + ' ' if period else ''}budget of "
        f"${limit / _NANO:.6g}: spent ${spent / _NANO:.6g}, ${held / _NANO:.6g} held by calls "
        f"in flight, this call may cost ${estimate / _NANO:.6g}",
        reason=BUDGET_EXCEEDED,
    )
