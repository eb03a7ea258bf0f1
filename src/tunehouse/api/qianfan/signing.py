"""BCE auth v1 signature verification (the scheme the qianfan SDK signs console requests with)."""

from __future__ import annotations

import functools
import hmac
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from urllib.parse import quote

PREFIX = "bce-auth-v1"
CLOCK_SKEW_S = 300


class AuthFailure(Exception):
    """`status` 401 (missing/malformed/expired) or 403 (unknown key, bad signature)."""

    def __init__(self, status: int, code: str, message: str, header_message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.header_message = header_message


def _denied(message: str) -> AuthFailure:
    return AuthFailure(401, "AccessDenied", message, f"AccessDenied, cause: {message}")


_STAMP = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})Z")


@functools.lru_cache(maxsize=256)  # a client signs its requests of one second with one stamp, twice each
def bce_time(stamp: str) -> datetime:
    """A BCE timestamp (YYYY-MM-DDTHH:MM:SSZ) as an aware datetime; ValueError when malformed. Not strptime:
    it cost a visible share of each signed poll."""
    m = _STAMP.fullmatch(stamp)
    if m is None:
        raise ValueError(stamp)
    return datetime(*(int(g) for g in m.groups()), tzinfo=UTC)  # type: ignore[misc]


@functools.lru_cache(maxsize=4096)  # the same header values and names come on every request of a client
def enc(value: str) -> str:
    """Percent-encode every byte but A-Z a-z 0-9 - _ . ~ (uppercase hex)."""
    return quote(value, safe="-_.~")


def canonical_request(
    method: str, path: str, query: Iterable[tuple[str, str]], headers: Mapping[str, str], signed: list[str]
) -> str:
    uri = quote(path, safe="/-_.~")
    q = "&".join(sorted(f"{enc(k)}={enc(v)}" for k, v in query if k.lower() != "authorization"))
    lines = []
    for name in signed:
        value = headers.get(name, "").strip()
        if value:
            lines.append(f"{enc(name.lower())}:{enc(value)}")
    return "\n".join([method.upper(), uri, q, "\n".join(sorted(lines))])


# (secret key, auth prefix) -> signing key: signing_key, or a memory of its answers.
Derive = Callable[[str, str], str]


def signing_key(secret_key: str, auth_prefix: str) -> str:
    """The key a request's signature is made with: the secret's HMAC of `bce-auth-v1/{ak}/{ts}/{exp}`."""
    return hmac.digest(secret_key.encode(), auth_prefix.encode(), "sha256").hex()


@functools.lru_cache(maxsize=64)
def _keyed(key: str) -> hmac.HMAC:
    """An HMAC-SHA256 state keyed with a signing key, to copy: a copy skips OpenSSL's per-call digest fetch
    and key setup, which cost a visible share of a signed poll under load. A pure function of the key: a
    request reaches it only with a key derived from a secret it was just found to have."""
    return hmac.new(key.encode(), digestmod="sha256")


def sign(secret_key: str, auth_prefix: str, canonical: str, derive: Derive | None = None) -> str:
    key = (derive or signing_key)(secret_key, auth_prefix)
    mac = _keyed(key).copy()
    mac.update(canonical.encode())
    return mac.hexdigest()


def verify(
    method: str,
    path: str,
    query: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    find_secret: Callable[[str], str | None],
    now: datetime | None = None,
    derive: Derive | None = None,
) -> str:
    """Check the request's Authorization header; returns the access key it was signed with.

    `headers` must be keyed by lowercase name; `derive` computes the signing key (default: signing_key).
    Raises AuthFailure with the spec's status and codes.
    """
    auth = headers.get("authorization", "")
    if not auth:
        raise _denied("the Authorization header is missing")
    parts = auth.strip().split("/")
    if len(parts) != 6 or parts[0] != PREFIX:
        raise _denied(
            "the Authorization header is not bce-auth-v1/{ak}/{timestamp}/{expiration}/{headers}/{sig}"
        )
    _, ak, stamp, expiration, signed_list, signature = parts
    try:
        signed_at = bce_time(stamp)
        lifetime = int(expiration)
    except ValueError:
        raise _denied("the Authorization timestamp or expiration is malformed") from None
    # The spec's table: a missing or malformed x-bce-date is a 401 like a malformed Authorization.
    date = headers.get("x-bce-date", "").strip()
    if not date:
        raise _denied("the x-bce-date header is missing")
    try:
        bce_time(date)
    except ValueError:
        raise _denied("the x-bce-date header is not YYYY-MM-DDTHH:MM:SSZ") from None
    signed = [h.strip().lower() for h in signed_list.split(";") if h.strip()]
    if "host" not in signed:
        raise _denied("the host header must be signed")
    secret = find_secret(ak)
    if secret is None:
        raise AuthFailure(
            403, "AccessDenied", "unknown access key", "NotFound, cause: Could not find credential."
        )
    now = now or datetime.now(UTC)
    age = (now - signed_at).total_seconds()
    if age < -CLOCK_SKEW_S:
        raise _denied("the request is signed in the future (clock skew)")
    if age > lifetime:
        raise _denied("the signature has expired")
    expected = sign(
        secret,
        f"{PREFIX}/{ak}/{stamp}/{expiration}",
        canonical_request(method, path, query, headers, signed),
        derive,
    )
    if not hmac.compare_digest(expected, signature.lower()):
        raise AuthFailure(
            403,
            "SignatureDoesNotMatch",
            "the signature does not match",
            "SignatureDoesNotMatch, cause: Fail to authn user: Signature does not match",
        )
    return ak
