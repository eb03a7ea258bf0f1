"""DashScope's Deployments under `/api/v1/deployments`: a fine-tuned (or base) model deployed by name,
listed, scaled and deleted, translated to and from the core's deployments.

`deployed_model` is the core deployment's endpoint: `<model_name>-<suffix>`, or `<model_name>` alone.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from tunehouse.api.context import AppContext, get_ctx
from tunehouse.api.dashscope.auth import Caller, ds_caller
from tunehouse.api.dashscope.errors import ApiError, DashScopeRoute, invalid
from tunehouse.api.dashscope.routes import DEFAULT_WORKSPACE, _json_body, _ok, _paging
from tunehouse.api.limits import echo
from tunehouse.api.serving import supervisor_of
from tunehouse.core import deployments as dep_svc
from tunehouse.core.deployments import DeploymentStatus
from tunehouse.store.models import Deployment

router = APIRouter(prefix="/api/v1", route_class=DashScopeRoute)

PLANS = ("lora", "mu", "cu", "ptu")
# The CLI's rule for a suffix: lower case, at most 8 characters.
_SUFFIX = re.compile(r"^[a-z0-9][a-z0-9_-]{0,7}$")
CHARGE_TYPE = "post_paid"


def _time(t: Any) -> str:
    # Deployments write ISO time without a zone ("2025-06-17T11:00:38"), unlike fine-tunes.
    return str(t.astimezone().strftime("%Y-%m-%dT%H:%M:%S"))


def render(dep: Deployment, caller: Caller) -> dict[str, Any]:
    out: dict[str, Any] = {
        "deployed_model": dep.endpoint,
        "model_name": dep.model_name,
        "base_model": dep.base_model,
        "status": dep.status,
        "capacity": dep.capacity,
        "base_capacity": dep.capacity,
        "ready_capacity": dep.capacity if dep.status == DeploymentStatus.RUNNING else 0,
        "gmt_create": _time(dep.created_at),
        "gmt_modified": _time(dep.updated_at),
        "workspace_id": caller.workspace or DEFAULT_WORKSPACE,
        "charge_type": CHARGE_TYPE,
        "creator": caller.account_name,
        "modifier": caller.account_name,
        "engine": dep.engine,
        "requests": dep.requests or 0,
    }
    if dep.status == DeploymentStatus.FAILED and dep.error:
        out["message"] = dep.error
    return out


def not_found(deployed_model: str) -> ApiError:
    return ApiError(404, "NotFound", f"Not found! Deployed model {echo(deployed_model)} not found")


def _own(s: Session, caller: Caller, deployed_model: str) -> Deployment:
    dep = dep_svc.find_deployment(s, caller.account_id, deployed_model)
    if dep is None:
        raise not_found(deployed_model)
    return dep


def _capacity(body: dict[str, Any]) -> int:
    if body.get("capacity") is None:
        raise invalid("Missing capacity")
    return dep_svc.check_capacity(body["capacity"])


def _create_fields(body: dict[str, Any]) -> tuple[str, int, str | None]:
    model = body.get("model_name")
    if not isinstance(model, str) or not model:
        raise invalid("Missing model_name")
    capacity = _capacity(body)
    suffix = body.get("suffix")
    if suffix == "":
        suffix = None
    if suffix is not None and (not isinstance(suffix, str) or not _SUFFIX.match(suffix)):
        raise invalid("suffix: at most 8 lower-case letters, digits, '_' or '-'")
    plan = body.get("plan")
    if plan is not None and (not isinstance(plan, str) or plan.lower() not in PLANS):
        raise invalid(f"plan: one of {', '.join(PLANS)}")
    for field in ("model_version", "template_id", "billing_method"):
        if body.get(field) is not None and not isinstance(body[field], str):
            raise invalid(f"{field} must be a string")
    if body.get("deploy_spec") is not None and not isinstance(body["deploy_spec"], dict):
        raise invalid("deploy_spec must be an object")
    return model, capacity, suffix


@router.post("/deployments")
async def create_deployment(
    request: Request, ctx: AppContext = Depends(get_ctx), caller: Caller = Depends(ds_caller)
) -> JSONResponse:
    model, capacity, suffix = _create_fields(await _json_body(request))

    def work() -> tuple[str, dict[str, Any]]:
        with ctx.db.session() as s:
            target = dep_svc.resolve_model_target(s, caller.account_id, model)
            if target is None:
                raise ApiError(404, "NotFound", f"Model: {echo(model)} not found!")
            endpoint = dep_svc.endpoint_name(model, suffix)
            try:
                dep = dep_svc.deploy_named(s, caller.account_id, target, endpoint, capacity)
            except dep_svc.DeploymentExists as exc:
                raise ApiError(409, "Conflict", exc.message) from None
            return dep.key, render(dep, caller)

    key, out = await run_in_threadpool(work)
    supervisor_of(request).start_soon(key)  # answers PENDING; the SDK polls get() until RUNNING
    return _ok("output", out)


@router.get("/deployments")
def list_deployments(
    request: Request, ctx: AppContext = Depends(get_ctx), caller: Caller = Depends(ds_caller)
) -> JSONResponse:
    page_no, page_size = _paging(request)
    with ctx.db.session() as s:
        total = dep_svc.count_deployments(s, caller.account_id)
        rows = dep_svc.page_deployments(s, caller.account_id, (page_no - 1) * page_size, page_size)
        deployments = [render(d, caller) for d in rows]
    return _ok(
        "output", {"deployments": deployments, "page_no": page_no, "page_size": page_size, "total": total}
    )


@router.get("/deployments/{deployed_model}")
def get_deployment(
    deployed_model: str, ctx: AppContext = Depends(get_ctx), caller: Caller = Depends(ds_caller)
) -> JSONResponse:
    with ctx.db.session() as s:
        return _ok("output", render(_own(s, caller, deployed_model), caller))


@router.put("/deployments/{deployed_model}/scale")
async def scale_deployment(
    deployed_model: str,
    request: Request,
    ctx: AppContext = Depends(get_ctx),
    caller: Caller = Depends(ds_caller),
) -> JSONResponse:
    body = await _json_body(request)
    named = body.get("deployed_model")
    if named is not None and named != deployed_model:
        raise invalid("deployed_model in the body differs from the one in the path")
    capacity = _capacity(body)

    def work() -> tuple[str, int, dict[str, Any]]:
        with ctx.db.session() as s:
            dep = _own(s, caller, deployed_model)
            previous = dep_svc.scale_deployment(s, dep, capacity)
            return dep.key, previous, render(dep, caller)

    key, previous, out = await run_in_threadpool(work)
    supervisor_of(request).resize(key, previous, capacity)
    return _ok("output", out)


@router.delete("/deployments/{deployed_model}")
async def delete_deployment(
    deployed_model: str,
    request: Request,
    ctx: AppContext = Depends(get_ctx),
    caller: Caller = Depends(ds_caller),
) -> JSONResponse:
    def work() -> tuple[str, dict[str, Any]]:
        with ctx.db.session() as s:
            dep = _own(s, caller, deployed_model)
            dep_svc.request_delete(s, dep)
            return dep.key, render(dep, caller)

    key, out = await run_in_threadpool(work)
    # Its engine is stopped and the record forgotten before the answer: a get() after it is 404.
    await supervisor_of(request).undeploy(key)
    return _ok("output", out)
