"""The ForecastService RPCs: each converts the request, calls the engine, converts the result.

Errors are not handled here: domain exceptions propagate to the error interceptor.
"""

from __future__ import annotations

from typing import Any

from nexus.api.forecast.v1 import forecast_service_pb2 as pb
from nexus.api.forecast.v1 import forecast_service_pb2_grpc as pb_grpc
from nexus.common.operations import OperationKind, Operations, Progress
from nexus.common.operations.converters import operation_to_proto
from nexus.forecast import converters
from nexus.forecast.engine import ForecastEngine

Context = Any  # grpc.aio.ServicerContext; unused by these handlers
FIT = "fit"
"""The kind of the operations StartFit starts."""
TUNE = "tune"
"""The kind of the operations StartTune starts."""


def fitting(engine: ForecastEngine) -> OperationKind[pb.FitRequest, pb.FitResponse]:
    """A fit as a kind of long-running operation."""

    async def fit(request: pb.FitRequest, progress: Progress) -> pb.FitResponse:
        fitted = await engine.fit(converters.fit_spec(request), progress)
        return converters.fitted_to_proto(fitted, engine.settings.max_report_series)

    return OperationKind(FIT, pb.FitRequest, fit)


def tuning(engine: ForecastEngine) -> OperationKind[pb.TuneRequest, pb.TuneResponse]:
    """A hyperparameter search as a kind of long-running operation."""

    async def tune(request: pb.TuneRequest, progress: Progress) -> pb.TuneResponse:
        tuned = await engine.tune(converters.tune_spec(request), progress)
        return converters.tuned_to_proto(tuned)

    return OperationKind(TUNE, pb.TuneRequest, tune)


class ForecastServicer(pb_grpc.ForecastServiceServicer):
    """gRPC face of the forecast engine."""

    def __init__(self, engine: ForecastEngine, operations: Operations) -> None:
        self._engine = engine
        self._operations = operations

    async def UploadDataset(
        self, request: pb.UploadDatasetRequest, context: Context
    ) -> pb.UploadDatasetResponse:
        fmt = converters.upload_format(request)
        info = await self._engine.upload_dataset(request.name, request.data, fmt)
        return converters.dataset_to_proto(info)

    async def Forecast(self, request: pb.ForecastRequest, context: Context) -> pb.ForecastResponse:
        forecasted = await self._engine.forecast(converters.job_of(request))
        return converters.forecasted_to_proto(forecasted)

    async def Backtest(self, request: pb.BacktestRequest, context: Context) -> pb.BacktestResponse:
        report = await self._engine.backtest(converters.job_of(request))
        return converters.report_to_proto(report)

    async def RenderChart(
        self, request: pb.RenderChartRequest, context: Context
    ) -> pb.RenderChartResponse:
        spec = converters.chart_spec(request)
        image = await self._engine.chart(converters.job_of(request), spec, request.show_backtest)
        return converters.image_to_proto(image)

    async def StartFit(self, request: pb.StartFitRequest, context: Context) -> pb.StartFitResponse:
        spec = converters.fit_spec(request.fit)  # bad input fails here, not in the operation
        self._engine.check_job(spec.job, max_series=self._engine.settings.max_series)
        operation = await self._operations.submit(FIT, request.fit)
        return pb.StartFitResponse(operation=operation_to_proto(operation))

    async def StartTune(
        self, request: pb.StartTuneRequest, context: Context
    ) -> pb.StartTuneResponse:
        spec = converters.tune_spec(request.tune)  # bad input fails here, not in the operation
        self._engine.check_job(spec.job, max_series=self._engine.settings.max_series)
        operation = await self._operations.submit(TUNE, request.tune)
        return pb.StartTuneResponse(operation=operation_to_proto(operation))

    async def Predict(self, request: pb.PredictRequest, context: Context) -> pb.PredictResponse:
        predicted = await self._engine.predict(converters.predict_spec(request))
        return converters.predicted_to_proto(predicted)
