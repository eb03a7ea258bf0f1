"""OpenAI models: base models, the caller's fine-tuned models and their checkpoints."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from tunehouse.api.context import AppContext, get_ctx
from tunehouse.api.limits import echo
from tunehouse.api.openai import names
from tunehouse.api.openai.auth import Caller, openai_caller
from tunehouse.api.openai.errors import OpenAIError, OpenAIRoute
from tunehouse.core import deployments as dep_svc
from tunehouse.core.deployments import ServingTarget
from tunehouse.core.errors import NotFound
from tunehouse.core.registry import delete_output, visible_models
from tunehouse.store.models import Checkpoint, Model, Run

router = APIRouter(prefix="/v1", route_class=OpenAIRoute)

BASE_OWNER = "tunehouse"


def model_not_found(model: str) -> OpenAIError:
    return OpenAIError(
        404,
        f"The model '{echo(model)}' does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def resolve_target(s: Session, caller: Caller, model: str) -> ServingTarget:
    """A base model, one of the caller's fine-tuned models, or one of their checkpoints; else 404."""
    target = dep_svc.resolve_model_target(s, caller.account_id, model)
    if target is None:
        parsed = names.parse_checkpoint_model(model)
        if parsed is not None:
            target = dep_svc.resolve_checkpoint_target(s, caller.account_id, model, *parsed)
    if target is None:
        raise model_not_found(model)
    return target


def _render(id_: str, created: Any, owner: str, parent: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": id_,
        "object": "model",
        "created": int(created.timestamp()),
        "owned_by": owner,
    }
    if parent is not None:
        out["parent"] = parent  # as vLLM lists adapters: the base they load onto
    return out


def _render_model(m: Model, caller: Caller) -> dict[str, Any]:
    if m.account_id is None:
        return _render(m.name, m.created_at, BASE_OWNER)
    return _render(m.name, m.created_at, caller.organization_id, m.base_model)


def _checkpoints(s: Session, caller: Caller) -> list[dict[str, Any]]:
    rows = s.execute(
        select(Run, Checkpoint)
        .join(Checkpoint, Checkpoint.run_id == Run.id)
        .where(Run.account_id == caller.account_id, Run.deleted_at.is_(None))
        .order_by(Run.id, Checkpoint.step)
    )
    out = []
    for run, ckpt in rows:
        name = run.output_name
        if name:
            out.append(
                _render(
                    names.checkpoint_model(str(name), ckpt.step),
                    ckpt.created_at,
                    caller.organization_id,
                    run.base_model,
                )
            )
    return out


@router.get("/models")
def list_models(ctx: AppContext = Depends(get_ctx), caller: Caller = Depends(openai_caller)) -> JSONResponse:
    with ctx.db.read_session() as s:
        data = [_render_model(m, caller) for m in visible_models(s, caller.account_id)]
        data += _checkpoints(s, caller)
    return JSONResponse({"object": "list", "data": data})


@router.get("/models/{model}")
def retrieve_model(
    model: str, ctx: AppContext = Depends(get_ctx), caller: Caller = Depends(openai_caller)
) -> JSONResponse:
    with ctx.db.read_session() as s:
        target = resolve_target(s, caller, model)
        if target.checkpoint_id is not None:
            ckpt = s.get_one(Checkpoint, target.checkpoint_id)
            return JSONResponse(_render(model, ckpt.created_at, caller.organization_id, target.base_model))
        return JSONResponse(_render_model(s.get_one(Model, target.model_id), caller))


@router.delete("/models/{model}")
async def delete_model(
    model: str, request: Request, ctx: AppContext = Depends(get_ctx), caller: Caller = Depends(openai_caller)
) -> JSONResponse:
    """The caller's fine-tuned model: undeployed (its engine's memory freed), then gone from list, retrieve
    and chat. Its run and files stay. Base models and checkpoints are not deleted this way."""

    def delete() -> str | None:
        with ctx.db.session() as s:
            target = resolve_target(s, caller, model)
            if target.weights_kind == "base":
                raise OpenAIError(400, f"The base model '{echo(model)}' cannot be deleted.", param="model")
            if target.checkpoint_id is not None:
                raise OpenAIError(400, "Checkpoints are deleted with their fine-tuning job.", param="model")
            delete_output(s, caller.account_id, model)
            try:
                return dep_svc.get_deployment(s, caller.account_id, model).key
            except NotFound:
                return None

    key = await run_in_threadpool(delete)
    if key is not None:
        await request.app.state.supervisor.delete(key)
    return JSONResponse({"id": model, "object": "model", "deleted": True})
