"""Resolves the account behind a bearer API key (OpenAI and DashScope style)."""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool

from tunehouse.api.context import AppContext, get_ctx
from tunehouse.core import credential_cache
from tunehouse.core.accounts import find_api_key_account


class BearerFailure(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def bearer_account(request: Request, ctx: AppContext = Depends(get_ctx)) -> int:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise BearerFailure("You didn't provide an API key: send it as 'Authorization: Bearer <key>'.")
    with ctx.db.session() as s:
        account = find_api_key_account(s, token.strip())
    if account is None:
        raise BearerFailure("Incorrect API key provided.")
    return account.id


async def bearer_hit(ctx: AppContext, api_key: str) -> credential_cache.BearerHit | None:
    """The account behind an API key: from memory while it is fresh, else from the database (off the loop)."""
    cache = credential_cache.shared()
    hit = cache.cached_bearer(api_key)
    if hit is None:
        hit = await run_in_threadpool(cache.bearer_lookup, ctx.db, api_key)
    return hit
