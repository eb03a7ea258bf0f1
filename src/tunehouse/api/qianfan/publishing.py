"""Qianfan's model repository: publish a finished task's model (V1 `/wenxinworkshop/modelrepo/…`) and read
model sets and versions (V2 `/v2/model?Action=…`), translated to and from the core's published models."""

from __future__ import annotations

from contextlib import suppress
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from sqlalchemy.orm import Session

from tunehouse.api.context import AppContext
from tunehouse.api.limits import MAX_QUERY_INT
from tunehouse.api.qianfan import v2
from tunehouse.api.qianfan.names import v1_time, v2_time
from tunehouse.api.qianfan.v1 import v1_endpoint
from tunehouse.core import published_models as pub
from tunehouse.core import runs as run_svc
from tunehouse.core.errors import InvalidParameter, NotFound
from tunehouse.core.ids import strip_prefix
from tunehouse.core.pagination import marker_page
from tunehouse.store.models import PublishedModel, Run

SET, VERSION = "am-", "amv-"

router = APIRouter()


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class VersionMeta(_Body):
    taskId: StrictStr  # the V2 job id: Qianfan's V1 names swap task and job
    iterationId: StrictStr  # the V2 task id
    step: StrictInt | None = Field(default=None, ge=0, le=MAX_QUERY_INT)
    description: StrictStr = ""


class PublishBody(_Body):
    isNewModel: StrictBool
    modelName: StrictStr | None = None
    modelId: StrictStr | None = None
    versionMeta: VersionMeta
    tags: list[StrictStr] | None = None


class VersionBody(_Body):
    modelVersionId: StrictStr


class ModelSetBody(_Body):
    modelSetId: StrictStr | None = None
    modelSetName: StrictStr | None = None


class ModelBody(_Body):
    modelId: StrictStr


# ---- lookups, in the caller's terms -----------------------------------------------------------------


def version(s: Session, account: int, version_id: str) -> PublishedModel:
    key = strip_prefix(version_id, VERSION)
    if key is not None:
        with suppress(NotFound):
            return pub.get_version(s, account, key)
    raise NotFound("model version", version_id)


def model_set(s: Session, account: int, set_id: str) -> list[PublishedModel]:
    key = strip_prefix(set_id, SET)
    if key is not None:
        with suppress(NotFound):
            return pub.get_set(s, account, key)
    raise NotFound("model set", set_id)


def _task(s: Session, account: int, meta: VersionMeta) -> Run:
    key = strip_prefix(meta.iterationId, v2.TASK)
    run = None
    if key is not None:
        with suppress(NotFound):
            run = run_svc.get_run(s, account, key=key)
    job = run_svc.job_of(s, run) if run is not None else None
    if run is None or job is None or v2.JOB + job.key != meta.taskId:
        raise NotFound("task", f"{meta.taskId}/{meta.iterationId}")
    return run


# ---- rendering ---------------------------------------------------------------------------------------


def render_version(s: Session, pm: PublishedModel) -> dict[str, Any]:
    run = pub.run_of(s, pm)
    job = run_svc.job_of(s, run)
    versions = [v.key for v in reversed(pub.get_set(s, pm.account_id, pm.set_key))]
    train = {"taskId": v2.TASK + run.key, "runId": v2.JOB + job.key}
    if pm.step is not None:
        train["step"] = str(pm.step)
    return {
        "modelIdStr": SET + pm.set_key,
        "modelName": pm.set_name,
        "modelVersionIdStr": VERSION + pm.key,
        "version": str(versions.index(pm.key) + 1),
        "baseModel": run.base_model,
        "sourceType": "Train",
        "sourceExtra": {"trainSourceExtra": train},
        "state": "Ready",  # publishing copies nothing: the version is servable at once
        "framework": "PEFT" if run.parameter_scale == "lora" else "PyTorch",
        "createTime": v1_time(pm.created_at),
    }


def render_set(versions: list[PublishedModel], run: Run) -> dict[str, Any]:
    first = versions[-1]
    return {
        "modelSetId": SET + first.set_key,
        "modelSetName": first.set_name,
        "modelType": "text2text",
        "sourceType": "Train",
        "baseModel": run.base_model,
        "modelIds": [VERSION + v.key for v in versions],  # newest first: the SDK takes [0] as the new one
        "createTime": v2_time(first.created_at),
        "modifyTime": v2_time(versions[0].created_at),
    }


# ---- V1: publish and version detail -----------------------------------------------------------------


def publish(s: Session, ctx: AppContext, account: int, body: dict[str, Any]) -> Any:
    b = PublishBody.model_validate(body)
    run = _task(s, account, b.versionMeta)
    set_key = None
    if not b.isNewModel:
        if not b.modelId:
            raise InvalidParameter("modelId", "required when isNewModel is false")
        set_key = model_set(s, account, b.modelId)[0].set_key
    pm = pub.publish(s, account, run, b.modelName, b.versionMeta.step, set_key)
    return {
        "modelIDStr": SET + pm.set_key,
        "modelName": pm.set_name,
        "versionIDStr": VERSION + pm.key,
    }


def version_detail(s: Session, ctx: AppContext, account: int, body: dict[str, Any]) -> Any:
    return render_version(s, version(s, account, VersionBody.model_validate(body).modelVersionId))


for _path, _handler in (("publishTrainModel", publish), ("modelVersionDetail", version_detail)):
    router.add_api_route(
        f"/wenxinworkshop/modelrepo/{_path}",
        v1_endpoint(_handler),
        methods=["POST"],
        name=f"qianfan_v1_{_path}",
    )


# ---- V2: model sets ----------------------------------------------------------------------------------


def describe_model_set(s: Session, ctx: AppContext, account: int, body: dict[str, Any]) -> Any:
    b = ModelSetBody.model_validate(body)
    if b.modelSetId:
        versions = model_set(s, account, b.modelSetId)
    elif b.modelSetName:
        first = s.scalar(pub.sets_query(account).where(PublishedModel.set_name == b.modelSetName))
        if first is None:
            raise NotFound("model set", b.modelSetName)
        versions = pub.get_set(s, account, first.set_key)
    else:
        raise InvalidParameter("modelSetId", "modelSetId or modelSetName is required")
    return render_set(versions, pub.run_of(s, versions[-1]))


def describe_custom_model_sets(s: Session, ctx: AppContext, account: int, body: dict[str, Any]) -> Any:
    b = v2.PageBody.model_validate(body)
    marker = (strip_prefix(b.marker, SET) or b.marker) if b.marker else ""
    page = marker_page(s, pub.sets_query(account), PublishedModel, marker, b.maxKeys, b.pageReverse)
    sets = []
    for first in page.items:
        versions = pub.get_set(s, account, first.set_key)
        sets.append(render_set(versions, pub.run_of(s, first)))
    return {"modelSetList": sets, "pageInfo": v2.page_info(page, SET)}


def describe_model(s: Session, ctx: AppContext, account: int, body: dict[str, Any]) -> Any:
    return render_version(s, version(s, account, ModelBody.model_validate(body).modelId))


ACTIONS: dict[str, v2.Handler] = {
    "DescribeModelSet": describe_model_set,
    "DescribeCustomModelSets": describe_custom_model_sets,
    "DescribeModel": describe_model,
}
PATH = "/v2/model"


@router.post(PATH)
async def v2_model(request: Request) -> JSONResponse:
    return await v2.dispatch(request, ACTIONS)
