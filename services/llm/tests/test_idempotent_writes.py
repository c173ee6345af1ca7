"""Conversation and collection writes with an idempotency key: a retry changes nothing more."""

from __future__ import annotations

import uuid

import grpc
import pytest
from llm_service_testing import LlmClient, user

from nexus.api.llm.v1 import llm_service_pb2 as pb
from nexus.common.idempotency import METADATA_KEY

pytestmark = pytest.mark.integration


def with_key(client: LlmClient, key: str) -> tuple[tuple[str, str], ...]:
    return (*client.metadata, (METADATA_KEY, key))


async def test_a_retried_create_and_append_write_once(client: LlmClient) -> None:
    create = pb.CreateConversationRequest(model="tiny", labels={"run": uuid.uuid4().hex})
    created_key, append_key = str(uuid.uuid4()), str(uuid.uuid4())
    first = await client.conversations.CreateConversation(
        create, metadata=with_key(client, created_key)
    )
    again = await client.conversations.CreateConversation(
        create, metadata=with_key(client, created_key)
    )
    assert again.conversation.id == first.conversation.id  # not a second conversation
    append = pb.AppendMessagesRequest(
        conversation_id=first.conversation.id, messages=[user("once")]
    )
    for _ in range(3):
        appended = await client.conversations.AppendMessages(
            append, metadata=with_key(client, append_key)
        )
        assert appended.conversation.message_count == 1
    got = await client.conversations.GetConversation(
        pb.GetConversationRequest(conversation_id=first.conversation.id), metadata=client.metadata
    )
    assert [m.content for m in got.conversation.messages] == ["once"]


async def test_a_retried_create_collection_is_not_already_exists(client: LlmClient) -> None:
    create = pb.CreateCollectionRequest(name=f"idem-{uuid.uuid4().hex[:8]}")
    key = str(uuid.uuid4())
    first = await client.search.CreateCollection(create, metadata=with_key(client, key))
    again = await client.search.CreateCollection(create, metadata=with_key(client, key))
    assert again == first
    with pytest.raises(grpc.aio.AioRpcError) as unkeyed:
        await client.search.CreateCollection(create, metadata=client.metadata)
    assert unkeyed.value.code() == grpc.StatusCode.ALREADY_EXISTS
