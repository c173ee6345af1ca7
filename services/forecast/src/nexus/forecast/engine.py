"""The forecast service's work, free of gRPC: datasets, forecasts, backtests, fits, predictions.

Model work runs on the service's executor, a chunk of series at a time, never on the event loop.
A fit registers one version per fitted set (a signed pickle of per-series packed models); the
model runtime serves it, and a served set unpacks each series' model on first use.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

import numpy as np
import pandas as pd

from nexus.api.common.v1 import common_pb2
from nexus.api.forecast.v1 import events_pb2
from nexus.common.errors import InvalidArgument, NexusError, ResourceExhausted
from nexus.common.events import DAY_S, MIB, EventBus, Stream
from nexus.common.operations import NO_PROGRESS, Progress, current_operation
from nexus.common.registry import ModelRegistry, ModelVersionInfo, Resolved, Selector
from nexus.common.runtime import ModelRuntime, Served
from nexus.forecast import datasets
from nexus.forecast.charts import Chart, ChartSpec, Image, Line, render
from nexus.forecast.datasets import DatasetInfo, DatasetStore, Format, Limits
from nexus.forecast.forecasting import (
    ENSEMBLE,
    GLOBAL,
    Choice,
    Errors,
    FittedSeries,
    FittedSet,
    Forecast,
    Known,
    ModelKind,
    Plan,
    Prepared,
    Report,
    Series,
    SeriesOptions,
    applicable,
    backtest,
    check_fit_length,
    check_length,
    choose_and_fit,
    ensembles,
    fit_globals,
    fit_series,
    forecast_once,
    future_matrix,
    global_backtests,
    neural,
    prepare,
    report,
    tuning,
    uses_exogenous,
    window_forecasts,
)
from nexus.forecast.forecasting.prophet_model import ProphetOptions
from nexus.forecast.serving import FRAMEWORK, ServedSet
from nexus.forecast.settings import ForecastSettings

log = logging.getLogger(__name__)
T = TypeVar("T")
STREAM = Stream("FORECAST", ("nexus.forecast.>",), max_age_s=7 * DAY_S, max_bytes=256 * MIB)
FITTED = "nexus.forecast.fitted"
FORECASTED = "nexus.forecast.forecasted"
DEFAULT_LEVELS = (80.0, 95.0)
CHUNKS_PER_WORKER = 4
"""Series are handed to the executor in chunks: enough for progress and a prompt cancel."""


@dataclass(frozen=True)
class DataSpec:
    """Where a request's series are: inline, or a dataset (all of it, or some series)."""

    series: tuple[Series, ...] = ()
    dataset_id: str = ""
    series_ids: tuple[str, ...] = ()
    options: SeriesOptions = field(default_factory=SeriesOptions)


@dataclass(frozen=True)
class Job:
    """What to forecast, backtest or fit: the series, the horizon, levels, candidates, plan."""

    data: DataSpec
    horizon: int
    levels: tuple[float, ...] = ()
    models: tuple[ModelKind, ...] = ()
    windows: int = 3
    step: int = 0
    metric: str = "mase"
    params: Mapping[ModelKind, Mapping[str, float]] = field(default_factory=dict)
    """Learner parameters of the global models over their defaults."""
    prophet: ProphetOptions | None = None
    """Prophet's settings (None: its defaults)."""

    def plan(self) -> Plan:
        """The backtest plan."""
        return Plan(
            self.horizon,
            self.windows,
            self.step,
            self.levels,
            self.metric,
            self.params,
            self.prophet,
        )


@dataclass(frozen=True)
class FitSpec:
    """A fit: the job, the model name it registers under, an alias to promote."""

    name: str
    job: Job
    promote_to: str = ""
    description: str = ""


@dataclass(frozen=True)
class TuneSpec:
    """A hyperparameter search: the job (series, horizon, backtest), the model, the budget."""

    job: Job
    kind: ModelKind
    trials: int
    seconds: float
    seed: int = 0


@dataclass(frozen=True)
class Tuned:
    """A search's answer: the best parameters, their errors, the defaults' errors."""

    kind: ModelKind
    params: dict[str, float]
    errors: Errors
    defaults: Errors
    trials: int


@dataclass(frozen=True)
class SeriesResult:
    """One series' forecast: its model, timestamps and values."""

    series_id: str
    model: ModelKind
    index: pd.DatetimeIndex
    forecast: Forecast


@dataclass(frozen=True)
class Forecasted:
    """A Forecast call's answer: forecasts, and the choices when there were several
    candidates."""

    forecasts: list[SeriesResult]
    choices: list[Choice]


@dataclass(frozen=True)
class Fitted:
    """A fit's answer: the registered version and what the backtests found."""

    version: ModelVersionInfo
    report: Report


@dataclass(frozen=True)
class Predicted:
    """A Predict call's answer, with the version that served."""

    forecasts: list[SeriesResult]
    model: Resolved


@dataclass(frozen=True)
class PredictSpec:
    """A Predict call: series of a fitted set, horizon (0: the fit's), levels, futures."""

    name: str
    series_ids: tuple[str, ...]
    horizon: int = 0
    levels: tuple[float, ...] = ()
    futures: Mapping[str, Mapping[str, np.ndarray]] = field(default_factory=dict)
    selector: Selector = field(default_factory=Selector)


class ForecastEngine:
    """Datasets, forecasts, backtests, fits and predictions over the registry, the model
    runtime, the event bus and the service's executor."""

    def __init__(
        self,
        registry: ModelRegistry,
        store: DatasetStore,
        bus: EventBus,
        settings: ForecastSettings,
        executor: Executor,
    ) -> None:
        self.registry = registry
        self.datasets = store
        self.settings = settings
        self._bus = bus
        self._executor = executor
        neural.use_device(settings.neural_device)
        self.models = ModelRuntime(
            registry,
            lambda source: ServedSet(source, settings.series_cache_size),
            executor=executor,
            max_models=settings.model_cache_size,
            max_bytes=settings.model_cache_bytes,
            frameworks=[FRAMEWORK],
        )

    async def start(self) -> None:
        """Starts the dataset store, the FORECAST stream and the runtime."""
        await self.datasets.start()
        await self._bus.ensure_streams(STREAM)
        await self.models.start()

    async def warm(self) -> None:
        """Loads the fitted sets the aliases route to (before SERVING)."""
        await self.models.warm()

    async def stop(self) -> None:
        """Lets go of the loaded fitted sets."""
        await self.models.stop()

    # Datasets.

    def limits(self) -> Limits:
        """What one dataset may hold."""
        s = self.settings
        return Limits(
            s.max_dataset_bytes,
            s.max_series,
            s.max_points_per_series,
            s.max_total_points,
            s.max_exogenous,
        )

    async def upload_dataset(self, name: str, data: bytes, fmt: Format) -> DatasetInfo:
        """Checks a long-format file (on a worker) and stores it."""
        limits = self.limits()

        def checked() -> tuple[pd.DataFrame, bytes]:
            frame = datasets.parse(data, fmt, limits)
            return frame, datasets.to_parquet(frame)

        frame, payload = await self._run(checked)
        return await self.datasets.put(name, frame, payload)

    # Series.

    def check_job(self, job: Job, *, max_series: int) -> None:
        """Checks what can be checked before the data is read (at the start of an operation).

        Raises:
            InvalidArgument: No series or both kinds, a bad level, a horizon over the limit.
            ResourceExhausted: More inline series or points than allowed.
        """
        data = job.data
        if bool(data.series) == bool(data.dataset_id):
            raise InvalidArgument.for_field("data.series", "give either series or dataset_id")
        if data.series_ids and not data.dataset_id:
            raise InvalidArgument.for_field("data.series_ids", "names series of a dataset_id")
        check_levels(job.levels, "levels")
        if job.horizon > self.settings.max_horizon:
            raise InvalidArgument.for_field(
                "horizon", f"{job.horizon} steps; at most {self.settings.max_horizon}"
            )
        self._check_inline(data.series, max_series)

    def _check_inline(self, series: Sequence[Series], max_series: int) -> None:
        if len(series) > max_series:
            raise ResourceExhausted.too_large("data.series", len(series), max_series)
        ids = [s.id for s in series]
        if len(set(ids)) != len(ids):
            raise InvalidArgument.for_field("data.series", "series ids must be unique")
        total, most = 0, self.settings.max_points_per_series
        for s in series:
            if len(s.values) > most:
                raise ResourceExhausted.too_large(f"{s.field}.values", len(s.values), most)
            if len(s.exogenous) > self.settings.max_exogenous:
                raise ResourceExhausted.too_large(
                    f"{s.field}.exogenous", len(s.exogenous), self.settings.max_exogenous
                )
            total += len(s.values)
        if total > self.settings.max_total_points:
            raise ResourceExhausted.too_large(
                "data.series (points)", total, self.settings.max_total_points
            )

    async def series(self, job: Job, *, max_series: int) -> list[Prepared]:
        """The job's series, read and put on their grids (on a worker).

        Raises:
            NotFound: An unknown dataset, or a series the dataset does not hold.
            InvalidArgument, ResourceExhausted: See `check_job` and `prepare`.
        """
        self.check_job(job, max_series=max_series)
        data = job.data
        payload = await self.datasets.get(data.dataset_id) if data.dataset_id else b""
        limit = self.settings.max_missing_run

        def read() -> list[Prepared]:
            given = list(data.series)
            if data.dataset_id:
                frame = datasets.from_parquet(payload)
                given = datasets.to_series(frame, data.dataset_id, data.series_ids)
            self._check_inline(given, max_series)
            prepared = [prepare(s, data.options, limit) for s in given]
            for p in prepared:
                self._check_horizon(p, job.horizon)
            return prepared

        return await self._run(read)

    def _check_horizon(self, series: Prepared, horizon: int) -> None:
        if horizon > len(series.y):
            raise InvalidArgument.for_field(
                "horizon",
                f"{horizon} steps is longer than series {series.id!r} ({len(series.y)} values)",
            )

    # Forecasts and backtests, answered while the caller waits.

    async def forecast(self, job: Job) -> Forecasted:
        """Chooses a model per series (by backtest, when there are several candidates), fits it
        on the whole series and forecasts; a global model once for all series that won with
        it."""
        prepared = await self.series(job, max_series=self.settings.max_sync_series)
        forecasted = await self._forecast(job, prepared)
        await self._announce_forecast(common_pb2.ModelRef(), len(prepared), job)
        return forecasted

    async def _forecast(self, job: Job, prepared: list[Prepared]) -> Forecasted:
        plan = job.plan()
        kinds = {s.id: applicable(s, job.models, plan) for s in prepared}
        for s in prepared:
            _check_futures(s, kinds[s.id], job.horizon)
        several = [s for s in prepared if len(kinds[s.id]) > 1]
        known = await self._run(partial(global_backtests, several, kinds, plan))

        def choose(series: Prepared) -> Choice | None:
            ours = kinds[series.id]
            return backtest(series, ours, plan, known.get(series.id)) if len(ours) > 1 else None

        found = await self._map(choose, prepared)
        choices = dict(zip([s.id for s in prepared], found, strict=True))
        winners = {s.id: c.model if (c := choices[s.id]) else kinds[s.id][0] for s in prepared}
        members = {
            sid: ensembles.members(c.scores, plan.metric)
            for sid, c in choices.items()
            if c is not None and c.model is ENSEMBLE
        }
        shared = await self._run(partial(_forecast_globals, prepared, kinds, winners, members, job))
        done = await self._map(
            lambda s: shared.get(s.id) or _forecast(s, winners[s.id], job),
            prepared,
        )
        return Forecasted(done, [c for c in choices.values() if c is not None])

    # Charts.

    async def chart(self, job: Job, spec: ChartSpec, show_backtest: bool) -> Image:
        """One series drawn: history, the forecast of its model (chosen as in `forecast`) with
        its intervals and, when asked, the chosen model's backtest windows.

        Raises:
            InvalidArgument: Not exactly one series; see `series` and `check_length`.
            ResourceExhausted: More history to draw than max_chart_points.
        """
        data = job.data
        if len(data.series) + len(data.series_ids) != 1:
            raise InvalidArgument.for_field(
                "data", "a chart draws exactly one series (one series, or one series_ids entry)"
            )
        (series,) = await self.series(job, max_series=1)
        drawn = min(spec.history or len(series.y), len(series.y))
        if drawn > self.settings.max_chart_points:
            raise ResourceExhausted.too_large("history", drawn, self.settings.max_chart_points)
        forecasted = await self._forecast(job, [series])
        (result,) = forecasted.forecasts
        plan = job.plan()
        chosen = (
            ensembles.members(forecasted.choices[0].scores, plan.metric)
            if (result.model is ENSEMBLE)
            else ()
        )
        windows = (
            await self._run(partial(window_forecasts, series, result.model, plan, chosen))
            if show_backtest
            else []
        )
        return await self._run(partial(render, _chart_of(series, result, windows), spec))

    async def backtest(self, job: Job) -> Report:
        """Backtests every candidate on every series and says which won each."""
        prepared = await self.series(job, max_series=self.settings.max_sync_series)
        plan = job.plan()
        kinds = {s.id: applicable(s, job.models, plan) for s in prepared}
        known = await self._run(partial(global_backtests, prepared, kinds, plan))
        choices = await self._map(
            lambda s: backtest(s, kinds[s.id], plan, known.get(s.id)), prepared
        )
        return report(choices)

    # Fits, as operations.

    async def fit(self, spec: FitSpec, progress: Progress = NO_PROGRESS) -> Fitted:
        """Chooses and fits a model per series, registers the set as the model's next version,
        optionally promotes it, and announces it on nexus.forecast.fitted.

        Progress: stages loading, fitting (series done, ETA), registering; a cancel takes effect
        before registering. Run again as the same idempotent call, it finds its version.
        """
        job = spec.job
        await progress.stage("loading", 0.0, "reading the series")
        prepared = await self.series(job, max_series=self.settings.max_series)
        await progress.stage("fitting", 5.0, f"0/{len(prepared)} series")
        fitted, choices = await self._fit_all(job, prepared, progress)
        await progress.stage("registering", 95.0, "storing the version")
        summary = report(choices)
        version = await self.registry.register_object(
            spec.name,
            fitted,
            framework=FRAMEWORK,
            metrics=_version_metrics(summary, len(prepared)),
            parameters=_parameters(job, prepared),
            description=spec.description,
        )
        if spec.promote_to:
            await self.registry.promote(spec.name, version.version, spec.promote_to)
        await self._announce_fit(spec, version, len(prepared))
        return Fitted(version, summary)

    async def _fit_all(
        self, job: Job, prepared: list[Prepared], progress: Progress
    ) -> tuple[FittedSet, list[Choice]]:
        plan, fitted, choices = job.plan(), FittedSet(job.horizon), []
        kinds = {s.id: applicable(s, job.models, plan) for s in prepared}
        if any(k in GLOBAL for ours in kinds.values() for k in ours):
            await progress.stage("fitting", 5.0, "backtesting the global models")
        known = await self._run(partial(global_backtests, prepared, kinds, plan))
        began, total, wanted = time.monotonic(), len(prepared), set()
        chunks = _chunks(prepared, self._chunk_size(total))
        for batch in _chunks(chunks, max(1, self.settings.workers)):  # one chunk per worker
            parts = await asyncio.gather(
                *(self._run(partial(_fit_chunk, chunk, kinds, plan, known)) for chunk in batch)
            )
            for choice, series in (pair for part in parts for pair in part):
                choices.append(choice)
                fitted.add(series)
                wanted.update(series.shared_keys())
            count = len(choices)
            elapsed = time.monotonic() - began
            await progress.report(
                percent=5.0 + 90.0 * count / total,
                metrics={"series_done": count, "series": total},
                eta_s=elapsed / count * (total - count),
                message=f"{count}/{total} series",
            )
        if wanted:
            await progress.stage("fitting", 95.0, f"fitting {len(wanted)} global model(s)")
            models = await self._run(
                partial(fit_globals, prepared, kinds, wanted, job.horizon, job.params)
            )
            for key, model in models.items():
                fitted.add_shared(key, model)
        return fitted, choices

    def _chunk_size(self, total: int) -> int:
        return max(1, total // (CHUNKS_PER_WORKER * 25))

    # Hyperparameter searches, as operations.

    async def tune(self, spec: TuneSpec, progress: Progress = NO_PROGRESS) -> Tuned:
        """Searches `spec.kind`'s parameters on the series' backtest error, one trial at a time
        on the executor, until the trial or time budget is spent (ADR 0037).

        Progress: stages loading, tuning (trials_done, best so far); a cancel takes effect
        between trials.

        Raises:
            InvalidArgument: A series too short for the model's backtest; see `series`.
        """
        await progress.stage("loading", 0.0, "reading the series")
        prepared = await self.series(spec.job, max_series=self.settings.max_series)
        plan = spec.job.plan()
        for series in prepared:
            check_length(series, [spec.kind], plan)
        await progress.stage("tuning", 5.0, f"0/{spec.trials} trials")
        study = tuning.study(spec.kind, spec.seed)
        tried: list[tuple[dict[str, float], Errors]] = []
        began = time.monotonic()
        while len(tried) < spec.trials and time.monotonic() - began < spec.seconds:
            trial = study.ask()
            params = tuning.suggest(trial, spec.kind)
            errors = await self._run(partial(tuning.score, spec.kind, prepared, plan, params))
            study.tell(trial, errors.value(plan.metric))
            tried.append((params, errors))
            await _report_trials(progress, tried, spec, plan.metric, time.monotonic() - began)
        params, errors = min(tried, key=lambda t: t[1].value(plan.metric))  # ties: earlier
        return Tuned(spec.kind, params, errors, tried[0][1], len(tried))

    # Predictions from a fitted set.

    async def predict(self, spec: PredictSpec) -> Predicted:
        """Forecasts series of a fitted set with the version the selector resolves to.

        Raises:
            NotFound: The model, alias or version, or a series the set does not hold.
            InvalidArgument: A bad level or horizon, future exogenous values missing.
        """
        if len(spec.series_ids) > self.settings.max_series:
            raise ResourceExhausted.too_large(
                "series_ids", len(spec.series_ids), self.settings.max_series
            )
        check_levels(spec.levels, "levels")
        async with self._serving(spec) as served:
            model = served.model
            horizon = spec.horizon or model.horizon
            if horizon > self.settings.max_horizon:
                raise InvalidArgument.for_field(
                    "horizon", f"{horizon} steps; at most {self.settings.max_horizon}"
                )
            results = await self.models.predict(
                served, (spec.series_ids, horizon, spec.levels, spec.futures)
            )
            resolved = served.resolved
        ref = common_pb2.ModelRef(
            name=resolved.name, version=resolved.version, alias=resolved.alias
        )
        await self._announce_forecast(ref, len(results), None, horizon)
        return Predicted([SeriesResult(*r) for r in results], resolved)

    def _serving(self, spec: PredictSpec) -> AbstractAsyncContextManager[Served[ServedSet]]:
        s = spec.selector
        return self.models.serving(
            spec.name, alias=s.alias, version=s.version, routing_key=s.routing_key
        )

    # Events.

    async def _announce_fit(self, spec: FitSpec, version: ModelVersionInfo, series: int) -> None:
        event = events_pb2.FitCompleted(
            model=common_pb2.ModelRef(name=version.name, version=version.version),
            series=series,
            horizon=spec.job.horizon,
            operation=current_operation(),
            promoted_to=spec.promote_to,
        )
        await self._publish(FITTED, event, f"fitted-{version.name}-{version.version}", version.name)

    async def _announce_forecast(
        self, ref: common_pb2.ModelRef, series: int, job: Job | None, horizon: int = 0
    ) -> None:
        event = events_pb2.ForecastCompleted(
            model=ref,
            series=series,
            horizon=job.horizon if job else horizon,
            dataset_id=job.data.dataset_id if job else "",
        )
        await self._publish(FORECASTED, event, None, ref.name)

    async def _publish(self, subject: str, event: object, event_id: str | None, about: str) -> None:
        """Events are notifications: a failed publish is logged, the answer still goes out."""
        try:
            await self._bus.publish(subject, event, event_id=event_id, subject_hint=about or None)  # type: ignore[arg-type]
        except NexusError as err:
            log.warning("could not publish %s: %s", subject, err)

    # Work on the executor.

    async def _map(self, work: Callable[[Prepared], T], items: list[Prepared]) -> list[T]:
        size = max(1, -(-len(items) // max(1, self.settings.workers)))
        parts = await asyncio.gather(
            *(self._run(partial(_apply, work, chunk)) for chunk in _chunks(items, size))
        )
        return [r for part in parts for r in part]

    async def _run(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)


def check_levels(levels: Sequence[float], where: str) -> None:
    """Interval levels are distinct percentages strictly between 0 and 100.

    Raises:
        InvalidArgument: Naming the field and the bad level.
    """
    for i, level in enumerate(levels):
        if not 0 < level < 100:
            raise InvalidArgument.for_field(f"{where}[{i}]", f"{level} is not in (0, 100)")
    if len(set(levels)) != len(levels):
        raise InvalidArgument.for_field(where, "levels must be distinct")


def _forecast(series: Prepared, kind: ModelKind, job: Job) -> SeriesResult:
    horizon = job.horizon
    names = series.exogenous if uses_exogenous(series, kind, job.prophet) else ()
    x_future = future_matrix(
        names, series.future, horizon, f"{series.field}.future_exogenous", kind
    )
    x = series.x if x_future is not None else None
    check_fit_length(series, kind)
    dates = series.grid(len(series.y) + horizon)
    forecast = forecast_once(
        kind, series.seasons, series.y, horizon, job.levels, x, x_future, dates, job.prophet
    )
    return SeriesResult(series.id, kind, series.horizon_index(horizon), forecast)


def _check_futures(series: Prepared, kinds: Sequence[ModelKind], horizon: int) -> None:
    """A series forecast by a model that uses its exogenous columns needs their values over the
    horizon: refused before any backtest runs.

    Raises:
        InvalidArgument: Naming the column missing, short or not finite.
    """
    where = f"{series.field}.future_exogenous"
    for kind in kinds:
        future_matrix(series.exogenous, series.future, horizon, where, kind)


def _fit_chunk(
    chunk: list[Prepared], kinds: Mapping[str, tuple[ModelKind, ...]], plan: Plan, known: Known
) -> list[tuple[Choice, FittedSeries]]:
    return [choose_and_fit(s, kinds[s.id], plan, known.get(s.id)) for s in chunk]


def _forecast_globals(
    prepared: list[Prepared],
    kinds: Mapping[str, tuple[ModelKind, ...]],
    winners: Mapping[str, ModelKind],
    members: Mapping[str, tuple[ModelKind, ...]],
    job: Job,
) -> dict[str, SeriesResult]:
    """Forecasts of the series whose model is a global one or an ensemble (of `members`): each
    global model fitted once across its group (blocking, CPU).

    Raises:
        InvalidArgument: A series too short for the global model; future exogenous values
            missing for an ensemble's member that uses them.
    """
    ours = [s for s in prepared if winners[s.id] in GLOBAL or winners[s.id] is ENSEMBLE]
    fitted = [
        fit_series(s, winners[s.id], job.horizon, members.get(s.id, ()), job.prophet) for s in ours
    ]
    wanted = set().union(*(f.shared_keys() for f in fitted))
    models = fit_globals(prepared, kinds, wanted, job.horizon, job.params)
    found = {}
    for s, f in zip(ours, fitted, strict=True):
        where = f"{s.field}.future_exogenous"
        index, forecast = f.forecast_with(job.horizon, job.levels, s.future, where, models)
        found[f.series_id] = SeriesResult(f.series_id, f.kind, index, forecast)
    return found


async def _report_trials(
    progress: Progress,
    tried: list[tuple[dict[str, float], Errors]],
    spec: TuneSpec,
    metric: str,
    elapsed: float,
) -> None:
    done = len(tried)
    best = min(e.value(metric) for _, e in tried)
    share = max(done / spec.trials, elapsed / spec.seconds)
    await progress.report(
        percent=5.0 + 95.0 * min(1.0, share),
        metrics={"trials_done": done, "trials": spec.trials, f"best_{metric}": best},
        eta_s=min(elapsed / done * (spec.trials - done), max(0.0, spec.seconds - elapsed)),
        message=f"{done}/{spec.trials} trials, best {metric} {best:.4g}",
    )


def _chart_of(series: Prepared, result: SeriesResult, windows: list[tuple[int, Forecast]]) -> Chart:
    grid = series.grid(len(series.y))
    lines = [Line(grid[o : o + len(f.mean)], f) for o, f in windows]
    title = f"{series.id}: {result.model.value}"
    return Chart(title, grid, series.y, Line(result.index, result.forecast), lines)


def _apply(work: Callable[[Prepared], T], items: list[Prepared]) -> list[T]:
    return [work(s) for s in items]


def _chunks(items: list[T], size: int) -> list[list[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _version_metrics(summary: Report, series: int) -> dict[str, float]:
    chosen = summary.chosen
    metrics = {"series": float(series)}
    for name in ("mase", "smape", "rmse"):
        value = chosen.value(name)
        if np.isfinite(value):
            metrics[f"backtest_{name}"] = value
    for level, rate in chosen.coverage.items():
        metrics[f"backtest_coverage_{level:g}"] = rate
    for kind, wins in summary.wins.items():
        metrics[f"wins_{kind.value}"] = float(wins)
    return metrics


def _parameters(job: Job, prepared: list[Prepared]) -> dict[str, str]:
    frequencies = sorted({p.frequency for p in prepared})
    return {
        "horizon": str(job.horizon),
        "models": ",".join(k.value for k in job.models) or "auto",
        "windows": str(job.windows),
        "step": str(job.plan().stride),
        "metric": job.metric,
        "frequencies": ",".join(frequencies)[:256],
        "dataset_id": job.data.dataset_id,
        **{
            f"{kind.value}_{name}": f"{value:g}"
            for kind, params in job.params.items()
            for name, value in sorted(params.items())
        },
    }
