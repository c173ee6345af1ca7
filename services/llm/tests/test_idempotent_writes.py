"""Conversation and collection writes with an idempotency key: a retry changes nothing more,
also when it runs the call again because the first run stored its write but not its outcome
(its replica died in between: `lose_outcome` leaves what that leaves)."""

from __future__ import annotations

import uuid

import grpc
import pytest
from llm_service_testing import LlmClient, user

from nexus.api.llm.v1 import llm_service_pb2 as pb
from nexus.common.idempotency import METADATA_KEY
from nexus.common.server import ServiceHost
from nexus.common.testing.idempotency import lose_outcome

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


async def test_a_create_run_again_after_its_outcome_was_lost_makes_one_conversation(
    client: LlmClient, llm: ServiceHost, admin_key: str
) -> None:
    create = pb.CreateConversationRequest(model="tiny", labels={"run": uuid.uuid4().hex})
    key = str(uuid.uuid4())
    first = await client.conversations.CreateConversation(create, metadata=with_key(client, key))
    await lose_outcome(llm.nc, admin_key, key)
    again = await client.conversations.CreateConversation(create, metadata=with_key(client, key))
    assert again == first
    listed = await client.conversations.ListConversations(
        pb.ListConversationsRequest(page_size=100), metadata=client.metadata
    )
    assert [c.id for c in listed.conversations if c.labels == create.labels] == [
        first.conversation.id
    ]


async def test_an_append_run_again_after_its_outcome_was_lost_appends_once(
    client: LlmClient, llm: ServiceHost, admin_key: str
) -> None:
    created = await client.conversations.CreateConversation(
        pb.CreateConversationRequest(model="tiny"), metadata=client.metadata
    )
    conversation_id = created.conversation.id
    append = pb.AppendMessagesRequest(conversation_id=conversation_id, messages=[user("once")])
    key = str(uuid.uuid4())
    first = await client.conversations.AppendMessages(append, metadata=with_key(client, key))
    other = pb.AppendMessagesRequest(conversation_id=conversation_id, messages=[user("later")])
    await client.conversations.AppendMessages(other, metadata=with_key(client, str(uuid.uuid4())))
    await lose_outcome(llm.nc, admin_key, key)
    again = await client.conversations.AppendMessages(append, metadata=with_key(client, key))
    assert first.conversation.message_count == 1
    assert [m.content for m in again.conversation.messages] == ["once", "later"]
    got = await client.conversations.GetConversation(
        pb.GetConversationRequest(conversation_id=conversation_id), metadata=client.metadata
    )
    assert [m.content for m in got.conversation.messages] == ["once", "later"]


async def test_a_create_collection_run_again_after_its_outcome_was_lost_gets_it(
    client: LlmClient, llm: ServiceHost, admin_key: str
) -> None:
    create = pb.CreateCollectionRequest(name=f"idem-{uuid.uuid4().hex[:8]}")
    key = str(uuid.uuid4())
    first = await client.search.CreateCollection(create, metadata=with_key(client, key))
    await lose_outcome(llm.nc, admin_key, key)
    again = await client.search.CreateCollection(create, metadata=with_key(client, key))
    assert again == first
    other_call = str(uuid.uuid4())
    with pytest.raises(grpc.aio.AioRpcError) as another:
        await client.search.CreateCollection(create, metadata=with_key(client, other_call))
    assert another.value.code() == grpc.StatusCode.ALREADY_EXISTS
