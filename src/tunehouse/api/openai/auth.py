"""The caller behind an OpenAI request: its bearer API key's account, counted against its rate limit."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Depends, Request

from tunehouse.api.context import AppContext, get_ctx
from tunehouse.api.deps import bearer_hit, bearer_token
from tunehouse.api.openai.errors import OpenAIError
from tunehouse.api.rate_limit import count_request


@dataclass(frozen=True)
class Caller:
    account_id: int
    account_name: str

    @property
    def organization_id(self) -> str:
        return "org-" + self.account_name


def _refused(message: str) -> OpenAIError:
    return OpenAIError(401, message, code="invalid_api_key")


async def openai_caller(request: Request, ctx: AppContext = Depends(get_ctx)) -> Caller:
    token = bearer_token(request)
    if token is None:
        raise _refused("You didn't provide an API key: send it as 'Authorization: Bearer <key>'.")
    hit = await bearer_hit(ctx, token)
    if hit is None:
        raise _refused("Incorrect API key provided.")
    count_request(request, hit.account_id)
    return Caller(hit.account_id, hit.account_name)
