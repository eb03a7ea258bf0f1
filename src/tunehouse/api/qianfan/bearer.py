"""Qianfan V2 bearer tokens (`GET /v1/BCE-BEARER/token`): issued to a BCE-signed caller, then sent as
`Authorization: Bearer` to `/v2/chat/completions`.

A token is stateless: the access key, its expiry and an HMAC of both under the key's secret. Revoking the
key (or rotating its secret) ends every token issued for it; nothing is stored.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from datetime import UTC, datetime

PREFIX = "bce-v3/THB-"


def _mac(secret_key: str, access_key: str, expires: int) -> str:
    return hmac.new(secret_key.encode(), f"{access_key}/{expires}".encode(), hashlib.sha256).hexdigest()


def issue(access_key: str, secret_key: str, expires: datetime) -> str:
    at = int(expires.timestamp())
    return f"{PREFIX}{access_key}/{at}/{_mac(secret_key, access_key, at)}"


def is_bearer_token(token: str) -> bool:
    return token.startswith(PREFIX)


def access_key_of(token: str) -> str | None:
    parts = token.removeprefix(PREFIX).split("/")
    return parts[0] if is_bearer_token(token) and len(parts) == 3 and parts[0] else None


def verify(token: str, find_secret: Callable[[str], str | None], now: datetime | None = None) -> str | None:
    """The access key the token was issued to, or None when it is malformed, expired or not ours."""
    ak = access_key_of(token)
    if ak is None:
        return None
    _, at_text, mac = token.removeprefix(PREFIX).split("/")
    if not at_text.isdigit() or int(at_text) <= (now or datetime.now(UTC)).timestamp():
        return None
    secret = find_secret(ak)
    if secret is None or not hmac.compare_digest(mac, _mac(secret, ak, int(at_text))):
        return None
    return ak
