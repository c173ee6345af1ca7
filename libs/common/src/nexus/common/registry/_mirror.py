"""The in-memory mirror of one service's registry, fed by a KV watcher, and traffic routing.

Every replica holds one, so that `resolve` is a plain dictionary lookup on the request path, and
replicas agree within milliseconds after any of them changed the registry.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Collection
from dataclasses import dataclass, field

from nexus.common.errors import NotFound
from nexus.common.registry._records import (
    ALIAS,
    DELETED,
    READY,
    VERSION,
    Key,
    decode_alias,
    decode_version,
    parse_key,
)
from nexus.common.registry._types import (
    DEFAULT_ALIAS,
    AliasInfo,
    ModelChange,
    ModelInfo,
    ModelVersionInfo,
    Resolved,
)

log = logging.getLogger(__name__)


@dataclass
class _Model:
    versions: dict[str, ModelVersionInfo] = field(default_factory=dict)
    aliases: dict[str, AliasInfo] = field(default_factory=dict)
    keys: set[str] = field(default_factory=set)  # every live key, pending and tombstones too
    highest: int = 0  # the highest version number taken, deleted ones included

    @property
    def visible(self) -> bool:
        return bool(self.versions or self.aliases)

    def info(self, name: str) -> ModelInfo:
        versions = sorted(self.versions.values(), key=lambda v: int(v.version))
        aliases = sorted(self.aliases.values(), key=lambda a: a.alias)
        return ModelInfo(name, tuple(versions), tuple(aliases))


class Mirror:
    """One service's models as its KV records say, applied one KV entry at a time."""

    def __init__(self, service: str) -> None:
        self._service = service
        self._models: dict[str, _Model] = {}

    def apply(self, key: str, value: bytes, *, removed: bool) -> ModelChange | None:
        """Applies one KV entry (a put, or a delete/purge when `removed`).

        Returns:
            What changed, or None when nothing visible did (a pending version, a replayed
            entry, a foreign or malformed key).
        """
        parsed = parse_key(self._service, key)
        if parsed is None:
            return None
        if removed:
            return self._remove(key, parsed)
        model = self._models.setdefault(parsed.name, _Model())
        model.keys.add(key)
        try:
            if parsed.kind == VERSION:
                return self._put_version(model, parsed, value)
            return self._put_alias(model, parsed, value)
        except (ValueError, KeyError, TypeError) as err:
            log.error("ignoring the malformed registry record %s: %r", key, err)
            return None

    def _put_version(self, model: _Model, key: Key, value: bytes) -> ModelChange | None:
        model.highest = max(model.highest, int(key.ident))
        state, info = decode_version(self._service, key, value)
        if state == READY and info is not None and key.ident not in model.versions:
            model.versions[key.ident] = info
            return ModelChange("registered", key.name, key.ident)
        if state == DELETED and model.versions.pop(key.ident, None) is not None:
            return ModelChange("version_deleted", key.name, key.ident)
        return None

    def _put_alias(self, model: _Model, key: Key, value: bytes) -> ModelChange | None:
        change, info = decode_alias(key, value)
        if model.aliases.get(key.ident) == info:
            return None  # replayed after the watcher re-subscribed
        model.aliases[key.ident] = info
        version = info.splits[0][0] if change == "promoted" and info.splits else ""
        return ModelChange(change, key.name, version, key.ident)

    def _remove(self, key: str, parsed: Key) -> ModelChange | None:
        model = self._models.get(parsed.name)
        if model is None or key not in model.keys:
            return None
        model.keys.discard(key)
        if parsed.kind == ALIAS:
            model.aliases.pop(parsed.ident, None)
        dropped = parsed.kind == VERSION and model.versions.pop(parsed.ident, None) is not None
        if not model.keys:
            del self._models[parsed.name]
            return ModelChange("deleted", parsed.name)
        return ModelChange("version_deleted", parsed.name, parsed.ident) if dropped else None

    def model(self, name: str) -> ModelInfo | None:
        """The model, or None when it has no version nor alias."""
        model = self._models.get(name)
        return model.info(name) if model is not None and model.visible else None

    def names(self) -> list[str]:
        """The names of the visible models, sorted."""
        return sorted(name for name, model in self._models.items() if model.visible)

    def keys(self, name: str) -> list[Key]:
        """Every KV key of the model, pending versions and tombstones included, aliases first."""
        model = self._models.get(name)
        parsed = [parse_key(self._service, key) for key in model.keys] if model else []
        return sorted(
            (k for k in parsed if k is not None), key=lambda k: (k.kind != ALIAS, k.ident)
        )

    def made_by(self, name: str, call: str) -> ModelVersionInfo | None:
        """The version of `name` that the idempotent call `call` registered, if any."""
        model = self._models.get(name)
        versions = model.versions.values() if model is not None else ()
        return next((info for info in versions if info.call == call), None)

    def next_version(self, name: str) -> int:
        """The lowest version number not yet taken, as far as this mirror knows."""
        model = self._models.get(name)
        return (model.highest if model is not None else 0) + 1

    def resolve(self, name: str, alias: str, version: str, routing_key: str) -> Resolved:
        """Which version serves a request; see `ModelRegistry.resolve`."""
        model = self._models.get(name)
        if model is None or not model.visible:
            raise NotFound(f"model {name!r} is not registered in {self._service}")
        if version:
            if version not in model.versions:
                have = ", ".join(sorted(model.versions, key=int)) or "none"
                raise NotFound(f"model {name!r} has no version {version} (versions: {have})")
            return Resolved(name, version, "")
        alias = alias or DEFAULT_ALIAS
        chosen = _routed(model, name, alias, routing_key)
        return Resolved(name, chosen, alias)


def _routed(model: _Model, name: str, alias: str, routing_key: str) -> str:
    info = model.aliases.get(alias)
    if info is None:
        have = ", ".join(sorted(model.aliases)) or "none yet"
        raise NotFound(
            f"model {name!r} has no alias {alias!r} (aliases: {have}); promote a version to it"
        )
    chosen = pick(info, model.versions, routing_key)
    if chosen is None:
        raise NotFound(f"alias {alias!r} of model {name!r} routes to no existing version")
    return chosen


def pick(alias: AliasInfo, live: Collection[str], routing_key: str = "") -> str | None:
    """Draws a version of `alias` by weight, among the `live` ones.

    With a routing key the draw is sticky: a hash of model, alias and key picks a point in
    [0, total weight), and the version whose cumulative range holds it serves. The same key
    keeps its version while the split stays; moving weight moves only the keys in between.
    Without a key the draw is random.
    """
    splits = [(v, weight) for v, weight in alias.splits if weight > 0 and v in live]
    total = sum(weight for _, weight in splits)
    if total == 0:
        return None
    if routing_key:
        point = _point(f"{alias.name}/{alias.alias}/{routing_key}", total)
    else:
        point = random.randrange(total)  # not for security: a fair draw is all it takes
    for version, weight in splits:
        if point < weight:
            return version
        point -= weight
    return None  # unreachable: point < total


def _point(text: str, total: int) -> int:
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "big") % total
