"""Scopes: what a key may do, and what each RPC requires (read from the proto descriptors).

A scope is `<area>:<verb>` (`anomaly:invoke`, `models:read`). A key's grants may also be `*`
(everything) or `<area>:*` (every verb of one area). One implication keeps admin keys usable
without listing read separately: `<area>:admin` grants `<area>:read`. Nothing else is implied:
`models:admin` does not grant `anomaly:invoke`, and `anomaly:admin` does not grant
`anomaly:invoke`.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import re
import sys
from collections.abc import Iterable

from google.protobuf import descriptor_pool

from nexus.common.errors import FieldViolation, InvalidArgument

_NAME = r"[a-z][a-z0-9_-]*"
_GRANT = re.compile(rf"\*|{_NAME}:(\*|{_NAME})")


def scope_allows(granted: Iterable[str], required: str) -> bool:
    """Whether grants `granted` cover scope `required` (an empty `required` needs none)."""
    if not required:
        return True
    grants = set(granted)
    area, _, verb = required.partition(":")
    if grants & {"*", required, f"{area}:*"}:
        return True
    return verb == "read" and f"{area}:admin" in grants


def validate_scopes(scopes: Iterable[str]) -> None:
    """Checks grants for a new key.

    Raises:
        InvalidArgument: When there is none, or one is not `*`, `<area>:*` or `<area>:<verb>`
            (lower case letters, digits, `_` and `-`), with one violation per bad scope.
    """
    items = [scopes] if isinstance(scopes, str) else list(scopes)
    if not items:
        raise InvalidArgument.for_field("scopes", "at least one scope is required")
    bad = [
        FieldViolation(f"scopes[{i}]", f"{s!r} is not '*', '<area>:*' or '<area>:<verb>'")
        for i, s in enumerate(items)
        if not _GRANT.fullmatch(s)
    ]
    if bad:
        raise InvalidArgument(f"invalid scope: {bad[0].description}", violations=bad)


@functools.cache
def load_api_descriptors() -> int:
    """Imports every module under `nexus.api` once, so the default pool knows every RPC.

    Returns:
        How many modules were imported.
    """
    import nexus.api

    names = [m.name for m in pkgutil.walk_packages(nexus.api.__path__, prefix="nexus.api.")]
    for name in names:
        importlib.import_module(name)
    return len(names)


@functools.lru_cache(maxsize=4096)
def required_scope(full_method: str) -> str:
    """The scope an RPC requires, from its `nexus.common.v1.required_scope` option.

    Args:
        full_method: `/nexus.anomaly.v1.AnomalyService/ScorePoints` (as gRPC names it) or
            `nexus.anomaly.v1.AnomalyService.ScorePoints`.

    Returns:
        The scope, or "" when the method has no such option or is unknown to `nexus.api`: any
        valid key may call it.
    """
    from nexus.api.common.v1 import options_pb2

    load_api_descriptors()
    name = full_method.lstrip("/").replace("/", ".")
    try:
        method = descriptor_pool.Default().FindMethodByName(name)
    except KeyError:
        return ""
    return str(method.GetOptions().Extensions[options_pb2.required_scope])


def scopes_of_rpcs(excluding: Iterable[str] = ()) -> list[str]:
    """Every scope some RPC of `nexus.api` requires, sorted: what a service key needs to call
    any of them. RPCs of the areas in `excluding` (`orchestrator` for
    `nexus.orchestrator.v1.*`) do not count.
    """
    load_api_descriptors()
    skipped = {f"nexus.{area}." for area in excluding}
    found: set[str] = set()
    for module in list(sys.modules.values()):
        if not getattr(module, "__name__", "").startswith("nexus.api."):
            continue
        file = getattr(module, "DESCRIPTOR", None)
        for service in getattr(file, "services_by_name", {}).values():
            if any(service.full_name.startswith(prefix) for prefix in skipped):
                continue
            found.update(required_scope(m.full_name) for m in service.methods)
    return sorted(found - {""})
