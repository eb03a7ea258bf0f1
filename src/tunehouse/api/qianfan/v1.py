"""Qianfan V1 (legacy) fine-tuning under /wenxinworkshop/finetune: integer ids over the same records.

V1 calls a job a "task" and a run a "job"; the integer ids are the rows' surrogate keys.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictStr
from sqlalchemy.orm import Session

from tunehouse.api.context import AppContext, get_ctx, run_page_url
from tunehouse.api.json_body import json_object
from tunehouse.api.limits import MAX_QUERY_INT
from tunehouse.api.qianfan.auth import qianfan_account
from tunehouse.api.qianfan.errors import PARAM_INVALID, qianfan_v1_error, v1_failure
from tunehouse.api.qianfan.names import (
    PEFT_IN,
    PEFT_OUT,
    TRAIN_MODE_IN,
    TRAIN_MODE_OUT,
    V1_STATUS,
    enum_in,
    hyperparameters_in,
    v1_time,
)
from tunehouse.core import files as file_svc
from tunehouse.core import jobs as job_svc
from tunehouse.core import runs as run_svc
from tunehouse.core.clock import utcnow
from tunehouse.core.errors import InvalidParameter, NotFound
from tunehouse.core.ids import strip_prefix
from tunehouse.core.registry import base_models
from tunehouse.core.states import RunState
from tunehouse.store.models import File, Run

router = APIRouter(prefix="/wenxinworkshop/finetune")


def _int_id(v: Any) -> Any:
    # The SDK type-hints some ids as str and passes them through: accept numeric strings.
    if isinstance(v, str) and v.strip().isdigit():
        return int(v)
    return v


IntId = Annotated[int, BeforeValidator(_int_id), Field(strict=True, ge=1, le=MAX_QUERY_INT)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class CreateTaskBody(_Body):
    name: StrictStr
    description: StrictStr = ""
    baseTrainType: StrictStr | None = None
    trainType: StrictStr | None = None


class Trainset(_Body):
    type: int = 1
    id: IntId | StrictStr


class CreateJobBody(_Body):
    taskId: IntId
    baseTrainType: StrictStr | None = None
    trainType: StrictStr | None = None
    trainMode: StrictStr = "SFT"
    peftType: StrictStr = "LoRA"
    trainConfig: dict[str, Any] = Field(default_factory=dict)
    trainset: list[Trainset] = Field(min_length=1)
    trainsetRate: int = Field(default=0, ge=0, le=20)


class JobRef(_Body):
    taskId: IntId
    jobId: IntId


def _model_name(s: Session, *candidates: str | None) -> str | None:
    """V1 names the model twice (baseTrainType, trainType); take whichever is registered."""
    known = {m.name for m in base_models(s)}
    given = [c for c in candidates if c]
    for c in given:
        if c in known:
            return c
    if given:
        raise InvalidParameter(
            "trainType", f"unknown model {given[-1]!r}; available: {', '.join(sorted(known))}"
        )
    return None


def create_task(s: Session, ctx: AppContext, account: int, body: dict[str, Any]) -> Any:
    b = CreateTaskBody.model_validate(body)
    model = _model_name(s, b.trainType, b.baseTrainType)
    job = job_svc.create_job(s, account, b.name, b.description, model)
    return {
        "id": job.id,
        "uuid": "job-" + job.key,
        "name": job.name,
        "description": job.description,
        "createTime": v1_time(job.created_at),
    }


def _file(s: Session, account: int, ref: int | str) -> File:
    try:
        if isinstance(ref, int):
            return file_svc.get_file(s, account, int_id=ref)
        key = strip_prefix(ref, "file-")
        if key is None:
            raise NotFound("file", ref)
        return file_svc.get_file(s, account, key=key)
    except NotFound:
        raise InvalidParameter("trainset", f"unknown dataset {ref!r}") from None


def create_job(s: Session, ctx: AppContext, account: int, body: dict[str, Any]) -> Any:
    b = CreateJobBody.model_validate(body)
    job = job_svc.get_job(s, account, int_id=b.taskId)
    model = _model_name(s, b.trainType, b.baseTrainType)
    mode = enum_in(TRAIN_MODE_IN, b.trainMode, "trainMode")
    method = enum_in(PEFT_IN, b.peftType, "peftType")
    datasets = [run_svc.DatasetChoice(_file(s, account, t.id)) for t in b.trainset]
    run = run_svc.create_run(
        s,
        job,
        method,
        hyperparameters_in(b.trainConfig, "trainConfig"),
        datasets,
        split_ratio=b.trainsetRate,
        model=model,
        train_mode=mode,
    )
    return {"id": run.id, "uuid": "task-" + run.key}


def _run(s: Session, account: int, ref: JobRef) -> Run:
    job = job_svc.get_job(s, account, int_id=ref.taskId)
    run = run_svc.get_run(s, account, int_id=ref.jobId)
    if run.job_id != job.id:
        raise NotFound("job", ref.jobId)
    return run


def job_detail(s: Session, ctx: AppContext, account: int, body: dict[str, Any]) -> Any:
    run = _run(s, account, JobRef.model_validate(body))
    job = run_svc.job_of(s, run)
    now = utcnow()
    started, finished = run.started_at, run.finished_at
    init = run.extra.get("init_from") or {}
    incre = init if "run_id" in init else None
    return {
        "id": run.id,
        "description": job.description,
        "taskId": job.id,
        "taskName": job.name,
        "version": run.version,
        "jobRunType": 1 if incre else 0,
        **({"increConfig": {"taskId": incre["job_id"], "jobId": incre["run_id"]}} if incre else {}),
        "trainType": run.base_model,
        "trainMode": TRAIN_MODE_OUT[run.train_mode],
        "peftType": PEFT_OUT[run.parameter_scale],
        "trainStatus": V1_STATUS[RunState(run.state)],
        "progress": run.progress,
        "runTime": int(((finished or now) - run.created_at).total_seconds()),
        "trainTime": int(((finished or now) - started).total_seconds()) if started else 0,
        "startTime": v1_time(started),
        "finishTime": v1_time(finished),
        "vdlLink": run_page_url(ctx.settings.public_url, run.key),
        **({"errorMessage": run.error} if run.state == RunState.FAILED and run.error else {}),
    }


def stop_job(s: Session, ctx: AppContext, account: int, body: dict[str, Any]) -> Any:
    return run_svc.request_stop(s, _run(s, account, JobRef.model_validate(body)))


def _call(
    ctx: AppContext,
    handler: Callable[[Session, AppContext, int, dict[str, Any]], Any],
    account: int,
    body: dict[str, Any],
) -> JSONResponse:
    try:
        with ctx.db.session() as s:
            result = handler(s, ctx, account, body)
    except Exception as exc:
        return v1_failure(exc)
    return JSONResponse({"log_id": str(utcnow().timestamp()).replace(".", ""), "result": result})


def v1_endpoint(handler: Callable[[Session, AppContext, int, dict[str, Any]], Any]) -> Callable[..., Any]:
    """A signed V1 console route over `handler`, answered in V1's envelope."""

    async def endpoint(
        request: Request, ctx: AppContext = Depends(get_ctx), account: int = Depends(qianfan_account)
    ) -> JSONResponse:
        body = await json_object(request, empty={})
        if body is None:
            return qianfan_v1_error(PARAM_INVALID, "param invalid: the body must be a JSON object")
        return await run_in_threadpool(_call, ctx, handler, account, body)

    return endpoint


for _path, _handler in (
    ("createTask", create_task),
    ("createJob", create_job),
    ("jobDetail", job_detail),
    ("stopJob", stop_job),
):
    router.add_api_route(f"/{_path}", v1_endpoint(_handler), methods=["POST"], name=f"qianfan_v1_{_path}")
