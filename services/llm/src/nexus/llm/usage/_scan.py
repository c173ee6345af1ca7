"""Reading the latest value of many keys of a KV bucket at once."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncGenerator

from nats.errors import Error as NatsError
from nats.js import api
from nats.js.client import JetStreamContext

from nexus.common.errors import Unavailable

_FETCH_BATCH = 512
_FETCH_TIMEOUT_S = 5.0
_SCAN_INACTIVE_S = 30.0


async def scan_latest(
    js: JetStreamContext, stream: str, subjects: list[str]
) -> AsyncGenerator[tuple[str, bytes], None]:
    """The subject and latest message of every subject of a KV stream under `subjects`
    (deleted keys left out), read with one ephemeral consumer that is deleted afterwards.

    Raises:
        Unavailable: When NATS fails to answer.
    """
    name = f"usage_scan_{uuid.uuid4().hex}"
    config = api.ConsumerConfig(
        name=name,
        filter_subjects=subjects,
        deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
        ack_policy=api.AckPolicy.NONE,
        mem_storage=True,
        inactive_threshold=_SCAN_INACTIVE_S,
    )
    try:
        pending = (await js.add_consumer(stream, config)).num_pending
        sub = await js.pull_subscribe_bind(consumer=name, stream=stream)
    except (NatsError, TimeoutError) as err:
        raise Unavailable(f"cannot read the usage totals: {err!r}") from err
    try:
        while pending:
            try:
                msgs = await sub.fetch(min(pending, _FETCH_BATCH), timeout=_FETCH_TIMEOUT_S)
            except (NatsError, TimeoutError) as err:
                raise Unavailable(f"cannot read the usage totals: {err!r}") from err
            for msg in msgs:
                pending = msg.metadata.num_pending
                if (msg.headers or {}).get("KV-Operation") not in {"DEL", "PURGE"}:
                    yield msg.subject, msg.data
    finally:
        with contextlib.suppress(NatsError, TimeoutError):
            await sub.unsubscribe()
            await js.delete_consumer(stream, name)
