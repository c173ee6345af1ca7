"""Signed pickles: the registry unpickles only what a registry holding the same key wrote.

Format: b"NXS1" + HMAC-SHA256(signing key, payload) (32 bytes) + payload, payload = pickle bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import pickle

from nexus.common.errors import FailedPrecondition

MAGIC = b"NXS1"
_MAC_BYTES = 32
NO_KEY = "registry_signing_key is not set"


def is_signed(artifact: bytes) -> bool:
    """Whether `artifact` claims to be a signed pickle (says nothing of its signature)."""
    return artifact.startswith(MAGIC)


def sign(key: bytes, payload: bytes) -> bytes:
    """The signed artifact of `payload`.

    Raises:
        FailedPrecondition: When `key` is empty.
    """
    _require(key)
    return MAGIC + _mac(key, payload) + payload


def verified_payload(key: bytes, artifact: bytes) -> bytes:
    """The payload of a signed artifact whose signature verifies under `key`.

    Raises:
        FailedPrecondition: When `key` is empty, the artifact is not signed, or the signature
            does not verify (wrong key, or tampered bytes).
    """
    _require(key)
    if not is_signed(artifact) or len(artifact) < len(MAGIC) + _MAC_BYTES:
        raise FailedPrecondition("the artifact is not signed by a Nexus registry", "UNSIGNED")
    mac = artifact[len(MAGIC) : len(MAGIC) + _MAC_BYTES]
    payload = artifact[len(MAGIC) + _MAC_BYTES :]
    if not hmac.compare_digest(mac, _mac(key, payload)):
        raise FailedPrecondition("the artifact's signature does not verify", "BAD_SIGNATURE")
    return payload


def dumps_signed(key: bytes, obj: object) -> bytes:
    """Pickles and signs `obj`."""
    _require(key)
    return sign(key, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def loads_verified(key: bytes, artifact: bytes) -> object:
    """Unpickles a signed artifact, only after its signature verified."""
    return pickle.loads(verified_payload(key, artifact))


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()


def _require(key: bytes) -> None:
    if not key:
        raise FailedPrecondition(NO_KEY, "NO_SIGNING_KEY")
