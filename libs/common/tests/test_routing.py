"""Which deployable serves an RPC: by its package, or by the request field its service names."""

from __future__ import annotations

from nexus.api.anomaly.v1 import anomaly_service_pb2
from nexus.api.models.v1 import model_registry_pb2
from nexus.api.operations.v1 import operations_pb2
from nexus.common.routing import backend_of_request


def test_a_service_of_one_area_is_served_by_that_area() -> None:
    service = anomaly_service_pb2.DESCRIPTOR.services_by_name["AnomalyService"]

    assert backend_of_request(service, {"name": "llm"}) == "anomaly"


def test_services_every_deployable_mounts_go_where_the_request_says() -> None:
    registry = model_registry_pb2.DESCRIPTOR.services_by_name["ModelRegistryService"]
    operations = operations_pb2.DESCRIPTOR.services_by_name["OperationsService"]

    assert backend_of_request(registry, {"service": "forecast", "name": "m"}) == "forecast"
    assert backend_of_request(operations, {"name": "vision/operations/abc"}) == "vision"
    assert backend_of_request(registry, {}) == ""  # no backend named: the caller refuses it
