"""Accounts (tenants) and their credentials: AK/SK pairs for BCE signing, bearer API keys."""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from tunehouse.core.clock import utcnow
from tunehouse.core.errors import InvalidParameter, NotFound
from tunehouse.core.secrets_box import SecretBox
from tunehouse.store.models import Account, Credential

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
API_KEY_PREFIX = "th-"


@dataclass(frozen=True)
class IssuedKeys:
    account: str
    access_key: str
    secret_key: str
    api_key: str


@functools.lru_cache(maxsize=4096)  # polling clients present the same few keys on every request
def hash_api_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def get_or_create_account(s: Session, name: str) -> Account:
    if not _NAME.match(name):
        raise InvalidParameter("account", "account names are 1-64 letters, digits, '_', '.', '-'")
    acc = s.scalar(select(Account).where(Account.name == name))
    if acc is None:
        acc = Account(name=name, created_at=utcnow())
        s.add(acc)
        s.flush()
    return acc


def set_run_limit(s: Session, account: Account, limit: int | None) -> None:
    """At most ``limit`` queued or running runs at once for this account; None lifts the limit."""
    if limit is not None and limit < 1:
        raise InvalidParameter("max_active_runs", "must be at least 1 (or no limit)")
    account.max_active_runs = limit


def set_deployment_limit(s: Session, account: Account, limit: int | None) -> None:
    """At most ``limit`` deployments at once for this account; None lifts the limit."""
    if limit is not None and limit < 1:
        raise InvalidParameter("max_deployments", "must be at least 1 (or no limit)")
    account.max_deployments = limit


def issue_keys(s: Session, box: SecretBox, account: Account, label: str = "") -> IssuedKeys:
    access_key = secrets.token_hex(16)
    secret_key = secrets.token_hex(16)
    api_key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    s.add(
        Credential(
            account_id=account.id,
            kind="aksk",
            lookup=access_key,
            secret_enc=box.seal(secret_key),
            label=label,
            created_at=now,
        )
    )
    s.add(
        Credential(
            account_id=account.id,
            kind="api_key",
            lookup=hash_api_key(api_key),
            label=label or api_key[:10],
            created_at=now,
        )
    )
    s.flush()
    return IssuedKeys(account.name, access_key, secret_key, api_key)


def find_signing_secret(s: Session, box: SecretBox, access_key: str) -> tuple[Account, str] | None:
    cred = s.scalar(
        select(Credential).where(
            Credential.kind == "aksk", Credential.lookup == access_key, Credential.revoked_at.is_(None)
        )
    )
    if cred is None:
        return None
    return s.get_one(Account, cred.account_id), box.open(cred.secret_enc or "")


def find_api_key_account(s: Session, api_key: str) -> Account | None:
    cred = s.scalar(
        select(Credential).where(
            Credential.kind == "api_key",
            Credential.lookup == hash_api_key(api_key),
            Credential.revoked_at.is_(None),
        )
    )
    return None if cred is None else s.get_one(Account, cred.account_id)


def count_accounts(s: Session) -> int:
    return len(s.scalars(select(Account.id)).all())


def get_account(s: Session, account_id: int) -> Account:
    acc = s.get(Account, account_id)
    if acc is None:
        raise NotFound("account", account_id)
    return acc


def find_api_key_credential(s: Session, api_key: str) -> Credential | None:
    """The active credential behind a bearer key (the console binds its sessions to it)."""
    return s.scalar(
        select(Credential).where(
            Credential.kind == "api_key",
            Credential.lookup == hash_api_key(api_key),
            Credential.revoked_at.is_(None),
        )
    )


def list_credentials(s: Session, account_id: int) -> list[Credential]:
    q = select(Credential).where(Credential.account_id == account_id).order_by(Credential.id)
    return list(s.scalars(q))


def get_credential(s: Session, account_id: int, credential_id: int) -> Credential:
    cred = s.scalar(
        select(Credential).where(Credential.account_id == account_id, Credential.id == credential_id)
    )
    if cred is None:
        raise NotFound("credential", credential_id)
    return cred


def revoke_credential(s: Session, cred: Credential) -> None:
    """Idempotent: the first revocation time is kept. This process stops accepting it once committed."""
    if cred.revoked_at is None:
        cred.revoked_at = utcnow()
        s.flush()
        from tunehouse.core.credential_cache import shared  # it builds on this module

        kind, lookup = cred.kind, cred.lookup
        event.listen(s, "after_commit", lambda _s: shared().revoke(kind, lookup), once=True)


def credentials_with_accounts(s: Session, account: str | None = None) -> list[tuple[Credential, str]]:
    """Every credential (revoked ones too) with its account's name, oldest first; one account's if named."""
    q = select(Credential, Account.name).join(Account, Account.id == Credential.account_id)
    if account is not None:
        q = q.where(Account.name == account)
    return [(c, name) for c, name in s.execute(q.order_by(Credential.id)).tuples()]


def find_credential(s: Session, ref: str) -> Credential:
    """A credential by its id, its access key, or the API key itself (only its hash is stored)."""
    ref = ref.strip()
    if ref.startswith(API_KEY_PREFIX):
        cond = Credential.lookup == hash_api_key(ref)
    elif ref.isdigit() and len(ref) < 16:
        cond = Credential.id == int(ref)
    else:
        cond = (Credential.kind == "aksk") & (Credential.lookup == ref)
    cred = s.scalar(select(Credential).where(cond))
    if cred is None:
        raise NotFound("credential", ref[:40])
    return cred
