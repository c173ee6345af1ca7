"""The guide's example workflows (docs/orchestrator/examples) end to end over real services:
the anomaly service, the llm service with a tiny local chat model, the forecast service, the
orchestrator, one NATS.

The files are registered as they are written, but for the values a deployment fills in (the chat
model's name, the dataset's id), so the guide cannot drift from what works.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pandas as pd
import pytest
import yaml
from forecast_testing import local_level, proto_series
from google.protobuf import json_format
from google.protobuf.struct_pb2 import Struct
from llm_service_testing import write_config

from nexus.anomaly.server import create as create_anomaly
from nexus.anomaly.settings import AnomalySettings
from nexus.api.anomaly.v1 import anomaly_service_pb2 as anomaly_pb
from nexus.api.anomaly.v1 import anomaly_service_pb2_grpc as anomaly_grpc
from nexus.api.anomaly.v1 import events_pb2 as anomaly_events
from nexus.api.common.v1 import common_pb2
from nexus.api.forecast.v1 import events_pb2 as forecast_events
from nexus.api.forecast.v1 import forecast_service_pb2 as forecast_pb
from nexus.api.forecast.v1 import forecast_service_pb2_grpc as forecast_grpc
from nexus.api.models.v1 import model_registry_pb2 as models_pb
from nexus.api.models.v1 import model_registry_pb2_grpc as models_grpc
from nexus.api.operations.v1 import operations_pb2 as ops_pb
from nexus.api.operations.v1 import operations_pb2_grpc as ops_grpc
from nexus.api.orchestrator.v1 import events_pb2 as orchestrator_events
from nexus.api.orchestrator.v1 import orchestrator_service_pb2 as pb
from nexus.api.orchestrator.v1 import orchestrator_service_pb2_grpc as pb_grpc
from nexus.common.events import EventBus
from nexus.common.server import ServiceHost
from nexus.common.settings import NexusSettings
from nexus.common.testing.keys import make_key
from nexus.common.testing.services import StartService
from nexus.common.testing.waiting import eventually
from nexus.forecast.server import create as create_forecast
from nexus.forecast.settings import ForecastSettings
from nexus.llm.server import create as create_llm
from nexus.llm.settings import LlmSettings
from nexus.orchestrator.server import create as create_orchestrator
from nexus.orchestrator.settings import OrchestratorSettings

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "orchestrator" / "examples"
Metadata = tuple[tuple[str, str], ...]


def example(name: str, **changes: Any) -> tuple[str, str]:
    """An example's definition with the values a deployment fills in; its workflow's name is
    made unique (the NATS of the test session is shared)."""
    document = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    unique = f"{document['name']}-{uuid.uuid4().hex[:6]}"
    document["name"] = unique
    for path, value in changes.items():
        *parents, last = path.split("__")
        holder = document
        for part in parents:
            holder = holder[int(part)] if part.isdigit() else holder[part]
        holder[last] = value
    return unique, yaml.safe_dump(document)


async def register(
    stub: pb_grpc.OrchestratorServiceStub, key: Metadata, name: str, **changes: Any
) -> str:
    """Registers an example, with `changes` (see `example`); the workflow's unique name."""
    unique, definition = example(name, **changes)
    await stub.RegisterWorkflow(pb.RegisterWorkflowRequest(definition=definition), metadata=key)
    return unique


@pytest.fixture
async def platform(
    start_service: StartService, nexus_settings: NexusSettings, tiny_model: Path, tmp_path: Path
) -> tuple[ServiceHost, ServiceHost, Metadata]:
    """The anomaly, llm and orchestrator services; yields the anomaly and orchestrator hosts and
    an admin key's metadata."""
    anomaly = await start_service(create_anomaly, AnomalySettings(grpc_port=0))
    config = write_config(tmp_path / "models.yaml", tiny_model)
    llm = await start_service(
        create_llm,
        LlmSettings(grpc_port=0, config_path=config, model_cache_dir=tmp_path / "cache"),
    )
    service_key = await make_key(nexus_settings, "*")
    backends = {"anomaly": f"127.0.0.1:{anomaly.port}", "llm": f"127.0.0.1:{llm.port}"}
    orchestrator = await start_service(
        create_orchestrator,
        OrchestratorSettings(grpc_port=0, backends=backends, service_key=service_key),
    )
    admin = await make_key(nexus_settings, "*")
    return anomaly, orchestrator, (("authorization", f"Bearer {admin}"),)


async def finished(stub: pb_grpc.OrchestratorServiceStub, run_id: str, key: Metadata) -> pb.Run:
    last: pb.Run | None = None
    async for change in stub.WatchRun(pb.WatchRunRequest(run_id=run_id), metadata=key, timeout=120):
        last = change.run
    assert last is not None
    return last


async def test_an_anomaly_above_the_threshold_is_summarised_and_alerted(
    platform: tuple[ServiceHost, ServiceHost, Metadata], nats_client: Any
) -> None:
    _, orchestrator, key = platform
    bus = EventBus(nats_client, "test")
    source = f"cpu-{uuid.uuid4().hex[:6]}"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{orchestrator.port}") as channel:
        stub = pb_grpc.OrchestratorServiceStub(channel)
        name = await register(stub, key, "anomaly-alert", inputs__model__default="tiny")
        for score in (0.5, 0.97):  # the first one is below the trigger's condition
            detected = anomaly_events.AnomalyDetected(source=source, score=score, values=[9.5])
            await bus.publish("nexus.anomaly.detected", detected)
        run = await first_run(stub, name, key)
        done = await finished(stub, run.run_id, key)
        await asyncio.sleep(0.3)  # a second (wrong) run would have started by now
        runs = await runs_of(stub, name, key)
    stored = await nats_client.jetstream().get_last_msg("WORKFLOWS", "nexus.workflows.alerts")
    alert = orchestrator_events.WorkflowEvent.FromString(stored.data)

    assert done.state == pb.RUN_STATE_SUCCEEDED, done.error.message
    outputs = json_format.MessageToDict(done.outputs)
    assert outputs["summary"].startswith("one two three")  # what the tiny model answers
    assert (alert.workflow, alert.run_id, alert.title) == (name, run.run_id, f"Anomaly on {source}")
    assert alert.text == outputs["summary"]
    assert alert.attributes["source"] == source
    assert [r.run_id for r in runs] == [run.run_id]


async def runs_of(
    stub: pb_grpc.OrchestratorServiceStub, workflow: str, key: Metadata
) -> list[pb.Run]:
    listed = await stub.ListRuns(pb.ListRunsRequest(workflow=workflow), metadata=key)
    return list(listed.runs)


async def first_run(stub: pb_grpc.OrchestratorServiceStub, workflow: str, key: Metadata) -> pb.Run:
    """The first run of a workflow that an event starts, once it is there."""

    async def started() -> bool:
        return bool(await runs_of(stub, workflow, key))

    await eventually(started, timeout_s=60)
    return (await runs_of(stub, workflow, key))[0]


async def start_nightly(
    stub: pb_grpc.OrchestratorServiceStub, key: Metadata, name: str, dataset: str, **changes: Any
) -> tuple[str, str]:
    """Registers a nightly example whose cron trigger passes `dataset` (with `changes`) and
    starts a run by hand with the inputs the trigger passes; the workflow's name, the run's id."""
    workflow = await register(stub, key, name, triggers__0__inputs__dataset=dataset, **changes)
    inputs = Struct()
    inputs.update({"dataset": dataset})
    started = await stub.StartRun(
        pb.StartRunRequest(workflow=workflow, inputs=inputs), metadata=key
    )
    return workflow, str(started.run.run_id)


def _labelled_csv(seed: int) -> bytes:
    """Normal points in a cloud and 5 % far outside it, with a label column."""
    rng = np.random.default_rng(seed)
    normal = rng.normal(size=(380, 3))
    outliers = rng.normal(loc=6.0, size=(20, 3))
    rows = [(*row, 0) for row in normal] + [(*row, 1) for row in outliers]
    lines = ["a,b,c,label"] + [",".join(f"{v:.5f}" for v in r[:3]) + f",{r[3]}" for r in rows]
    return "\n".join(lines).encode()


async def test_the_nightly_retrain_promotes_a_version_that_scores_better(
    platform: tuple[ServiceHost, ServiceHost, Metadata],
) -> None:
    anomaly, orchestrator, key = platform
    detector = f"nightly-{uuid.uuid4().hex[:6]}"
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{anomaly.port}") as anomaly_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{orchestrator.port}") as channel,
    ):
        detectors = anomaly_grpc.AnomalyServiceStub(anomaly_channel)
        registry = models_grpc.ModelRegistryServiceStub(anomaly_channel)
        uploaded = await detectors.UploadDataset(
            anomaly_pb.UploadDatasetRequest(
                name="labelled", csv=_labelled_csv(0), label_column="label"
            ),
            metadata=key,
        )
        # Production today: a detector trained on noise, its labels random (ROC-AUC near 0.5).
        rng = np.random.default_rng(1)
        noise = [anomaly_pb.Point(values=rng.normal(size=3).tolist()) for _ in range(200)]
        await detectors.TrainDetector(
            anomaly_pb.TrainDetectorRequest(
                name=detector,
                points=noise,
                labels=[bool(b) for b in rng.integers(0, 2, size=200)],
                promote_to="production",
                seed=1,
            ),
            metadata=key,
        )
        stub = pb_grpc.OrchestratorServiceStub(channel)
        _, run_id = await start_nightly(
            stub, key, "nightly-retrain", uploaded.dataset.id, inputs__detector__default=detector
        )
        done = await finished(stub, run_id, key)
        model = await registry.GetModel(
            models_pb.GetModelRequest(service="anomaly", name=detector), metadata=key
        )

    assert done.state == pb.RUN_STATE_SUCCEEDED, done.error.message
    outputs = json_format.MessageToDict(done.outputs)
    assert outputs["trained"] == "2"
    assert outputs["promoted"] is True
    assert outputs["roc_auc"] > 0.9
    production = [v.version for v in model.model.versions if "production" in v.aliases]
    assert production == ["2"]


@pytest.fixture
async def forecasting(
    start_service: StartService, nexus_settings: NexusSettings
) -> tuple[ServiceHost, ServiceHost, Metadata]:
    """The forecast and orchestrator services; yields both hosts and an admin key's metadata."""
    forecast = await start_service(create_forecast, ForecastSettings(grpc_port=0))
    service_key = await make_key(nexus_settings, "*")
    orchestrator = await start_service(
        create_orchestrator,
        OrchestratorSettings(
            grpc_port=0,
            backends={"forecast": f"127.0.0.1:{forecast.port}"},
            service_key=service_key,
        ),
    )
    admin = await make_key(nexus_settings, "*")
    return forecast, orchestrator, (("authorization", f"Bearer {admin}"),)


def _stores_csv(stores: list[str]) -> bytes:
    """90 days of weekly-seasonal demand per store, long format."""
    rng = np.random.default_rng(3)
    days = pd.date_range("2024-01-01", periods=90, freq="D")
    lines = ["unique_id,ds,y"]
    for store in stores:
        y = 100 + 20 * np.sin(2 * np.pi * np.arange(90) / 7) + rng.normal(0, 3, 90)
        lines += [f"{store},{d.date()},{v:.3f}" for d, v in zip(days, y, strict=True)]
    return "\n".join(lines).encode()


async def test_the_nightly_refit_fits_promotes_and_its_event_forecasts_and_publishes(
    forecasting: tuple[ServiceHost, ServiceHost, Metadata], nats_client: Any
) -> None:
    """nightly-refit, run by hand as its cron trigger would, starts the fit operation; the
    fit's nexus.forecast.fitted starts forecast-on-refit, which forecasts with the new version
    and publishes the forecasts."""
    forecast, orchestrator, key = forecasting
    model, stores = f"demand-{uuid.uuid4().hex[:6]}", ["store-1", "store-2", "store-3"]
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{forecast.port}") as forecast_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{orchestrator.port}") as channel,
    ):
        uploaded = await forecast_grpc.ForecastServiceStub(forecast_channel).UploadDataset(
            forecast_pb.UploadDatasetRequest(name="stores", data=_stores_csv(stores)),
            metadata=key,
        )
        stub = pb_grpc.OrchestratorServiceStub(channel)
        on_refit = await register(  # first: its trigger must see the fit's event
            stub,
            key,
            "forecast-on-refit",
            triggers__0__event__condition=f"event.data.model.name == '{model}'",
        )
        _, run_id = await start_nightly(
            stub, key, "nightly-refit", uploaded.dataset.id, inputs__model__default=model
        )
        fitted = await finished(stub, run_id, key)
        operation = json_format.MessageToDict(fitted.outputs)["operation"]
        run = await first_run(stub, on_refit, key)
        done = await finished(stub, run.run_id, key)
        runs = await runs_of(stub, on_refit, key)
        ended = await ops_grpc.OperationsServiceStub(forecast_channel).GetOperation(
            ops_pb.GetOperationRequest(name=operation), metadata=key
        )
        production = await models_grpc.ModelRegistryServiceStub(forecast_channel).GetModel(
            models_pb.GetModelRequest(service="forecast", name=model), metadata=key
        )
    stored = await nats_client.jetstream().get_last_msg("WORKFLOWS", "nexus.workflows.forecasts")
    published = orchestrator_events.WorkflowEvent.FromString(stored.data)

    assert fitted.state == pb.RUN_STATE_SUCCEEDED, fitted.error.message
    assert ended.operation.state == ops_pb.OPERATION_STATE_SUCCEEDED
    assert [v.aliases for v in production.model.versions] == [["production"]]
    assert done.state == pb.RUN_STATE_SUCCEEDED, done.error.message
    assert [r.run_id for r in runs] == [run.run_id]  # one run per fit
    outputs = json_format.MessageToDict(done.outputs)
    assert outputs["version"] == "1"
    assert [f["series_id"] for f in outputs["forecasts"]] == stores
    assert all(len(f["mean"]) == 14 for f in outputs["forecasts"])  # the fit's horizon
    assert (published.run_id, published.attributes["model"]) == (run.run_id, model)
    assert published.text.startswith("3 series forecast with version 1, from 2024-03-31")


NIGHTLY = "nightly-refit-and-forecast"


def _blocker_fit() -> forecast_pb.StartFitRequest:
    """A fit of seconds of another model (60 series, AutoTheta backtested on each): the forecast
    service runs one operation at a time, so a fit started after it waits in the queue."""
    rng = np.random.default_rng(5)
    series = [proto_series(local_level(300, rng), f"b{i}") for i in range(60)]
    data = forecast_pb.SeriesData(
        series=series, options=forecast_pb.SeriesOptions(season_length=24)
    )
    fit = forecast_pb.FitRequest(
        name=f"blocker-{uuid.uuid4().hex[:6]}",
        data=data,
        horizon=24,
        models=[forecast_pb.MODEL_AUTO_THETA],
    )
    return forecast_pb.StartFitRequest(fit=fit)


@dataclass
class Night:
    """A run of nightly-refit-and-forecast (`run_id`, once started) for `model`, clients of the
    services, and the fit it waits behind, if any (`blocker`)."""

    model: str
    key: Metadata
    orchestrator: pb_grpc.OrchestratorServiceStub
    operations: ops_grpc.OperationsServiceStub
    run_id: str = ""
    blocker: str = ""

    async def operation(self, name: str) -> ops_pb.Operation:
        request = ops_pb.GetOperationRequest(name=name)
        return (await self.operations.GetOperation(request, metadata=self.key)).operation

    async def at_step(self, step: str) -> None:
        """Waits until the run waits in `step`."""

        async def there() -> bool:
            request = pb.GetRunRequest(run_id=self.run_id)
            run = (await self.orchestrator.GetRun(request, metadata=self.key)).run
            return bool(run.state == pb.RUN_STATE_WAITING and run.current_step == step)

        await eventually(there, timeout_s=60)

    async def finished(self) -> tuple[pb.Run, list[pb.StepExecution]]:
        """The run once ended, and its steps."""
        done = await finished(self.orchestrator, self.run_id, self.key)
        request = pb.GetRunHistoryRequest(run_id=self.run_id)
        history = await self.orchestrator.GetRunHistory(request, metadata=self.key)
        return done, list(history.steps)


@contextlib.asynccontextmanager
async def night_behind_another_fit(
    forecasting: tuple[ServiceHost, ServiceHost, Metadata], stores: list[str]
) -> AsyncIterator[Night]:
    """Registers nightly-refit-and-forecast for a new model on the stores' uploaded dataset,
    starts another model's fit, and once that runs starts the night by hand (as its cron
    trigger would); the other fit is cancelled at the end (no work is left queued for later
    tests)."""
    forecast, orchestrator, key = forecasting
    model = f"demand-{uuid.uuid4().hex[:6]}"
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{forecast.port}") as forecast_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{orchestrator.port}") as channel,
    ):
        forecasts = forecast_grpc.ForecastServiceStub(forecast_channel)
        uploaded = await forecasts.UploadDataset(
            forecast_pb.UploadDatasetRequest(name="stores", data=_stores_csv(stores)),
            metadata=key,
        )
        stub = pb_grpc.OrchestratorServiceStub(channel)
        blocker = (await forecasts.StartFit(_blocker_fit(), metadata=key)).operation.name
        operations = ops_grpc.OperationsServiceStub(forecast_channel)
        night = Night(model, key, stub, operations, blocker=blocker)

        async def blocking() -> bool:
            return (await night.operation(blocker)).state == ops_pb.OPERATION_STATE_RUNNING

        await eventually(blocking, timeout_s=60)
        _, night.run_id = await start_nightly(
            stub, key, NIGHTLY, uploaded.dataset.id, inputs__model__default=model
        )
        try:
            yield night
        finally:
            request = ops_pb.CancelOperationRequest(name=blocker)
            await operations.CancelOperation(request, metadata=key)

            async def ended() -> bool:
                return (await night.operation(blocker)).done

            await eventually(ended, timeout_s=60)


async def test_the_single_nightly_workflow_waits_for_its_own_fit_then_forecasts_and_publishes(
    forecasting: tuple[ServiceHost, ServiceHost, Metadata], nats_client: Any
) -> None:
    """nightly-refit-and-forecast: while its fit waits behind another model's, a
    nexus.forecast.fitted of the same model but another operation is published and passed over
    (taken, it would make Predict ask for version 99); its own fit's event completes the wait,
    and the run forecasts with the version it made and publishes."""
    stores = ["store-1", "store-2", "store-3"]
    async with night_behind_another_fit(forecasting, stores) as night:
        await night.at_step("fitted")
        other = forecast_events.FitCompleted(
            model=common_pb2.ModelRef(name=night.model, version="99"),
            operation="forecast/operations/" + "0" * 32,
        )
        await EventBus(nats_client, "test").publish("nexus.forecast.fitted", other)
        blocked = await night.operation(night.blocker)
        done, history = await night.finished()

    assert blocked.state == ops_pb.OPERATION_STATE_RUNNING  # so the run's own fit had not ended
    assert done.state == pb.RUN_STATE_SUCCEEDED, done.error.message
    steps = {s.step_id: json_format.MessageToDict(s.output) for s in history}
    assert list(steps) == ["fit", "fitted", "forecast", "publish"]
    operation = steps["fit"]["operation"]["name"]
    assert steps["fitted"]["data"]["operation"] == operation  # its own fit, not the other
    fitted = steps["fitted"]["data"]["model"]
    assert (fitted["name"], fitted["version"]) == (night.model, "1")
    outputs = json_format.MessageToDict(done.outputs)
    assert (outputs["operation"], outputs["version"]) == (operation, "1")
    assert [f["series_id"] for f in outputs["forecasts"]] == stores
    assert all(len(f["mean"]) == 14 for f in outputs["forecasts"])  # the fit's horizon
    stored = await nats_client.jetstream().get_last_msg("WORKFLOWS", "nexus.workflows.forecasts")
    published = orchestrator_events.WorkflowEvent.FromString(stored.data)
    assert (published.run_id, published.attributes["operation"]) == (night.run_id, operation)
    assert published.text.startswith("3 series forecast with version 1, from 2024-03-31")


async def test_the_single_nightly_workflow_alerts_when_its_fit_fails(
    forecasting: tuple[ServiceHost, ServiceHost, Metadata], nats_client: Any
) -> None:
    """A fit that fails (its dataset is gone) announces nothing: the wait times out (1 s here)
    and the on_failure steps run: the fit's operation is cancelled if it still runs (a failed
    one is answered as it is) and an alert naming it is published."""
    forecast, orchestrator, key = forecasting
    model = f"demand-{uuid.uuid4().hex[:6]}"
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{forecast.port}") as forecast_channel,
        grpc.aio.insecure_channel(f"127.0.0.1:{orchestrator.port}") as channel,
    ):
        stub = pb_grpc.OrchestratorServiceStub(channel)
        night = Night(model, key, stub, ops_grpc.OperationsServiceStub(forecast_channel))
        _, night.run_id = await start_nightly(
            stub,
            key,
            NIGHTLY,
            "ds-" + "0" * 32,  # no such dataset
            inputs__model__default=model,
            steps__1__wait_event__timeout_s=1,
        )
        done, history = await night.finished()
        operation = json_format.MessageToDict(history[0].output)["operation"]["name"]
        failed = await night.operation(operation)
    stored = await nats_client.jetstream().get_last_msg("WORKFLOWS", "nexus.workflows.alerts")
    alert = orchestrator_events.WorkflowEvent.FromString(stored.data)

    assert done.state == pb.RUN_STATE_FAILED
    assert done.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert [(s.step_id, s.state) for s in history] == [
        ("fit", pb.STEP_STATE_SUCCEEDED),
        ("fitted", pb.STEP_STATE_FAILED),
        ("cancel_fit", pb.STEP_STATE_SUCCEEDED),
        ("alert", pb.STEP_STATE_SUCCEEDED),
    ]
    assert failed.state == ops_pb.OPERATION_STATE_FAILED
    assert failed.error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert (alert.run_id, alert.severity, alert.attributes["model"]) == (
        night.run_id,
        "warning",
        model,
    )
    assert alert.text.endswith(f"the fit's operation: {operation}")
