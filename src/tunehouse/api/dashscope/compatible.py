"""DashScope's compatible mode: `POST /compatible-mode/v1/chat/completions` in OpenAI's shape (the plain
`openai` SDK, or the 2.x client with protocol="openai"), answered by OpenAI's chat route with `model` a
deployment's `deployed_model` (or whatever OpenAI's route would serve)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from tunehouse.api.context import AppContext, get_ctx
from tunehouse.api.openai.auth import Caller, openai_caller
from tunehouse.api.openai.chat import answer_chat, openai_deployment
from tunehouse.api.openai.errors import OpenAIRoute
from tunehouse.core import deployments as dep_svc
from tunehouse.store.models import Deployment

PREFIX = "/compatible-mode/v1"
router = APIRouter(prefix=PREFIX, route_class=OpenAIRoute)


def _deployed_or_openai(s: Session, caller: Caller, model: str) -> Deployment:
    dep = dep_svc.find_deployment(s, caller.account_id, model)
    return dep if dep is not None else openai_deployment(s, caller, model)


@router.post("/chat/completions")
async def chat_completions(
    request: Request, ctx: AppContext = Depends(get_ctx), caller: Caller = Depends(openai_caller)
) -> Response:
    return await answer_chat(request, ctx, caller, _deployed_or_openai)
