"""The llm service's RPCs: each converts the request, calls the domain, converts the result.

Errors are not handled here: domain exceptions propagate to the error interceptor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from nexus.api.llm.v1 import llm_service_pb2 as pb
from nexus.api.llm.v1 import llm_service_pb2_grpc as pb_grpc
from nexus.common.auth import current_api_key
from nexus.common.errors import InvalidArgument, PermissionDenied
from nexus.common.paging import page_request, paginate
from nexus.llm import converters
from nexus.llm.analysis import SentimentAnalyzer
from nexus.llm.budgets import BudgetStore
from nexus.llm.conversations import ConversationStore
from nexus.llm.embedding_path import EmbeddingPath
from nexus.llm.embeddings import EmbeddingModels
from nexus.llm.engine import ChatEngine
from nexus.llm.extraction import extraction_call
from nexus.llm.router import ProviderRouter
from nexus.llm.search import CollectionStore
from nexus.llm.settings import LlmSettings
from nexus.llm.types import ANONYMOUS
from nexus.llm.usage import UsageLedger

Context = Any  # grpc.aio.ServicerContext; unused by these handlers


def caller_id() -> str:
    """The API key id of the call being handled ("anonymous" when auth is off)."""
    key = current_api_key.get()
    return key.id if key is not None else ANONYMOUS


class LlmServicer(pb_grpc.LlmServiceServicer):
    """gRPC face of chat, embeddings, models and analysis."""

    def __init__(
        self,
        engine: ChatEngine,
        router: ProviderRouter,
        embeddings: EmbeddingModels,
        embedding_path: EmbeddingPath,
        sentiment: SentimentAnalyzer,
        settings: LlmSettings,
    ) -> None:
        self._engine = engine
        self._router = router
        self._embeddings = embeddings
        self._embedding_path = embedding_path
        self._sentiment = sentiment
        self._settings = settings

    async def Chat(self, request: pb.ChatRequest, context: Context) -> pb.ChatResponse:
        call = converters.chat_call(request, caller_id())
        return converters.completion_to_proto(await self._engine.chat(call))

    async def StreamChat(
        self, request: pb.StreamChatRequest, context: Context
    ) -> AsyncIterator[pb.StreamChatResponse]:
        call = converters.chat_call(request.request, caller_id())
        async for chunk in self._engine.stream(call):
            yield converters.chunk_to_proto(chunk)

    async def Embed(self, request: pb.EmbedRequest, context: Context) -> pb.EmbedResponse:
        raw = converters.struct_to_json(request.openai_parameters)
        result = await self._embedding_path.embed(request.model, request.inputs, caller_id(), raw)
        return converters.embeddings_to_proto(result)

    async def ListModels(
        self, request: pb.ListModelsRequest, context: Context
    ) -> pb.ListModelsResponse:
        models = [*self._router.models(), *self._embeddings.local_descriptions()]
        page = page_request(request.page_size, request.page_token, scope="served-models")
        by_id = converters.model_id
        listed, token = paginate(sorted(models, key=by_id), by_id, page)
        return converters.models_to_proto(listed, token)

    async def AnalyzeSentiment(
        self, request: pb.AnalyzeSentimentRequest, context: Context
    ) -> pb.AnalyzeSentimentResponse:
        return converters.sentiments_to_proto(await self._sentiment.analyze_off_loop(request.texts))

    async def Extract(self, request: pb.ExtractRequest, context: Context) -> pb.ExtractResponse:
        schema = converters.struct_to_dict(request.json_schema)
        call = extraction_call(
            model=request.model,
            text=request.text,
            schema=schema,
            instructions=request.instructions,
            api_key_id=caller_id(),
            settings=self._settings,
        )
        data, completion = await self._engine.extract(call, schema)
        return pb.ExtractResponse(
            data=converters.dict_to_struct(data),
            model=completion.model,
            usage=converters.usage_to_proto(completion.usage),
        )


class ConversationServicer(pb_grpc.ConversationServiceServicer):
    """gRPC face of the conversation store; a caller sees only its own conversations."""

    def __init__(self, conversations: ConversationStore) -> None:
        self._conversations = conversations

    async def CreateConversation(
        self, request: pb.CreateConversationRequest, context: Context
    ) -> pb.CreateConversationResponse:
        record = await self._conversations.create(
            caller_id(),
            model=request.model,
            messages=converters.messages_from_proto(request.messages),
            labels=dict(request.labels),
        )
        return pb.CreateConversationResponse(conversation=converters.conversation_to_proto(record))

    async def GetConversation(
        self, request: pb.GetConversationRequest, context: Context
    ) -> pb.GetConversationResponse:
        record = await self._conversations.get(caller_id(), request.conversation_id)
        return pb.GetConversationResponse(conversation=converters.conversation_to_proto(record))

    async def ListConversations(
        self, request: pb.ListConversationsRequest, context: Context
    ) -> pb.ListConversationsResponse:
        records, token = await self._conversations.list(
            caller_id(), page_size=request.page_size, page_token=request.page_token
        )
        return pb.ListConversationsResponse(
            conversations=[converters.conversation_to_proto(r, messages=False) for r in records],
            next_page_token=token,
        )

    async def AppendMessages(
        self, request: pb.AppendMessagesRequest, context: Context
    ) -> pb.AppendMessagesResponse:
        record = await self._conversations.append(
            caller_id(),
            request.conversation_id,
            converters.messages_from_proto(request.messages),
        )
        return pb.AppendMessagesResponse(conversation=converters.conversation_to_proto(record))

    async def DeleteConversation(
        self, request: pb.DeleteConversationRequest, context: Context
    ) -> pb.DeleteConversationResponse:
        await self._conversations.delete(caller_id(), request.conversation_id)
        return pb.DeleteConversationResponse()


class SearchServicer(pb_grpc.SearchServiceServicer):
    """gRPC face of the semantic-search collections."""

    def __init__(self, collections: CollectionStore) -> None:
        self._collections = collections

    async def CreateCollection(
        self, request: pb.CreateCollectionRequest, context: Context
    ) -> pb.CreateCollectionResponse:
        info = await self._collections.create(request.name, request.embedding_model)
        return pb.CreateCollectionResponse(collection=converters.collection_to_proto(info))

    async def GetCollection(
        self, request: pb.GetCollectionRequest, context: Context
    ) -> pb.GetCollectionResponse:
        info = await self._collections.get(request.name)
        return pb.GetCollectionResponse(collection=converters.collection_to_proto(info))

    async def ListCollections(
        self, request: pb.ListCollectionsRequest, context: Context
    ) -> pb.ListCollectionsResponse:
        page = page_request(request.page_size, request.page_token, scope="collections")
        infos, token = paginate(await self._collections.list(), lambda c: c.name, page)
        return pb.ListCollectionsResponse(
            collections=[converters.collection_to_proto(i) for i in infos], next_page_token=token
        )

    async def DeleteCollection(
        self, request: pb.DeleteCollectionRequest, context: Context
    ) -> pb.DeleteCollectionResponse:
        await self._collections.delete(request.name)
        return pb.DeleteCollectionResponse()

    async def UpsertDocuments(
        self, request: pb.UpsertDocumentsRequest, context: Context
    ) -> pb.UpsertDocumentsResponse:
        documents = converters.documents_from_proto(request.documents)
        count = await self._collections.upsert(request.collection, documents)
        return pb.UpsertDocumentsResponse(upserted_count=count)

    async def DeleteDocuments(
        self, request: pb.DeleteDocumentsRequest, context: Context
    ) -> pb.DeleteDocumentsResponse:
        count = await self._collections.delete_documents(request.collection, list(request.ids))
        return pb.DeleteDocumentsResponse(deleted_count=count)

    async def Search(self, request: pb.SearchRequest, context: Context) -> pb.SearchResponse:
        hits = await self._collections.search(
            request.collection,
            request.query,
            top_k=request.top_k or 5,
            filter=converters.struct_to_dict(request.filter)
            if request.HasField("filter")
            else None,
            min_score=request.min_score if request.HasField("min_score") else None,
        )
        return pb.SearchResponse(hits=[converters.hit_to_proto(h) for h in hits])


class UsageServicer(pb_grpc.UsageServiceServicer):
    """gRPC face of usage totals and budgets; a key sees its own unless it holds llm:admin."""

    def __init__(self, ledger: UsageLedger, budgets: BudgetStore) -> None:
        self._ledger = ledger
        self._budgets = budgets

    async def GetUsage(self, request: pb.GetUsageRequest, context: Context) -> pb.GetUsageResponse:
        key = visible_key(request.api_key_id, allow_all=True)
        start, end = converters.day_range(request)
        rows = await self._ledger.totals(
            api_key_id=None if key == ALL_KEYS else key, model=request.model, start=start, end=end
        )
        return pb.GetUsageResponse(totals=[converters.usage_total_to_proto(r) for r in rows])

    async def SetBudget(
        self, request: pb.SetBudgetRequest, context: Context
    ) -> pb.SetBudgetResponse:
        state = await self._budgets.set(
            request.api_key_id, request.limit_usd, converters.budget_period(request.period)
        )
        return pb.SetBudgetResponse(budget=converters.budget_to_proto(state))

    async def GetBudget(
        self, request: pb.GetBudgetRequest, context: Context
    ) -> pb.GetBudgetResponse:
        state = await self._budgets.get(visible_key(request.api_key_id, allow_all=False))
        return pb.GetBudgetResponse(budget=converters.budget_to_proto(state))

    async def DeleteBudget(
        self, request: pb.DeleteBudgetRequest, context: Context
    ) -> pb.DeleteBudgetResponse:
        await self._budgets.delete(request.api_key_id)
        return pb.DeleteBudgetResponse()


ALL_KEYS = "*"
ADMIN_SCOPE = "llm:admin"


def visible_key(asked: str, *, allow_all: bool) -> str:
    """The key id a usage or budget query may read: the caller's own by default; another key's
    (or "*", every key's) only with llm:admin.

    Raises:
        PermissionDenied: Another key's figures without llm:admin.
        InvalidArgument: "*" where it is not accepted.
    """
    key = current_api_key.get()
    own = key.id if key is not None else ANONYMOUS
    if not asked or asked == own:
        return own
    if asked == ALL_KEYS and not allow_all:
        raise InvalidArgument.for_field("api_key_id", "'*' is not accepted here")
    if key is not None and not key.allows(ADMIN_SCOPE):
        raise PermissionDenied(f"reading another key's figures needs the {ADMIN_SCOPE} scope")
    return asked
