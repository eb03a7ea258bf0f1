"""Qianfan V2 bearer tokens: stateless, bound to the access key and its secret, and ending at their expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tunehouse.api.qianfan import bearer

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)


def test_a_token_verifies_to_the_access_key_it_was_issued_to() -> None:
    token = bearer.issue("AK1", "SK1", LATER)
    assert bearer.is_bearer_token(token)
    assert bearer.verify(token, {"AK1": "SK1"}.get, NOW) == "AK1"


def test_an_expired_token_is_refused() -> None:
    token = bearer.issue("AK1", "SK1", LATER)
    assert bearer.verify(token, {"AK1": "SK1"}.get, LATER + timedelta(seconds=1)) is None


def test_a_token_is_refused_once_its_key_is_gone_or_its_secret_changed() -> None:
    token = bearer.issue("AK1", "SK1", LATER)
    assert bearer.verify(token, {}.get, NOW) is None
    assert bearer.verify(token, {"AK1": "SK2"}.get, NOW) is None


def test_a_tampered_token_is_refused() -> None:
    token = bearer.issue("AK1", "SK1", LATER)
    ak, at, mac = token.removeprefix(bearer.PREFIX).split("/")
    longer = f"{bearer.PREFIX}{ak}/{int(at) + 3600}/{mac}"
    assert bearer.verify(longer, {"AK1": "SK1"}.get, NOW) is None
    assert bearer.verify(bearer.PREFIX + "AK1", {"AK1": "SK1"}.get, NOW) is None
    assert bearer.verify("th-some-api-key", {"AK1": "SK1"}.get, NOW) is None
