"""What routes of several dialects depend on: the account behind a bearer API key (OpenAI and DashScope).

Each dialect's own auth module turns a missing or unknown key into its own refusal.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from tunehouse.api.context import AppContext
from tunehouse.core import credential_cache
from tunehouse.core.credential_cache import BearerHit


def bearer_token(request: Request) -> str | None:
    """The key of an `Authorization: Bearer <key>` header; None when there is none."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def bearer_hit(ctx: AppContext, api_key: str) -> BearerHit | None:
    """The account behind an API key: from memory while it is fresh, else from the database (off the loop)."""
    cache = credential_cache.shared()
    hit = cache.cached_bearer(api_key)
    if hit is None:
        hit = await run_in_threadpool(cache.bearer_lookup, ctx.db, api_key)
    return hit
