"""The credential cache: hits kept for the TTL, revocations here final at once, no negative entries."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import update

from tunehouse.api.qianfan.auth import derived_key
from tunehouse.core import accounts, credential_cache
from tunehouse.core.clock import utcnow
from tunehouse.core.credential_cache import CredentialCache
from tunehouse.core.secrets_box import SecretBox
from tunehouse.store.db import Database
from tunehouse.store.models import Credential

TTL = 5.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    database.migrate()
    yield database
    database.dispose()


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(Fernet.generate_key())


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> CredentialCache:
    """Installed as this process's cache, which is the one revocations reach."""
    made = CredentialCache(ttl=TTL, clock=clock)
    monkeypatch.setattr(credential_cache, "_shared", made)
    return made


def issue(db: Database, box: SecretBox, name: str = "acme") -> accounts.IssuedKeys:
    with db.session() as s:
        return accounts.issue_keys(s, box, accounts.get_or_create_account(s, name))


def revoke_elsewhere(db: Database, lookup: str) -> None:
    """As another process would: straight in the database, unseen by this process's cache."""
    with db.session() as s:
        s.execute(update(Credential).where(Credential.lookup == lookup).values(revoked_at=utcnow()))


def revoke_here(db: Database, lookup: str) -> None:
    with db.session() as s:
        cred = s.query(Credential).filter_by(lookup=lookup).one()
        accounts.revoke_credential(s, cred)


def test_a_bearer_hit_is_served_from_memory_until_the_ttl_ends(
    db: Database, box: SecretBox, cache: CredentialCache, clock: Clock
) -> None:
    keys = issue(db, box)
    hit = cache.bearer_lookup(db, keys.api_key)
    assert hit is not None and hit.account_name == "acme"
    revoke_elsewhere(db, accounts.hash_api_key(keys.api_key))
    clock.now += TTL - 0.1
    assert cache.cached_bearer(keys.api_key) == hit
    clock.now += 0.2
    assert cache.cached_bearer(keys.api_key) is None
    assert cache.bearer_lookup(db, keys.api_key) is None


def test_a_signing_secret_is_served_from_memory_until_the_ttl_ends(
    db: Database, box: SecretBox, cache: CredentialCache, clock: Clock
) -> None:
    keys = issue(db, box)
    hit = cache.signing_lookup(db, box, keys.access_key)
    assert hit is not None and hit.secret_key == keys.secret_key
    revoke_elsewhere(db, keys.access_key)
    assert cache.cached_signing(keys.access_key) == hit
    clock.now += TTL + 0.1
    assert cache.cached_signing(keys.access_key) is None
    assert cache.signing_lookup(db, box, keys.access_key) is None


def test_a_revocation_in_this_process_ends_both_kinds_at_once(
    db: Database, box: SecretBox, cache: CredentialCache
) -> None:
    keys = issue(db, box)
    assert cache.bearer_lookup(db, keys.api_key) is not None
    assert cache.signing_lookup(db, box, keys.access_key) is not None
    revoke_here(db, accounts.hash_api_key(keys.api_key))
    revoke_here(db, keys.access_key)
    assert cache.cached_bearer(keys.api_key) is None
    assert cache.cached_signing(keys.access_key) is None
    assert cache.bearer_lookup(db, keys.api_key) is None
    assert cache.signing_lookup(db, box, keys.access_key) is None


def test_a_lookup_that_read_before_a_revocation_cannot_store_it_after(cache: CredentialCache) -> None:
    hit = credential_cache.SigningHit(1, "secret")
    cache.revoke("aksk", "AK1")
    cache.signing_memory.put("AK1", hit)  # what a racing lookup would do after its read
    assert cache.cached_signing("AK1") is None


def test_a_revocation_that_rolls_back_leaves_the_key_working(
    db: Database, box: SecretBox, cache: CredentialCache
) -> None:
    keys = issue(db, box)
    with pytest.raises(RuntimeError), db.session() as s:
        cred = s.query(Credential).filter_by(lookup=keys.access_key).one()
        accounts.revoke_credential(s, cred)
        raise RuntimeError("the request failed after revoking")
    assert cache.signing_lookup(db, box, keys.access_key) is not None


def test_unknown_keys_are_not_remembered(db: Database, box: SecretBox, cache: CredentialCache) -> None:
    assert cache.bearer_lookup(db, "th-not-issued-yet") is None
    keys = issue(db, box)
    assert cache.bearer_lookup(db, keys.api_key) is not None  # a key made a moment ago works at once


def test_a_zero_ttl_turns_the_cache_off(db: Database, box: SecretBox) -> None:
    off = CredentialCache(ttl=0)
    keys = issue(db, box)
    assert off.bearer_lookup(db, keys.api_key) is not None
    assert off.cached_bearer(keys.api_key) is None


def test_signing_keys_remembered_with_a_hit_go_with_it_when_the_key_is_revoked(
    db: Database, box: SecretBox, cache: CredentialCache
) -> None:
    keys = issue(db, box)
    hit = cache.signing_lookup(db, box, keys.access_key)
    assert hit is not None
    derived_key(hit, f"bce-auth-v1/{keys.access_key}/2024-05-01T08:00:00Z/300")
    assert hit.derived
    revoke_here(db, keys.access_key)
    assert cache.cached_signing(keys.access_key) is None  # nothing left to derive a request's key from
    assert cache.signing_lookup(db, box, keys.access_key) is None


def test_a_hit_looked_up_after_the_ttl_starts_with_no_remembered_signing_keys(
    db: Database, box: SecretBox, cache: CredentialCache, clock: Clock
) -> None:
    keys = issue(db, box)
    hit = cache.signing_lookup(db, box, keys.access_key)
    assert hit is not None
    derived_key(hit, f"bce-auth-v1/{keys.access_key}/2024-05-01T08:00:00Z/300")
    clock.now += TTL + 0.1
    assert cache.cached_signing(keys.access_key) is None
    fresh = cache.signing_lookup(db, box, keys.access_key)
    assert fresh is not None and fresh is not hit and not fresh.derived
