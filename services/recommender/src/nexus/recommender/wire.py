"""Interactions on the wire: `InteractionBatch` messages <-> domain interactions, checked the
same way whether a request or an event on the stream brought them."""

from __future__ import annotations

import math
from collections.abc import Sequence

from google.protobuf.timestamp_pb2 import Timestamp

from nexus.api.recommender.v1 import recommender_service_pb2 as pb
from nexus.common.errors import InvalidArgument
from nexus.recommender.recommending import Interaction

MAX_ID_CHARS = 256
MAX_TYPE_CHARS = 64


def interactions_of(
    given: Sequence[pb.Interaction], default_time: float, max_weight: float, where: str
) -> list[Interaction]:
    """Checked domain interactions; a weight of 0 is 1, a missing time `default_time`.

    Raises:
        InvalidArgument: An empty or too long id or type, a weight that is not finite, not
            positive or over `max_weight` (naming `where[i].field`).
    """
    return [_interaction(x, default_time, max_weight, f"{where}[{i}]") for i, x in enumerate(given)]


def _interaction(
    x: pb.Interaction, default_time: float, max_weight: float, where: str
) -> Interaction:
    for name, value in (("user_id", x.user_id), ("item_id", x.item_id)):
        if not value or len(value) > MAX_ID_CHARS:
            raise InvalidArgument.for_field(f"{where}.{name}", f"1-{MAX_ID_CHARS} characters")
    if len(x.type) > MAX_TYPE_CHARS:
        raise InvalidArgument.for_field(f"{where}.type", f"at most {MAX_TYPE_CHARS} characters")
    weight = x.weight or 1.0
    if not math.isfinite(weight) or weight <= 0 or weight > max_weight:
        raise InvalidArgument.for_field(
            f"{where}.weight", f"{x.weight} is not a finite number in (0, {max_weight:g}]"
        )
    time = x.time.seconds + x.time.nanos / 1e9 if x.HasField("time") else default_time
    return Interaction(x.user_id, x.item_id, weight, time, x.type)


def batch_of(interactions: Sequence[Interaction]) -> pb.InteractionBatch:
    """The message stored on the stream (every time set, every weight explicit)."""
    return pb.InteractionBatch(interactions=[_message(x) for x in interactions])


def _message(x: Interaction) -> pb.Interaction:
    time = Timestamp()
    time.FromNanoseconds(int(x.time * 1e9))
    return pb.Interaction(user_id=x.user, item_id=x.item, type=x.type, weight=x.weight, time=time)
