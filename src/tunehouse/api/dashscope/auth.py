"""The caller behind a DashScope request: its bearer API key's account and the workspace it names."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Depends, Request

from tunehouse.api.context import AppContext, get_ctx
from tunehouse.api.dashscope.errors import ApiError, invalid
from tunehouse.api.deps import bearer_hit, bearer_token
from tunehouse.api.rate_limit import count_request


@dataclass(frozen=True)
class Caller:
    account_id: int
    account_name: str
    workspace: str | None  # None: no X-DashScope-WorkSpace header, so no workspace filter


async def ds_caller(request: Request, ctx: AppContext = Depends(get_ctx)) -> Caller:
    token = bearer_token(request)
    hit = await bearer_hit(ctx, token) if token is not None else None
    if hit is None:
        raise ApiError(401, "InvalidApiKey", "Invalid API-key provided.")
    count_request(request, hit.account_id)
    workspace = request.headers.get("x-dashscope-workspace", "").strip() or None
    if workspace is not None and len(workspace) > 64:
        raise invalid("X-DashScope-WorkSpace: at most 64 characters")
    return Caller(hit.account_id, hit.account_name, workspace)
