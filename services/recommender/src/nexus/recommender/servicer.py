"""The RecommenderService RPCs: each converts the request, calls the engine, converts the result.

Errors are not handled here: domain exceptions propagate to the error interceptor.
"""

from __future__ import annotations

from typing import Any

from nexus.api.recommender.v1 import recommender_service_pb2 as pb
from nexus.api.recommender.v1 import recommender_service_pb2_grpc as pb_grpc
from nexus.common.operations import OperationKind, Operations, Progress
from nexus.common.operations.converters import operation_to_proto
from nexus.common.paging import page_request, paginate
from nexus.recommender import converters
from nexus.recommender.engine import RecommenderEngine

Context = Any  # grpc.aio.ServicerContext; unused by these handlers
TRAIN = "train"
"""The kind of the operations StartTraining starts."""


def training(engine: RecommenderEngine) -> OperationKind[pb.TrainRequest, pb.TrainResponse]:
    """A training as a kind of long-running operation."""

    async def train(request: pb.TrainRequest, progress: Progress) -> pb.TrainResponse:
        version = await engine.train(converters.train_spec(request), progress)
        return converters.trained_to_proto(version)

    return OperationKind(TRAIN, pb.TrainRequest, train)


class RecommenderServicer(pb_grpc.RecommenderServiceServicer):
    """gRPC face of the recommender engine."""

    def __init__(self, engine: RecommenderEngine, operations: Operations) -> None:
        self._engine = engine
        self._operations = operations

    async def CreateCatalog(
        self, request: pb.CreateCatalogRequest, context: Context
    ) -> pb.CreateCatalogResponse:
        info = await self._engine.create_catalog(converters.catalog_info(request.catalog))
        return pb.CreateCatalogResponse(catalog=converters.catalog_to_proto(info))

    async def GetCatalog(
        self, request: pb.GetCatalogRequest, context: Context
    ) -> pb.GetCatalogResponse:
        view = await self._engine.get_catalog(request.name)
        return pb.GetCatalogResponse(catalog=converters.catalog_to_proto(view.info, view))

    async def ListCatalogs(
        self, request: pb.ListCatalogsRequest, context: Context
    ) -> pb.ListCatalogsResponse:
        page = page_request(request.page_size, request.page_token, scope="catalogs")
        listed, token = paginate(await self._engine.list_catalogs(), lambda c: c.name, page)
        return pb.ListCatalogsResponse(
            catalogs=[converters.catalog_to_proto(c) for c in listed], next_page_token=token
        )

    async def IngestInteractions(
        self, request: pb.IngestInteractionsRequest, context: Context
    ) -> pb.IngestInteractionsResponse:
        self._engine.check_interactions(len(request.interactions))  # before reading them
        given = converters.interactions_of(request, self._engine.settings.max_weight)
        accepted = await self._engine.ingest(request.catalog, given)
        return pb.IngestInteractionsResponse(accepted=accepted)

    async def UpsertItems(
        self, request: pb.UpsertItemsRequest, context: Context
    ) -> pb.UpsertItemsResponse:
        upserted = await self._engine.upsert_items(request.catalog, converters.items_of(request))
        return pb.UpsertItemsResponse(upserted=upserted)

    async def UpsertUsers(
        self, request: pb.UpsertUsersRequest, context: Context
    ) -> pb.UpsertUsersResponse:
        upserted = await self._engine.upsert_users(request.catalog, converters.users_of(request))
        return pb.UpsertUsersResponse(upserted=upserted)

    async def SetRules(self, request: pb.SetRulesRequest, context: Context) -> pb.SetRulesResponse:
        stored = await self._engine.set_rules(request.catalog, converters.rules_of(request))
        rules, updated = converters.rules_to_proto(stored)
        return pb.SetRulesResponse(rules=rules, update_time=updated)

    async def GetRules(self, request: pb.GetRulesRequest, context: Context) -> pb.GetRulesResponse:
        rules, updated = converters.rules_to_proto(await self._engine.get_rules(request.catalog))
        return pb.GetRulesResponse(rules=rules, update_time=updated)

    async def Recommend(
        self, request: pb.RecommendRequest, context: Context
    ) -> pb.RecommendResponse:
        recommended = await self._engine.recommend(converters.recommend_spec(request))
        return converters.recommended_to_proto(recommended, request.catalog)

    async def SimilarItems(
        self, request: pb.SimilarItemsRequest, context: Context
    ) -> pb.SimilarItemsResponse:
        similar = await self._engine.similar(converters.similar_spec(request))
        return converters.similar_to_proto(similar, request.catalog)

    async def StartTraining(
        self, request: pb.StartTrainingRequest, context: Context
    ) -> pb.StartTrainingResponse:
        spec = converters.train_spec(request.train)  # bad input fails here, not in the operation
        await self._engine.check_training(spec)
        operation = await self._operations.submit(TRAIN, request.train)
        return pb.StartTrainingResponse(operation=operation_to_proto(operation))

    async def Evaluate(self, request: pb.EvaluateRequest, context: Context) -> pb.EvaluateResponse:
        report = await self._engine.evaluate(converters.evaluate_spec(request))
        return converters.report_to_proto(report)
