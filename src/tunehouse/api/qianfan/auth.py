"""Resolves the account behind a BCE-signed request (Qianfan V1 and V2)."""

from __future__ import annotations

from urllib.parse import parse_qsl

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool

from tunehouse.api.context import AppContext, get_ctx
from tunehouse.api.deps import bearer_hit, bearer_token
from tunehouse.api.edge import ORIGINAL_PATH
from tunehouse.api.qianfan import bearer, signing
from tunehouse.api.query_memo import per_query
from tunehouse.api.rate_limit import count_request
from tunehouse.core import credential_cache

# Signing keys a hit remembers (see SigningHit.derived): a few timestamps' worth of its clients' requests.
MAX_DERIVED = 16


def derived_key(hit: credential_cache.SigningHit, auth_prefix: str) -> str:
    """signing.signing_key for the hit's secret, remembered with the hit: one HMAC per request instead of
    two while a client signs with the same timestamp."""
    key = hit.derived.get(auth_prefix)
    if key is None:
        if len(hit.derived) >= MAX_DERIVED:
            hit.derived.clear()
        key = hit.derived[auth_prefix] = signing.signing_key(hit.secret_key, auth_prefix)
    return key


def query_pairs(request: Request) -> tuple[tuple[str, str], ...]:
    """The query's (name, value) pairs, as Starlette's query_params holds them."""
    return _pairs(request.scope.get("query_string", b""))


@per_query(maxsize=256)
def _pairs(query: bytes) -> tuple[tuple[str, str], ...]:
    return tuple(parse_qsl(query.decode("latin-1"), keep_blank_values=True))


async def qianfan_account(request: Request, ctx: AppContext = Depends(get_ctx)) -> int:
    # ASGI header names; lowercased all the same, as verify() looks them up by lowercase name.
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.scope["headers"]}
    # The access key is the Authorization header's second field; verify() checks the whole header.
    parts = headers.get("authorization", "").strip().split("/")
    ak = parts[1] if len(parts) == 6 else ""
    cache = credential_cache.shared()
    hit = cache.cached_signing(ak) if ak else None
    if hit is None and ak:
        hit = await run_in_threadpool(cache.signing_lookup, ctx.db, ctx.box, ak)

    def find_secret(key: str) -> str | None:
        return hit.secret_key if hit is not None and key == ak else None

    def derive(secret: str, auth_prefix: str) -> str:
        assert hit is not None and secret == hit.secret_key  # verify() derives only from find_secret's
        return derived_key(hit, auth_prefix)

    query = query_pairs(request)
    # Clients sign the path they sent (`//v2/finetuning` from a base URL with a trailing slash); the
    # routers see it with duplicate slashes collapsed. Either form is the same request.
    path = request.scope["path"]
    if "?" in path or "#" in path or "\\" in path:
        path = request.url.path  # Starlette's URL escapes these; building it costs more than the check
    sent = str(request.scope.get(ORIGINAL_PATH) or path)
    try:
        signing.verify(request.method, sent, query, headers, find_secret, derive=derive)
    except signing.AuthFailure as e:
        if sent == path or e.code != "SignatureDoesNotMatch":
            raise
        signing.verify(request.method, path, query, headers, find_secret, derive=derive)
    assert hit is not None  # verify() refuses an unknown access key
    count_request(request, hit.account_id)
    return hit.account_id


async def bearer_account(request: Request, ctx: AppContext) -> int | None:
    """The account behind `Authorization: Bearer` on Qianfan V2 chat: a token from /v1/BCE-BEARER/token, or
    an API key (as Qianfan's V2 also takes its API keys there). None when neither is valid."""
    token = bearer_token(request)
    if token is None:
        return None
    if bearer.is_bearer_token(token):
        ak = bearer.access_key_of(token)
        cache = credential_cache.shared()
        hit = cache.cached_signing(ak) if ak else None
        if hit is None and ak:
            hit = await run_in_threadpool(cache.signing_lookup, ctx.db, ctx.box, ak)
        if hit is None or bearer.verify(token, lambda _: hit.secret_key) is None:
            return None
        account = hit.account_id
    else:
        key_hit = await bearer_hit(ctx, token)
        if key_hit is None:
            return None
        account = key_hit.account_id
    count_request(request, account)
    return account
