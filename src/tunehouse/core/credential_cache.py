"""A short-lived, per-process memory of verified credentials, so that polling clients cost neither a database
round trip nor a Fernet decryption per request.

Only hits are kept (a key created a moment ago works at once), each for TUNEHOUSE_CREDENTIAL_CACHE_S seconds
(default 5; 0 turns the cache off). A revocation in this process takes effect at once, even against a lookup
that raced it; one made by another process (a replica, the CLI) within the TTL.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from cachetools import TTLCache

from tunehouse.core.accounts import find_api_key_account, find_signing_secret, hash_api_key
from tunehouse.core.secrets_box import SecretBox
from tunehouse.store.db import Database

TTL_ENV = "TUNEHOUSE_CREDENTIAL_CACHE_S"
DEFAULT_TTL_S = 5.0
MAX_ENTRIES = 10_000

V = TypeVar("V")


@dataclass(frozen=True)
class BearerHit:
    account_id: int
    account_name: str


@dataclass(frozen=True)
class SigningHit:
    account_id: int
    secret_key: str
    # Signing keys derived from secret_key, by the auth prefix they were derived for (a client signs many
    # requests with one timestamp). Kept with the hit, so they go when it does: on revocation, at the TTL.
    derived: dict[str, str] = field(default_factory=dict, compare=False, repr=False)


class _Memory(Generic[V]):
    """Values by credential lookup (access key, or the api key's hash), forgotten after the TTL."""

    def __init__(self, ttl: float, clock: Callable[[], float]) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._cache: TTLCache[str, V] | None = (
            TTLCache(maxsize=MAX_ENTRIES, ttl=ttl, timer=clock) if ttl > 0 else None
        )
        self._revoked: set[str] = set()  # revocation is final: a small set that only grows

    def get(self, lookup: str) -> V | None:
        if self._cache is None:
            return None
        with self._lock:
            return self._cache.get(lookup)

    def put(self, lookup: str, value: V) -> None:
        if self._cache is None:
            return
        with self._lock:
            if lookup not in self._revoked:
                self._cache[lookup] = value

    def revoke(self, lookup: str) -> None:
        with self._lock:
            self._revoked.add(lookup)
            if self._cache is not None:
                self._cache.pop(lookup, None)

    def revoked(self, lookup: str) -> bool:
        with self._lock:
            return lookup in self._revoked


class CredentialCache:
    def __init__(self, ttl: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if ttl is None:
            ttl = float(os.environ.get(TTL_ENV, DEFAULT_TTL_S))
        self.bearer_memory: _Memory[BearerHit] = _Memory(ttl, clock)
        self.signing_memory: _Memory[SigningHit] = _Memory(ttl, clock)

    # Cheap checks the event loop may make; None means "ask the database" (the *_lookup calls below).
    def cached_bearer(self, api_key: str) -> BearerHit | None:
        return self.bearer_memory.get(hash_api_key(api_key))

    def cached_signing(self, access_key: str) -> SigningHit | None:
        return self.signing_memory.get(access_key)

    def bearer_lookup(self, db: Database, api_key: str) -> BearerHit | None:
        lookup = hash_api_key(api_key)
        with db.session() as s:
            account = find_api_key_account(s, api_key)
            hit = None if account is None else BearerHit(account.id, account.name)
        if hit is None or self.bearer_memory.revoked(lookup):
            return None
        self.bearer_memory.put(lookup, hit)
        return hit

    def signing_lookup(self, db: Database, box: SecretBox, access_key: str) -> SigningHit | None:
        with db.session() as s:
            found = find_signing_secret(s, box, access_key)
        if found is None or self.signing_memory.revoked(access_key):
            return None
        hit = SigningHit(found[0].id, found[1])
        self.signing_memory.put(access_key, hit)
        return hit

    def revoke(self, kind: str, lookup: str) -> None:
        """`lookup` as stored on the credential row: the access key, or the api key's hash."""
        (self.signing_memory if kind == "aksk" else self.bearer_memory).revoke(lookup)


_shared: CredentialCache | None = None


def shared() -> CredentialCache:
    """This process's cache (built on first use, so the TTL is read after the environment is set)."""
    global _shared
    if _shared is None:
        _shared = CredentialCache()
    return _shared
