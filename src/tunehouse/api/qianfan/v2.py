"""Qianfan V2 fine-tuning: `POST /v2/finetuning?Action=…`, translated to and from the core."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from tunehouse.api.context import AppContext, ctx_of, run_page_url
from tunehouse.api.envelopes import request_id
from tunehouse.api.fast_json import FastJSONResponse
from tunehouse.api.json_body import json_object
from tunehouse.api.limits import MAX_QUERY_INT
from tunehouse.api.polling import PolledCall, polled_view, template_pattern
from tunehouse.api.qianfan.auth import qianfan_account, query_pairs
from tunehouse.api.qianfan.errors import qianfan_v2_error, v2_failure
from tunehouse.api.qianfan.names import (
    HP_OUT,
    SCALE_IN,
    SCALE_OUT,
    TRAIN_MODE_IN,
    TRAIN_MODE_OUT,
    V2_STATUS,
    checkpoint_item,
    enum_in,
    hyperparameters_in,
    v2_time,
)
from tunehouse.core import catalog
from tunehouse.core import files as file_svc
from tunehouse.core import jobs as job_svc
from tunehouse.core import runs as run_svc
from tunehouse.core.errors import InvalidParameter, NotFound
from tunehouse.core.ids import strip_prefix
from tunehouse.core.pagination import Page, marker_page
from tunehouse.core.registry import base_models
from tunehouse.core.run_views import RunView, checkpoint_steps, find_run_view, view_of
from tunehouse.core.states import RunState
from tunehouse.store.models import Job, Run

log = logging.getLogger(__name__)
router = APIRouter()

JOB, TASK, FILE = "job-", "task-", "file-"


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class CreateJobBody(_Body):
    name: StrictStr
    description: StrictStr = ""
    model: StrictStr
    trainMode: StrictStr
    parameterScale: StrictStr | None = None
    hyperParameterConfig: dict[str, Any] | None = None


class PageBody(_Body):
    marker: StrictStr = ""
    maxKeys: StrictInt = Field(default=10, ge=1, le=MAX_QUERY_INT)
    pageReverse: StrictBool = False


class ListJobsBody(PageBody):
    trainMode: StrictStr | None = None
    trainModel: StrictStr | None = None  # the SDK's name for trainMode
    model: StrictStr | None = None


class ListTasksBody(PageBody):
    jobId: StrictStr


class DatasetVersion(_Body):
    versionId: StrictStr | None = None
    samplingRate: float = Field(default=1.0, ge=0.01, le=10)


class DatasetConfig(_Body):
    sourceType: StrictStr
    versions: list[DatasetVersion] = Field(min_length=1)
    splitRatio: StrictInt = Field(default=0, ge=0, le=20)


class CreateTaskBody(_Body):
    jobId: StrictStr
    parameterScale: StrictStr
    hyperParameterConfig: dict[str, Any] = Field(default_factory=dict)
    datasetConfig: DatasetConfig
    incrementTaskId: StrictStr | None = None
    incrementCheckpointStep: StrictInt | None = Field(default=None, ge=0, le=MAX_QUERY_INT)
    modelConfig: dict[str, Any] | None = None
    resourceConfig: dict[str, Any] | None = None
    corpusConfig: dict[str, Any] | None = None


class TaskIdBody(_Body):
    taskId: StrictStr


class JobIdBody(_Body):
    jobId: StrictStr


# ---- rendering -------------------------------------------------------------------------------------


def page_info(page: Page[Any], prefix: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "marker": prefix + page.marker if page.marker else "",
        "maxKeys": page.max_keys,
        "isTruncated": page.is_truncated,
    }
    if page.is_truncated and page.next_marker:
        info["nextMarker"] = prefix + page.next_marker
    return info


def render_job(job: Job) -> dict[str, Any]:
    created = v2_time(job.created_at)
    return {
        "jobId": JOB + job.key,
        "name": job.name,
        "description": job.description,
        "model": job.base_model or "",
        "trainMode": TRAIN_MODE_OUT.get(job.train_mode or "", ""),
        "createTime": created,
        "createDate": created,
    }


def render_task(s: Session | Connection, run: RunView, public_url: str) -> dict[str, Any]:
    status = V2_STATUS[RunState(run.state)]
    out: dict[str, Any] = {
        "taskId": TASK + run.key,
        "jobId": JOB + run.job_key,
        "jobName": run.job_name,
        "jobDescription": run.job_description,
        "model": run.base_model,
        "trainMode": TRAIN_MODE_OUT[run.train_mode],
        "parameterScale": SCALE_OUT[run.parameter_scale],
        "runStatus": status,
        "vdlLink": run_page_url(public_url, run.key),
        "createTime": v2_time(run.created_at),
        "finishTime": v2_time(run.finished_at),
        "hyperParameterConfig": {HP_OUT.get(k, k): v for k, v in run.hyperparameters.items()},
    }
    if status == "Running":
        out["runProgress"] = f"{min(run.progress, 99)}%"
    if status == "Done":
        out["metrics"] = _metrics(run.metrics)
    if status in ("Done", "Stopped"):
        # A stopped run saved a checkpoint on the way out; it is as usable as a finished run's.
        if run.checkpoints is not None:
            steps = run.checkpoints
        else:
            steps = checkpoint_steps(s, run.id) if run.checkpoint_count != 0 else []
        out["checkpointList"] = [checkpoint_item(step, _with_perplexity(m)) for step, m in steps]
    if status == "Failed" and run.error:
        out["errorMessage"] = run.error
    return out


def _with_perplexity(metrics: dict[str, Any]) -> dict[str, Any]:
    loss = metrics.get("eval_loss")
    return {**metrics, "perplexity": round(math.exp(min(loss, 50)), 4)} if loss is not None else metrics


def _metrics(m: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    if m.get("train_loss") is not None:
        out["trainLoss"] = f"{m['train_loss']:.4f}"
    if m.get("eval_loss") is not None:
        out["evalLoss"] = f"{m['eval_loss']:.4f}"
        out["perplexity"] = f"{math.exp(min(m['eval_loss'], 50)):.4f}"
    if m.get("eval_token_accuracy") is not None:
        out["evalTokenAccuracy"] = f"{100 * m['eval_token_accuracy']:.2f}%"
    return out


# ---- actions ---------------------------------------------------------------------------------------


def _job(s: Session, account: int, job_id: str) -> Job:
    key = strip_prefix(job_id, JOB)
    if key is not None:
        with suppress(NotFound):
            return job_svc.get_job(s, account, key=key)
    raise NotFound("job", job_id)  # in the caller's terms, whatever the reason


def _run(s: Session, account: int, task_id: str) -> Run:
    key = strip_prefix(task_id, TASK)
    if key is not None:
        with suppress(NotFound):
            return run_svc.get_run(s, account, key=key)
    raise NotFound("task", task_id)  # in the caller's terms, whatever the reason


def create_job(s: Session, ctx: AppContext, account: int, body: dict[str, Any]) -> Any:
    b = CreateJobBody.model_validate(body)
    mode = enum_in(TRAIN_MODE_IN, b.trainMode, "trainMode")
    method = enum_in(SCALE_IN, b.parameterScale, "parameterScale") if b.parameterScale else None
    job = job_svc.create_job(
        s, account, b.name, b.description, b.model, mode, method, hyperparameters_in(b.hyperParameterConfig)
    )
    return {"jobId": JOB + job.key}


def describe_jobs(s: Session, ctx: AppContext, account: int, body: dict[str, Any]) -> Any:
    b = ListJobsBody.model_validate(body)
    mode_name = b.trainMode or b.trainModel
    mode = enum_in(TRAIN_MODE_IN, mode_name, "trainMode") if mode_name else None
    marker = (strip_prefix(b.marker, JOB) or b.marker) if b.marker else ""
    page = marker_page(s, job_svc.jobs_query(account, mode, b.model), Job, marker, b.maxKeys, b.pageReverse)
    return {"jobList": [render_job(j) for j in page.items], "pageInfo": page_info(page, JOB)}


def create_task(s: Session, ctx: AppContext, account: int, body: dict[str, Any]) -> Any:
    b = CreateTaskBody.model_validate(body)
    job = _job(s, account, b.jobId)
    method = enum_in(SCALE_IN, b.parameterScale, "parameterScale")
    increment = None
    if b.incrementTaskId is not None:
        try:
            increment = (_run(s, account, b.incrementTaskId), b.incrementCheckpointStep)
        except NotFound:
            raise InvalidParameter("incrementTaskId", f"unknown task {b.incrementTaskId!r}") from None
    dc = b.datasetConfig
    if dc.sourceType not in ("Platform", "Bos"):
        raise InvalidParameter("datasetConfig.sourceType", "must be Platform or Bos")
    if dc.sourceType == "Bos":
        raise InvalidParameter(
            "datasetConfig.sourceType",
            "Bos is not reachable from this server; upload the file to /v1/files and use "
            "sourceType Platform with its id",
        )
    datasets = []
    for i, v in enumerate(dc.versions):
        key = strip_prefix(v.versionId or "", FILE)
        try:
            if key is None:
                raise NotFound("file", v.versionId or "")
            f = file_svc.get_file(s, account, key=key)
        except NotFound:
            raise InvalidParameter(
                f"datasetConfig.versions[{i}].versionId", f"unknown dataset version {v.versionId!r}"
            ) from None
        datasets.append(run_svc.DatasetChoice(f, v.samplingRate))
    extra = {
        k: v
        for k, v in (
            ("modelConfig", b.modelConfig),
            ("resourceConfig", b.resourceConfig),
            ("corpusConfig", b.corpusConfig),
        )
        if v is not None
    }
    # resourceConfig.gpus is the run's GPU count (its ranks); the rest of the object stays as asked.
    gpus = (b.resourceConfig or {}).get("gpus")
    run = run_svc.create_run(
        s,
        job,
        method,
        hyperparameters_in(b.hyperParameterConfig),
        datasets,
        split_ratio=dc.splitRatio,
        extra=extra,
        increment_from=increment,
        gpus=gpus if isinstance(gpus, int) and not isinstance(gpus, bool) and gpus != 0 else 1,
    )
    return {"jobId": JOB + job.key, "taskId": TASK + run.key}


def describe_task(conn: Connection, ctx: AppContext, account: int, body: dict[str, Any]) -> Any:
    task_id = TaskIdBody.model_validate(body).taskId
    key = strip_prefix(task_id, TASK)
    view = find_run_view(conn, account, key) if key is not None else None
    if view is None:
        raise NotFound("task", task_id)  # in the caller's terms, whatever the reason
    return render_task(conn, view, ctx.settings.public_url)


def describe_tasks(s: Session, ctx: AppContext, account: int, body: dict[str, Any]) -> Any:
    b = ListTasksBody.model_validate(body)
    job = _job(s, account, b.jobId)
    marker = (strip_prefix(b.marker, TASK) or b.marker) if b.marker else ""
    page = marker_page(s, run_svc.runs_query(account, job.id), Run, marker, b.maxKeys, b.pageReverse)
    return {
        "taskList": [render_task(s, view_of(s, r, count=False), ctx.settings.public_url) for r in page.items],
        "pageInfo": page_info(page, TASK),
    }


def stop_task(s: Session, ctx: AppContext, account: int, body: dict[str, Any]) -> Any:
    return run_svc.request_stop(s, _run(s, account, TaskIdBody.model_validate(body).taskId))


def delete_task(s: Session, ctx: AppContext, account: int, body: dict[str, Any]) -> Any:
    run_svc.delete_run(s, _run(s, account, TaskIdBody.model_validate(body).taskId))
    return True


def delete_job(s: Session, ctx: AppContext, account: int, body: dict[str, Any]) -> Any:
    job_svc.delete_job(s, _job(s, account, JobIdBody.model_validate(body).jobId))
    return True


def support_models(s: Session, ctx: AppContext, account: int, body: dict[str, Any]) -> Any:
    out = []
    for m in base_models(s):
        caps = catalog.capabilities(m.name)
        modes = []
        for mode, methods in caps.modes.items():
            scales = [
                {
                    "parameterScale": SCALE_OUT[method],
                    "supportHyperParameterConfig": [
                        {
                            "key": HP_OUT[p.key],
                            "type": p.type,
                            "checkType": p.check_type,
                            "checkValue": list(p.check_value),
                            "default": p.default,
                        }
                        for p in params
                    ],
                }
                for method, params in methods.items()
            ]
            modes.append({"trainMode": TRAIN_MODE_OUT[mode], "supportParameterScale": scales})
        out.append({"model": m.name, "modelType": caps.model_type, "supportTrainMode": modes})
    return out


Handler = Callable[[Session, AppContext, int, dict[str, Any]], Any]
ACTIONS: dict[str, Handler] = {
    "CreateFineTuningJob": create_job,
    "DescribeFineTuningJobs": describe_jobs,
    "CreateFineTuningTask": create_task,
    "DescribeFineTuningTask": describe_task,
    "DescribeFineTuningTasks": describe_tasks,
    "StopFineTuningTask": stop_task,
    "DeleteFineTuningTask": delete_task,
    "DeleteFineTuningJob": delete_job,
    "DescribeFineTuningSupportModels": support_models,
}


async def poll_task(ctx: AppContext, account: int, body: dict[str, Any]) -> Any:
    """describe_task as clients poll it: the run and its checkpoints read in one statement, on the event loop
    where the database allows (api.polling.polled_view)."""
    task_id = TaskIdBody.model_validate(body).taskId
    key = strip_prefix(task_id, TASK)
    if key is None:
        raise NotFound("task", task_id)

    def render(conn: Connection, view: RunView | None) -> Any:
        if view is None:
            raise NotFound("task", task_id)  # in the caller's terms, whatever the reason
        return render_task(conn, view, ctx.settings.public_url)

    return await polled_view(ctx, account, key, render, checkpoints=True)


# The status call clients poll, by the action it answers: it writes nothing, so it reads without a session.
Polled = Callable[[AppContext, int, dict[str, Any]], Awaitable[Any]]
POLLED_ACTIONS: dict[str, Polled] = {"DescribeFineTuningTask": poll_task}


def _answer(rid: str, work: Callable[[], Any]) -> JSONResponse:
    try:
        result = work()
    except Exception as exc:
        return v2_failure(exc, rid)
    return _reply(rid, result)


def _reply(rid: str, result: Any) -> JSONResponse:
    return FastJSONResponse({"requestId": rid, "result": result}, headers={"X-Bce-Request-Id": rid})


def _in_session(ctx: AppContext, handler: Handler, account: int, body: dict[str, Any]) -> Any:
    with ctx.db.session() as s:
        return handler(s, ctx, account, body)


PATH = "/v2/finetuning"


@router.post(PATH)
async def v2_finetuning(request: Request) -> JSONResponse:
    # Requests normally reach v2_action through the polling lane (api.polling); this route documents it.
    return await v2_action(request)


async def v2_action(request: Request) -> JSONResponse:
    return await dispatch(request, ACTIONS, POLLED_ACTIONS)


async def dispatch(
    request: Request, actions: dict[str, Handler], polled: dict[str, Polled] | None = None
) -> JSONResponse:
    """A V2 console call (`POST <path>?Action=…`): signed, routed by Action, answered in V2's envelope."""
    ctx = ctx_of(request)
    account = await qianfan_account(request, ctx)
    rid = request_id()
    action = dict(query_pairs(request)).get("Action", "")  # the last one, as query_params.get gives
    handler = actions.get(action)
    if handler is None:
        return qianfan_v2_error(400, "InvalidAction", f"unknown Action {action!r}", req_id=rid)
    body = await json_object(request, empty={})
    if body is None:
        return qianfan_v2_error(400, "MalformedJSON", "the body must be a JSON object", req_id=rid)
    poll = polled.get(action) if polled is not None else None
    if poll is not None:
        try:
            result = await poll(ctx, account, body)
        except Exception as exc:
            return v2_failure(exc, rid)
        return _reply(rid, result)
    return await run_in_threadpool(_answer, rid, lambda: _in_session(ctx, handler, account, body))


# Every action shares the one path: the lane takes them all, so the polled Describe… skips the router.
POLLED = PolledCall("POST", PATH, template_pattern(PATH), v2_action)


@router.api_route("/v2/finetuning", methods=["GET", "PUT", "DELETE", "PATCH"], include_in_schema=False)
async def v2_wrong_method(request: Request) -> JSONResponse:
    return qianfan_v2_error(405, "MethodNotAllowed", f"{request.method} is not allowed; use POST")
