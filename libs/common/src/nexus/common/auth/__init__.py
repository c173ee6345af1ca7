"""Auth: API keys with scopes, stored hashed in NATS, checked by every service.

A key (`nxk_<id>_<secret>`) grants scopes such as `anomaly:invoke` or `models:admin` (or `*`,
`<area>:*`). Each RPC declares the scope it needs in its proto (`nexus.common.v1.required_scope`);
`AuthInterceptor` checks it on every call, `KeyStore` holds the keys, and `nexus keys` manages
them. See docs/adr/0006-api-keys.md.
"""

from nexus.common.auth._interceptor import (
    AuthInterceptor,
    credentials_from_metadata,
    current_api_key,
)
from nexus.common.auth._keys import KEY_PREFIX, ApiKey, hash_key, key_id_of, new_key
from nexus.common.auth._scopes import (
    load_api_descriptors,
    required_scope,
    scope_allows,
    scopes_of_rpcs,
    validate_scopes,
)
from nexus.common.auth._store import BUCKET, KeyStore, open_key_store

__all__ = [
    "BUCKET",
    "KEY_PREFIX",
    "ApiKey",
    "AuthInterceptor",
    "KeyStore",
    "credentials_from_metadata",
    "current_api_key",
    "hash_key",
    "key_id_of",
    "load_api_descriptors",
    "new_key",
    "open_key_store",
    "required_scope",
    "scope_allows",
    "scopes_of_rpcs",
    "validate_scopes",
]
