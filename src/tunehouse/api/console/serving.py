"""The console's deployments page and playground: deploy a model or checkpoint, chat with it streamed, and
read the base model's answer beside it. Same session, CSRF and account scoping as the rest of the console;
the browser reaches engines only through these routes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy.orm import Session

from tunehouse.api.console.auth import ConsoleSession, check_csrf
from tunehouse.api.console.routes import _account, form_post, page, redirect, signed_in
from tunehouse.api.context import AppContext, get_ctx
from tunehouse.api.json_body import json_object
from tunehouse.api.openai import names
from tunehouse.core import deployments as dep_svc
from tunehouse.core import registry
from tunehouse.core import runs as run_svc
from tunehouse.core.deployments import LIVE, DeploymentStatus, ServingTarget
from tunehouse.core.errors import Conflict, InvalidParameter, NotFound, QuotaExceeded
from tunehouse.serving.engine import ChoiceEnd, Delta, EngineError, GenerationParams, Usage
from tunehouse.serving.supervisor import Supervisor
from tunehouse.store.models import Deployment, Run

router = APIRouter(include_in_schema=False)
log = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 8000
MAX_NEW_TOKENS = 512
# Engines started from the console load in the background; the tasks are held so none is collected early.
_starting: set[asyncio.Task[None]] = set()


def _supervisor(request: Request) -> Supervisor:
    return request.app.state.supervisor  # type: ignore[no-any-return]


def _target(s: Session, account: int, name: str) -> ServingTarget | None:
    """A base model, one of the account's fine-tuned models, or one of its checkpoints (by its model id)."""
    target = dep_svc.resolve_model_target(s, account, name)
    if target is None:
        parsed = names.parse_checkpoint_model(name)
        if parsed is not None:
            target = dep_svc.resolve_checkpoint_target(s, account, name, *parsed)
    return target


def _start_in_background(request: Request, key: str) -> None:
    async def start() -> None:
        try:
            await _supervisor(request).ensure(key)
        except EngineError:
            pass  # the supervisor has marked it FAILED with the reason, which the pages show
        except Exception:
            log.exception("starting deployment %s failed", key)

    task = asyncio.get_running_loop().create_task(start())
    _starting.add(task)
    task.add_done_callback(_starting.discard)


def _row(d: Deployment, sup: Supervisor) -> dict[str, Any]:
    stats = sup.stats(d.key)
    return {
        "endpoint": d.endpoint,
        "quoted": quote(d.endpoint, safe=""),
        "model": d.model_name,
        "base_model": d.base_model,
        "kind": d.weights_kind,
        "engine": d.engine,
        "status": d.status,
        "capacity": d.capacity,
        "requests": d.requests or 0,
        "in_flight": stats["in_flight"],
        "waiting": stats["waiting"],
        "restarts": stats["restarts"],
        "memory": sup.memory_bytes(d.key),
        "error": d.error or "",
        "created_at": d.created_at,
        "live": d.status in LIVE,
    }


def _deployable(s: Session, account: int) -> list[dict[str, str]]:
    """What the deploy form offers: base models, the account's fine-tuned models and their checkpoints."""
    out = [
        {"name": m.name, "label": f"{m.name} ({'base' if m.kind == 'base' else 'fine-tuned'})"}
        for m in registry.visible_models(s, account)
    ]
    for run in s.scalars(run_svc.runs_query(account).order_by(Run.id)):
        if run.output_name:
            for c in run_svc.checkpoints(s, run):
                name = names.checkpoint_model(str(run.output_name), c.step)
                out.append({"name": name, "label": f"{name} (checkpoint)"})
    return out


@router.get("/console/deployments")
def deployments_page(
    request: Request, ctx: AppContext = Depends(get_ctx), session: ConsoleSession = Depends(signed_in)
) -> Response:
    return _deployments_page(request, ctx, session)


def _deployments_page(
    request: Request, ctx: AppContext, session: ConsoleSession, status: int = 200, error: str = ""
) -> Response:
    account = _account(session)
    sup = _supervisor(request)
    with ctx.db.session() as s:
        rows = [_row(d, sup) for d in dep_svc.list_deployments(s, account)]
        deployable = _deployable(s, account)
    return page(
        request,
        session,
        "deployments.html",
        status=status,
        title="Deployments",
        rows=rows,
        deployable=deployable,
        error=error,
    )


@router.post("/console/deployments")
async def deploy(
    request: Request, ctx: AppContext = Depends(get_ctx), session: ConsoleSession = Depends(form_post)
) -> Response:
    """Deploy a model or checkpoint (or start its stopped deployment again); the playground opens on it."""
    form = await request.form()
    name = str(form.get("model") or "").strip()
    capacity_text = str(form.get("capacity") or "1").strip()
    account = _account(session)

    def work() -> str:
        try:
            capacity = int(capacity_text)
        except ValueError:
            message = f"Invalid capacity ({capacity_text}): a whole number"
            raise InvalidParameter("capacity", message) from None
        with ctx.db.session() as s:
            try:
                existing = dep_svc.get_deployment(s, account, name)
            except NotFound:
                existing = None
            if existing is not None:
                if existing.status == DeploymentStatus.DELETING:
                    raise Conflict(f"{name} is being deleted; deploy it again once it is gone")
                return existing.key
            target = _target(s, account, name)
            if target is None:
                raise NotFound("model", name)
            return dep_svc.create_deployment(s, account, target, endpoint=name, capacity=capacity).key

    try:
        key = await run_in_threadpool(work)
    except QuotaExceeded as e:
        return await run_in_threadpool(_deployments_page, request, ctx, session, 429, e.message)
    except NotFound:
        return await run_in_threadpool(_deployments_page, request, ctx, session, 404, f"No model {name}.")
    except (InvalidParameter, Conflict) as e:
        return await run_in_threadpool(_deployments_page, request, ctx, session, 400, e.message)
    _start_in_background(request, key)
    return redirect(f"/console/playground?model={quote(name, safe='')}")


@router.post("/console/deployments/{endpoint}/{action}")
async def deployment_action(
    request: Request,
    endpoint: str,
    action: str,
    ctx: AppContext = Depends(get_ctx),
    session: ConsoleSession = Depends(form_post),
) -> Response:
    if action not in ("stop", "start", "delete"):
        return await run_in_threadpool(_deployments_page, request, ctx, session, 404, "No such action.")
    account = _account(session)

    def find() -> tuple[str, str] | None:
        with ctx.db.session() as s:
            try:
                dep = dep_svc.get_deployment(s, account, endpoint)
            except NotFound:
                return None
            return dep.key, dep.status

    found = await run_in_threadpool(find)
    if found is None:
        return await run_in_threadpool(
            _deployments_page, request, ctx, session, 404, f"No deployment {endpoint}."
        )
    key, status = found
    sup = _supervisor(request)
    if action == "delete":
        await sup.delete(key)
    elif action == "stop":
        if not dep_svc.can_move(status, DeploymentStatus.STOPPED):
            message = f"{endpoint} is {status}; it cannot be stopped"
            return await run_in_threadpool(_deployments_page, request, ctx, session, 409, message)
        await sup.stop_deployment(key)
    else:
        _start_in_background(request, key)
    return redirect("/console/deployments")


# ---- playground ------------------------------------------------------------------------------------


@router.get("/console/playground")
def playground_page(
    request: Request,
    model: str = "",
    ctx: AppContext = Depends(get_ctx),
    session: ConsoleSession = Depends(signed_in),
) -> Response:
    account = _account(session)
    sup = _supervisor(request)
    with ctx.db.session() as s:
        rows = [_row(d, sup) for d in dep_svc.list_deployments(s, account)]
        deployable = _deployable(s, account)
    chosen = next((r for r in rows if r["endpoint"] == model), None)
    if chosen is None:  # the newest fine-tuned deployment, else the newest of any
        tuned = [r for r in rows if r["kind"] != "base"]
        chosen = (tuned or rows or [None])[-1]
    return page(
        request,
        session,
        "playground.html",
        title="Playground",
        rows=rows,
        chosen=chosen,
        deployable=deployable,
    )


def _params(body: dict[str, Any]) -> tuple[str, list[dict[str, Any]], GenerationParams]:
    model = body.get("model")
    prompt = body.get("prompt")
    if not isinstance(model, str) or not model:
        raise InvalidParameter("model", "choose a model")
    if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidParameter("prompt", f"write a prompt of at most {MAX_PROMPT_CHARS} characters")
    max_tokens = body.get("max_tokens", 64)
    if type(max_tokens) is not int or not 0 < max_tokens <= MAX_NEW_TOKENS:
        raise InvalidParameter("max_tokens", f"from 1 to {MAX_NEW_TOKENS}")
    temperature = body.get("temperature", 0)
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
        raise InvalidParameter("temperature", "from 0 to 2")
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if isinstance(system, str) and system.strip():
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt})
    return model, messages, GenerationParams(max_tokens=max_tokens, temperature=float(temperature))


def _frame(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@router.post("/console/playground/chat")
async def playground_chat(
    request: Request, ctx: AppContext = Depends(get_ctx), session: ConsoleSession = Depends(signed_in)
) -> Response:
    """One answer as server-sent events (`delta` text pieces, then `done` or `error`), read with fetch."""
    await check_csrf(request, session)
    account = _account(session)
    body = await json_object(request)
    if body is None:
        return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
    try:
        model, messages, params = _params(body)
    except InvalidParameter as e:
        return JSONResponse({"error": f"{e.field}: {e.message}"}, status_code=400)

    def deployment() -> str:
        # The model's own deployment (any checkpoint or suffix it was deployed under), else one made now:
        # the base model beside a fine-tuned one is deployed on first use, as OpenAI's chat does.
        with ctx.db.session() as s:
            try:
                dep = dep_svc.get_deployment(s, account, model)
            except NotFound:
                target = _target(s, account, model)
                if target is None:
                    raise
                dep = dep_svc.deployment_for_model(s, account, target)
            if dep.status == DeploymentStatus.DELETING:
                raise Conflict(f"{model} is being deleted")
            return dep.key

    try:
        key = await run_in_threadpool(deployment)
    except NotFound:
        return JSONResponse({"error": f"No model {model}."}, status_code=404)
    except QuotaExceeded as e:
        return JSONResponse({"error": e.message}, status_code=429)
    except Conflict as e:
        return JSONResponse({"error": e.message}, status_code=409)
    sup = _supervisor(request)

    async def stream() -> AsyncIterator[bytes]:
        yield _frame("start", {"model": model})  # the headers go out now; loading an engine takes a while
        usage = Usage(0, 0)
        finish = "stop"
        try:
            async for ev in sup.generate(key, messages, params):
                if isinstance(ev, Delta):
                    if ev.text:
                        yield _frame("delta", {"text": ev.text})
                elif isinstance(ev, ChoiceEnd):
                    finish = ev.finish_reason
                else:
                    usage = ev
        except EngineError as exc:
            yield _frame("error", {"message": f"The model could not be served: {exc}"})
            return
        yield _frame(
            "done",
            {
                "finish_reason": finish,
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
            },
        )

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)
